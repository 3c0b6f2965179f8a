"""Every provider shape of the emulator through the real SDK, ChatClient and LLMPolicy:
the parsed outcome (valid answer, invalid with its reason, recorded error) or the error class."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness.llm.cache import ResponseCache
from harness.llm.client import (
    ChatClient,
    ChatRequest,
    LLMAuthError,
    LLMBadRequest,
    LLMError,
    LLMModelNotFound,
    LLMPaymentRequired,
    LLMRateLimited,
    LLMServerError,
    LLMUnavailable,
    LLMUnreachable,
)
from harness.llm.retry import RetryPolicy
from harness.policies.llm import LLMPolicy
from tests.llm.fixtures import KEY_ENV, SECRET, make_candidates, make_state
from tests.llm.provider_emulator import MAX_TOKENS_ERROR, ProviderEmulator
from tests.policies.conftest import FAST

STATE = make_state()
CANDS = make_candidates(STATE)
FIRST = CANDS[0].instrument_name


def _policy(url: str, cache: ResponseCache, **overrides: Any) -> LLMPolicy:
    settings: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "base_url": url,
        "api_key_env": KEY_ENV,
        "cache": cache,
        **FAST,
    }
    settings.update(overrides)
    return LLMPolicy(**settings)


# shape, policy overrides, expected record fields (substrings for reasons and errors).
OUTCOMES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("openai_strict", {}, {"action": "SELL_CALL", "calls": 1}),
    ("vllm_no_response_format", {}, {"action": "SELL_CALL", "calls": 3}),
    ("ollama", {}, {"action": "SELL_CALL", "calls": 1}),
    ("llama_cpp", {}, {"action": "SELL_CALL", "calls": 1}),
    ("reasoning_content", {}, {"action": "SELL_CALL", "calls": 1}),
    ("openrouter_reasoning", {"model": "openai/gpt-4o-mini"}, {"action": "SELL_CALL"}),
    ("think_in_content", {}, {"action": "DO_NOTHING", "calls": 1}),
    (
        "reasoning_exhausted",
        {"model": "o3-mini"},
        {"invalid": "token limit was used up by reasoning", "also": "max_completion_tokens=8000"},
    ),
    ("openrouter", {"model": "openai/gpt-4o-mini"}, {"action": "SELL_CALL", "calls": 1}),
    ("openrouter_error_in_200", {}, {"error": "Upstream error from Lambda", "calls": 3}),
    ("error_body_in_200", {}, {"error": "no provider available", "calls": 3}),
    ("retry_after_once", {}, {"action": "SELL_CALL", "calls": 2}),
    ("always_429", {}, {"error": "HTTP 429", "calls": 3}),
    ("o_series", {"model": "o3-mini"}, {"action": "SELL_CALL", "calls": 1}),
    (
        "o_series",
        {"model": "my-azure-deployment", "reasoning_model": True},
        {"action": "SELL_CALL"},
    ),
    (
        "o_series",
        {"model": "o3-mini", "reasoning_model": False},
        {"error": MAX_TOKENS_ERROR, "also": "reasoning_model: true", "calls": 1},
    ),
    ("context_length", {}, {"error": "maximum context length is 128000", "calls": 1}),
    ("refusal", {}, {"invalid": "the model refused: I'm sorry", "calls": 1}),
    ("truncated", {}, {"invalid": "answer truncated at the token limit", "also": "max_tokens=400"}),
    ("no_usage", {}, {"action": "SELL_CALL", "calls": 1}),
    ("html_200", {}, {"error": "not a chat completion", "calls": 3}),
    ("always_500", {}, {"error": "HTTP 500", "calls": 3}),
]


@pytest.mark.parametrize(
    "shape, overrides, expected", OUTCOMES, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(OUTCOMES)]
)
def test_shape_outcome(
    shape: str, overrides: dict, expected: dict, tmp_path: Path, api_key: str
) -> None:
    with ProviderEmulator(shape) as srv, ResponseCache(tmp_path / "c") as cache:
        policy = _policy(srv.url, cache, **overrides)
        started = time.perf_counter()
        choice = policy(STATE, CANDS)
        elapsed = time.perf_counter() - started
        rec = policy.record_for(STATE.time)
        assert rec is not None
        if "calls" in expected:
            assert rec.calls_made == expected["calls"] == srv.request_count
        if "action" in expected:
            assert rec.valid and rec.error is None and rec.action == expected["action"]
            assert choice is (CANDS[0] if expected["action"] == "SELL_CALL" else None)
        if "invalid" in expected:
            assert not rec.valid and rec.error is None and choice is None
            assert expected["invalid"] in rec.invalid_reason
            assert expected["also"] in rec.invalid_reason if "also" in expected else True
        if "error" in expected:
            assert rec.error is not None and expected["error"] in rec.error and choice is None
            assert expected["also"] in rec.error if "also" in expected else True
            # Failed requests are never cached: a later run asks again.
            assert len(cache) == 0
        else:
            # Every completed answer is cached (refused, truncated, empty too): no second call.
            asked = srv.request_count
            again = _policy(srv.url, cache, **overrides)
            again(STATE, CANDS)
            assert srv.request_count == asked and again.record_for(STATE.time).cache_hit
            again.close()
        if shape == "retry_after_once":
            assert elapsed >= 0.9  # Retry-After: 1 was honoured
        policy.close()


def test_what_each_shape_leaves_in_the_cache_entry(tmp_path: Path, api_key: str) -> None:
    def entry_for(shape: str, **overrides: Any):
        with ProviderEmulator(shape) as srv, ResponseCache(tmp_path / shape) as cache:
            with _policy(srv.url, cache, **overrides) as policy:
                policy(STATE, CANDS)
            (entry,) = cache.entries()
            return entry, srv

    entry, srv = entry_for("openai_strict")
    assert entry.finish_reason == "stop" and entry.refusal is None and entry.reasoning is None
    assert entry.usage.prompt_tokens == 812 and entry.usage_reported
    assert entry.sent_params["response_format"]["json_schema"]["strict"] is True
    assert "response_format" not in entry.request_params  # stored once, in the key payload
    assert entry.response["system_fingerprint"] == "fp_0ba0d124f1"

    entry, srv = entry_for("vllm_no_response_format")
    assert entry.schema_fallback and entry.response_format_used is None
    assert "response_format" not in entry.sent_params
    formats = [(r.get("response_format") or {}).get("type") for r in srv.requests]
    assert formats == ["json_schema", "json_object", None]

    entry, _ = entry_for("reasoning_content")
    assert "first draft" in entry.reasoning and entry.reasoning_tokens == 300
    assert json.loads(entry.text)["action"] == "SELL_CALL"

    entry, _ = entry_for("openrouter_reasoning")
    assert entry.reasoning == "Spread +10 vol points; sell."

    entry, _ = entry_for("think_in_content")
    assert entry.reasoning.startswith("Maybe") and "<think>" in entry.text

    entry, srv = entry_for("reasoning_exhausted", model="o3-mini", reasoning_effort="high")
    assert entry.content is None and entry.finish_reason == "length"
    assert entry.reasoning_tokens == 8000
    sent = srv.requests[0]
    assert sent["max_completion_tokens"] == 8000 and sent["reasoning_effort"] == "high"
    assert "max_tokens" not in sent and "temperature" not in sent

    entry, _ = entry_for("refusal")
    assert entry.content is None and entry.refusal.startswith("I'm sorry")

    entry, _ = entry_for("no_usage")
    assert not entry.usage_reported and entry.usage.total_tokens == 0 and entry.cost_usd == 0


@pytest.mark.parametrize(
    "shape, error",
    [
        ("openrouter_402", LLMPaymentRequired),
        ("auth_echo", LLMAuthError),
        ("model_not_found", LLMModelNotFound),
    ],
)
def test_unavailable_shapes_stop_the_policy(
    shape: str, error: type[LLMUnavailable], tmp_path: Path, api_key: str
) -> None:
    with ProviderEmulator(shape) as srv, ResponseCache(tmp_path / "c") as cache:
        policy = _policy(srv.url, cache)
        with pytest.raises(error) as err:
            policy(STATE, CANDS)
        assert srv.request_count == 1 and len(cache) == 0
        # The key the 401 echoed is masked; the server's reason is kept.
        assert SECRET not in str(err.value) and SECRET not in (err.value.reason or "")
        if shape == "auth_echo":
            assert f"Bearer {SECRET}" == srv.headers[0]["authorization"]
            assert "Incorrect API key provided: ***" in str(err.value)
        policy.close()


REQUEST = ChatRequest(
    model="gpt-4o-mini", messages=(("user", "decide"),), max_tokens=50, response_format=None
)


@pytest.mark.parametrize(
    "shape, error, status",
    [
        ("always_500", LLMServerError, 500),
        ("openrouter_error_in_200", LLMServerError, None),
        ("html_200", LLMServerError, None),
        ("always_429", LLMRateLimited, 429),
        ("context_length", LLMBadRequest, 400),
        ("openrouter_402", LLMPaymentRequired, 402),
        ("auth_echo", LLMAuthError, 401),
        ("model_not_found", LLMModelNotFound, 404),
    ],
)
def test_client_error_classes(
    shape: str, error: type[LLMError], status: int | None, api_key: str
) -> None:
    with ProviderEmulator(shape) as srv:
        client = ChatClient(
            base_url=srv.url,
            api_key_env=KEY_ENV,
            retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.01),
        )
        with pytest.raises(error) as err:
            client.complete(REQUEST)
        assert type(err.value) is error and err.value.status_code == status
        assert err.value.kind == error.kind and err.value.reason
        assert SECRET not in str(err.value) and err.value.__cause__ is None
        client.close()


def test_closed_port_is_unreachable(api_key: str, tmp_path: Path) -> None:
    srv = ProviderEmulator().start()
    srv.stop()
    client = ChatClient(
        base_url=srv.url,
        api_key_env=KEY_ENV,
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.01),
    )
    with pytest.raises(LLMUnreachable, match="cannot reach") as err:
        client.complete(REQUEST)
    assert err.value.attempts == 2 and err.value.kind == "unreachable"
    with ResponseCache(tmp_path / "c") as cache:
        policy = _policy(srv.url, cache)
        assert policy(STATE, CANDS) is None
        rec = policy.record_for(STATE.time)
        assert rec.error and "cannot reach" in rec.error and rec.calls_made == 3
        policy.close()


def test_samples_use_n_where_honoured_and_separate_requests_where_not(
    tmp_path: Path, api_key: str
) -> None:
    with ProviderEmulator("openai_strict") as srv, ResponseCache(tmp_path / "a") as cache:
        with _policy(srv.url, cache, samples=3, temperature=0.7, seed=5) as policy:
            assert policy(STATE, CANDS) is CANDS[0]
            rec = policy.record_for(STATE.time)
        # One prompt, billed once, three votes.
        assert srv.request_count == 1 and srv.requests[0]["n"] == 3
        assert rec.votes == {FIRST: 3} and rec.calls_made == 1 and len(rec.raw_answers) == 3
        assert rec.prompt_tokens == 812
    with ProviderEmulator("ollama") as srv, ResponseCache(tmp_path / "b") as cache:
        with _policy(srv.url, cache, samples=3, temperature=0.7, seed=5) as policy:
            assert policy(STATE, CANDS) is CANDS[0]
            rec = policy.record_for(STATE.time)
        # Ollama ignores n: one choice back, the two missing votes asked one by one.
        assert srv.request_count == 3 and rec.votes == {FIRST: 3} and rec.calls_made == 3
        assert [r.get("n") for r in srv.requests] == [3, None, None]
        assert [r.get("seed") for r in srv.requests] == [5, 6, 7]
        # A replay reads all three from the cache.
        with _policy(srv.url, cache, samples=3, temperature=0.7, seed=5) as again:
            again(STATE, CANDS)
            assert srv.request_count == 3 and again.record_for(STATE.time).cache_hit


def test_extra_headers_body_and_query_reach_the_server_and_headers_stay_masked(
    tmp_path: Path, api_key: str
) -> None:
    header_secret = "tok-HEADER-SECRET-424242"
    with ProviderEmulator("openai_strict") as srv, ResponseCache(tmp_path / "c") as cache:
        policy = _policy(
            srv.url,
            cache,
            extra_headers={"X-Title": "harness", "X-Proxy-Token": header_secret},
            extra_body={"provider": {"order": ["Together"], "allow_fallbacks": False}},
            extra_query={"api-version": "2024-10-21"},
        )
        policy(STATE, CANDS)
        assert srv.headers[0]["x-proxy-token"] == header_secret
        assert srv.requests[0]["provider"] == {"order": ["Together"], "allow_fallbacks": False}
        assert srv.query[0] == "api-version=2024-10-21"
        assert header_secret not in repr(policy.config) and header_secret not in repr(policy)
        dumped = json.dumps(policy.config.model_dump(mode="json"))
        assert header_secret not in dumped and '"X-Proxy-Token": "***"' in dumped
        (entry,) = cache.entries()
        # Header names (not values) are part of the key; the body and query too.
        assert entry.key_payload["extra_header_names"] == ["X-Proxy-Token", "X-Title"]
        assert entry.key_payload["extra_body"]["provider"]["order"] == ["Together"]
        assert entry.key_payload["extra_query"] == {"api-version": "2024-10-21"}
        policy.close()
    for path in (tmp_path / "c").rglob("*"):
        if path.is_file():
            assert header_secret.encode() not in path.read_bytes()
