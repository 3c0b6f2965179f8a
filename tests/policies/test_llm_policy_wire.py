"""LLMPolicy wire settings: config checks, reasoning models, voting share, retry keys, warnings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from harness.experiments.config import ConfigError, parse_config
from harness.llm.cache import ResponseCache
from harness.llm.model_family import infer_reasoning_model
from harness.policies.llm import REASONING_MAX_TOKENS, LLMPolicy, LLMPolicyConfig
from tests.llm.fixtures import KEY_ENV, START, make_candidates, make_state
from tests.llm.scripted_server import ScriptedServer, answer, do_nothing, garbage, sell, status
from tests.policies.conftest import FAST

STATE = make_state()
CANDS = make_candidates(STATE)
PASTED = "sk-proj-PASTEDKEY-0123456789abcdefABCDEF"


@pytest.fixture
def make_policy(server: ScriptedServer, tmp_path: Path, api_key: str):
    made: list[tuple[LLMPolicy, ResponseCache]] = []

    def factory(**overrides: Any) -> LLMPolicy:
        cache = ResponseCache(tmp_path / "cache")
        settings = {
            "model": "gpt-4o-mini",
            "base_url": server.url,
            "api_key_env": KEY_ENV,
            "cache": cache,
            **FAST,
            **overrides,
        }
        policy = LLMPolicy(**settings)
        made.append((policy, cache))
        return policy

    yield factory
    for policy, cache in made:
        policy.close()
        cache.close()


@pytest.mark.parametrize("value", [PASTED, "openai_api_key", "MY-KEY", "1KEY", "  "])
def test_api_key_env_must_be_a_variable_name_and_a_pasted_key_is_not_echoed(value: str) -> None:
    with pytest.raises(ValidationError) as err:
        LLMPolicyConfig(model="m", api_key_env=value)
    assert "NAME of the environment variable" in str(err.value)
    assert PASTED not in str(err.value) and PASTED not in repr(err.value.errors())
    entry = {"type": "llm", "name": "llm_v1", "model": "gpt-4o-mini", "api_key_env": value}
    with pytest.raises(ConfigError) as cfg_err:
        parse_config({"policies": [entry]})
    assert "api_key_env" in str(cfg_err.value) and PASTED not in str(cfg_err.value)
    for ok in ("OPENAI_API_KEY", "_X", "OPENROUTER_API_KEY_2", None):
        assert LLMPolicyConfig(model="m", api_key_env=ok).api_key_env == ok


def test_extra_body_may_not_override_what_the_harness_sets() -> None:
    with pytest.raises(ValidationError, match=r"'temperature' \(use `temperature`\)"):
        LLMPolicyConfig(model="m", extra_body={"temperature": 1.0})
    with pytest.raises(ValidationError, match=r"'max_completion_tokens' \(use `max_tokens`\)"):
        LLMPolicyConfig(model="m", extra_body={"max_completion_tokens": 9})
    assert LLMPolicyConfig(model="m", extra_body={"provider": {"sort": "price"}}).extra_body


@pytest.mark.parametrize(
    "model, reasoning",
    [
        ("o1", True),
        ("o1-mini", True),
        ("o3-mini", True),
        ("openai/o3-mini", True),
        ("o4-mini", True),
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("gpt-5.1", True),
        ("openai/gpt-5-nano", True),
        ("gpt-4o-mini", False),
        ("gpt-4.1", False),
        ("gpt-5-chat-latest", False),
        ("deepseek-r1", False),
        ("llama3.1:8b", False),
        ("omni-moderation-latest", False),
    ],
)
def test_reasoning_family_is_inferred_from_the_name(model: str, reasoning: bool) -> None:
    assert infer_reasoning_model(model) is reasoning
    config = LLMPolicyConfig(model=model)
    assert config.is_reasoning_model is reasoning
    assert config.token_param == ("max_completion_tokens" if reasoning else "max_tokens")
    assert config.token_budget == (REASONING_MAX_TOKENS if reasoning else 400)
    # Explicit settings win over the inference.
    assert LLMPolicyConfig(model=model, reasoning_model=not reasoning).is_reasoning_model is (
        not reasoning
    )
    assert LLMPolicyConfig(model=model, max_tokens=1234).token_budget == 1234


def test_reasoning_model_request_parameters(
    server: ScriptedServer, make_policy, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="harness.llm"):
        policy = make_policy(
            model="o4-mini", reasoning_effort="low", temperature=0.3, max_tokens=3000, seed=1
        )
    assert "reasoning model" in caplog.text and "temperature not sent" in caplog.text
    policy(STATE, CANDS)
    sent = server.requests[0]
    assert sent["max_completion_tokens"] == 3000 and sent["reasoning_effort"] == "low"
    assert "max_tokens" not in sent and "temperature" not in sent and sent["seed"] == 1
    # A chat model keeps max_tokens and temperature.
    make_policy(model="gpt-4o-mini", temperature=0.3)(STATE, CANDS)
    assert server.requests[1]["max_tokens"] == 400 and server.requests[1]["temperature"] == 0.3


def test_min_vote_share_turns_a_weak_sell_into_do_nothing(
    server: ScriptedServer, make_policy
) -> None:
    a = CANDS[0].instrument_name
    server.enqueue(sell(a), sell(a), do_nothing(), garbage())  # 2 of 3 valid votes for a
    policy = make_policy(samples=4, temperature=0.8, seed=1, sample_with_n=False)
    assert policy(STATE, CANDS) is CANDS[0]
    server.enqueue(sell(a), sell(a), do_nothing(), garbage())
    strict = make_policy(
        samples=4, temperature=0.8, seed=2, sample_with_n=False, min_vote_share=0.75
    )
    assert strict(STATE, CANDS) is None
    rec = strict.record_for(STATE.time)
    assert rec.valid and rec.action == "DO_NOTHING" and rec.votes == {a: 2, "DO_NOTHING": 1}
    assert "67%" in rec.note and "min_vote_share 75%" in rec.note


def test_greedy_samples_without_a_seed_warn(make_policy, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="harness.llm"):
        make_policy(samples=3)
    assert "samples=3 at temperature 0 without a seed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness.llm"):
        make_policy(samples=3, temperature=0.7)
        make_policy(samples=3, seed=4)
        make_policy(samples=1)
    assert "without a seed" not in caplog.text


def test_retry_attempt_is_part_of_the_key(server: ScriptedServer, make_policy) -> None:
    server.enqueue(garbage("no idea"), sell(CANDS[1].instrument_name))
    policy = make_policy(on_invalid="retry")
    assert policy(STATE, CANDS) is CANDS[1]
    entries = sorted(policy.cache.entries(), key=lambda e: e.key_payload.get("attempt", 0))
    assert [e.key_payload.get("attempt", 0) for e in entries] == [0, 1]
    assert "attempt" not in entries[0].key_payload  # attempt 0 keys are unchanged
    # A replay makes no request; a different retry answer would be a different entry.
    again = make_policy(on_invalid="retry")
    assert again(STATE, CANDS) is CANDS[1] and server.request_count == 2


def test_structured_output_levels(server: ScriptedServer, make_policy) -> None:
    make_policy(structured_output="json_object")(STATE, CANDS)
    assert server.requests[-1]["response_format"] == {"type": "json_object"}
    make_policy(structured_output=False, seed=3)(STATE, CANDS)
    assert "response_format" not in server.requests[-1]


def test_a_400_not_about_structured_output_is_not_a_fallback(
    server: ScriptedServer, make_policy
) -> None:
    server.enqueue(status(400, message="stream required for this model"))
    policy = make_policy()
    assert policy(STATE, CANDS) is None
    rec = policy.record_for(STATE.time)
    assert rec.error and "stream required" in rec.error and server.request_count == 1
    # The next decision still asks for the schema (nothing was switched off).
    later = make_state(START + pd.Timedelta(hours=4))
    server.enqueue(answer({"action": "DO_NOTHING", "instrument_name": None}))
    policy(later, make_candidates(later))
    assert server.requests[-1]["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize("shape, per_decision", [("openai_strict", 1), ("ollama", 3)])
def test_prefetch_with_n_and_its_fallback(
    shape: str, per_decision: int, tmp_path: Path, api_key: str
) -> None:
    from tests.llm.fixtures import decisions
    from tests.llm.provider_emulator import ProviderEmulator

    items = decisions(5)
    with ProviderEmulator(shape) as srv, ResponseCache(tmp_path / shape) as cache:
        settings = {"base_url": srv.url, "api_key_env": KEY_ENV, "cache": cache, **FAST}
        with LLMPolicy(model="m", samples=3, temperature=0.5, seed=1, **settings) as policy:
            summary = policy.prefetch(items, progress=False)
            assert srv.request_count == 5 * per_decision == summary.calls_made
            for state, cands in items:
                assert policy(state, cands) is cands[0]
            assert all(r.votes == {r.instrument_name: 3} for r in policy.records)
            assert srv.request_count == 5 * per_decision


def test_a_server_rejecting_n_gets_separate_requests(server: ScriptedServer, make_policy) -> None:
    a = CANDS[0].instrument_name
    server.enqueue(
        status(400, message="Invalid value for 'n': this model only supports n=1."),
        sell(a),
        sell(a),
        do_nothing(),
    )
    policy = make_policy(samples=3, temperature=0.5, seed=9)
    assert policy(STATE, CANDS) is CANDS[0]
    rec = policy.record_for(STATE.time)
    assert rec.error is None and rec.votes == {a: 2, "DO_NOTHING": 1} and rec.calls_made == 4
    assert [r.get("n") for r in server.requests] == [3, None, None, None]
    # A 400 about something else is the decision's error, not a reason to ask three times.
    server.enqueue(status(400, message="This model's maximum context length is 8192 tokens."))
    other = make_policy(samples=3, temperature=0.5, seed=10)
    assert other(STATE, CANDS) is None
    assert "maximum context length" in other.record_for(STATE.time).error
    assert server.request_count == 5


def test_dump_config_masks_header_values_and_the_policy_still_sends_them() -> None:
    from harness.experiments.config import dump_config

    secret = "tok-IN-A-HEADER-987654321"
    entry = {
        "type": "llm",
        "name": "llm_v1",
        "model": "gpt-4o-mini",
        "extra_headers": {"X-Proxy-Token": secret},
    }
    data = {
        "name": "masking",
        "simulation": {"underlying": "BTC", "start": "2024-01-01", "end": "2024-01-10"},
        "baseline": "always_sell",
        "policies": [{"name": "always_sell", "type": "rule", "rule": "always_sell"}, entry],
    }
    config = parse_config(data)
    text = dump_config(config)
    assert secret not in text and "X-Proxy-Token: '***'" in text
    (policy_entry,) = [p for p in config.policies if p.name == "llm_v1"]
    assert policy_entry.extra_headers == {"X-Proxy-Token": secret}
