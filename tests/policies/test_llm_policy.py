"""LLMPolicy end to end: the real openai SDK against a scripted local chat server."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.llm.cache import CacheMissError, ResponseCache
from harness.llm.client import LLMCallError, LLMUnavailable
from harness.policies.llm import LLMDecisionRecord, LLMPolicy, LLMPolicyConfig
from harness.types import CallCandidate
from tests.llm.fixtures import KEY_ENV, SECRET, START, decisions, make_candidates, make_state
from tests.llm.scripted_server import (
    ScriptedServer,
    answer,
    do_nothing,
    first_enum_or_nothing,
    garbage,
    sell,
    status,
)
from tests.policies.conftest import FAST


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "llm-cache"


@pytest.fixture
def make_policy(server: ScriptedServer, cache_dir: Path, api_key: str):
    made: list[tuple[LLMPolicy, ResponseCache]] = []

    def factory(srv: ScriptedServer | None = None, **overrides: Any) -> LLMPolicy:
        cache = overrides.pop("cache", None) or ResponseCache(cache_dir)
        settings: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "base_url": (srv or server).url,
            "api_key_env": KEY_ENV,
            "cache": cache,
            **FAST,
        }
        settings.update(overrides)
        policy = LLMPolicy(**settings)
        made.append((policy, cache))
        return policy

    yield factory
    for policy, cache in made:
        policy.close()
        cache.close()


STATE = make_state()
CANDS = make_candidates(STATE)


def _record(policy: LLMPolicy, t: Any = START) -> LLMDecisionRecord:
    record = policy.record_for(t)
    assert record is not None
    return record


# -- answers ---------------------------------------------------------------------------------


def test_valid_sell_returns_the_candidate_and_records_everything(
    server: ScriptedServer, make_policy
) -> None:
    server.enqueue(
        answer(
            {"action": "SELL_CALL", "instrument_name": CANDS[1].instrument_name, "rationale": "r"},
            usage=(1000, 100, 200),
        )
    )
    policy = make_policy()
    choice = policy(STATE, CANDS)
    assert isinstance(choice, CallCandidate) and choice is CANDS[1]
    rec = _record(policy)
    assert rec.decision_time == START and rec.policy == "llm:gpt-4o-mini:covered_call_v1"
    assert rec.model == "gpt-4o-mini" and rec.prompt_id == policy.prompt_id
    assert rec.action == "SELL_CALL" and rec.instrument_name == CANDS[1].instrument_name
    assert rec.valid and rec.invalid_reason is None and rec.error is None
    assert (
        rec.rationale == "r"
        and rec.raw_answers
        and json.loads(rec.raw_answers[0])["rationale"] == "r"
    )
    assert not rec.cache_hit and rec.calls_made == 1
    assert (rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens) == (1000, 100, 200)
    # gpt-4o-mini: 800 x 0.15 + 200 x 0.075 + 100 x 0.60 per million
    assert rec.cost_usd == pytest.approx((800 * 0.15 + 200 * 0.075 + 100 * 0.60) / 1e6)
    assert rec.cost_usd_saved == 0 and rec.latency_s > 0
    assert rec.as_dict()["decision_time"] == START.isoformat()
    sent = server.requests[0]
    enum = sent["response_format"]["json_schema"]["schema"]["properties"]["instrument_name"]
    assert enum["anyOf"][0]["enum"] == [c.instrument_name for c in CANDS]
    assert policy.records == [rec]


def test_do_nothing_returns_none(server: ScriptedServer, make_policy) -> None:
    server.enqueue(do_nothing())
    policy = make_policy()
    assert policy(STATE, CANDS) is None
    rec = _record(policy)
    assert rec.valid and rec.action == "DO_NOTHING" and rec.instrument_name is None


def test_no_candidates_asks_nothing(server: ScriptedServer, make_policy) -> None:
    policy = make_policy()
    assert policy(STATE, []) is None
    assert server.request_count == 0 and _record(policy).note == "no candidates"


@pytest.mark.parametrize(
    "behaviour, reason",
    [
        (garbage("I'd sell the first one."), "no JSON object"),
        (sell("BTC-08MAR24-99000-C"), "not one of the candidates"),
        (answer({"action": "HODL"}), "breaks the schema"),
        (answer(""), "empty answer"),
    ],
)
def test_invalid_answers_are_recorded_and_do_nothing(
    server: ScriptedServer, make_policy, behaviour, reason: str
) -> None:
    server.enqueue(behaviour)
    policy = make_policy()
    assert policy(STATE, CANDS) is None
    rec = _record(policy)
    assert not rec.valid and reason in rec.invalid_reason and rec.error is None
    assert rec.action is None and rec.calls_made == 1
    assert rec.raw_answers == (server.replies[-1].content,)
    assert policy.summary().invalid == 1


def test_invalid_answers_are_cached_too(server: ScriptedServer, make_policy) -> None:
    server.enqueue(garbage())
    make_policy()(STATE, CANDS)
    again = make_policy()
    assert again(STATE, CANDS) is None
    assert server.request_count == 1 and _record(again).cache_hit and not _record(again).valid


def test_on_invalid_retry_shows_the_error_to_the_model(server: ScriptedServer, make_policy) -> None:
    server.enqueue(sell("BTC-01JAN30-1-C"), sell(CANDS[2].instrument_name))
    policy = make_policy(on_invalid="retry")
    assert policy(STATE, CANDS) is CANDS[2]
    rec = _record(policy)
    assert rec.valid and rec.calls_made == 2 and len(rec.raw_answers) == 2
    retry_messages = server.requests[1]["messages"]
    assert [m["role"] for m in retry_messages] == ["system", "user", "assistant", "user"]
    assert "not one of the candidates" in retry_messages[-1]["content"]


def test_on_invalid_retry_gives_up_after_one_retry(server: ScriptedServer, make_policy) -> None:
    server.enqueue(garbage(), garbage("still no"))
    policy = make_policy(on_invalid="retry")
    assert policy(STATE, CANDS) is None
    assert server.request_count == 2 and not _record(policy).valid


def test_on_invalid_rule_fallback(server: ScriptedServer, make_policy) -> None:
    server.enqueue(garbage())

    def rule(state, candidates):
        return candidates[-1]

    policy = make_policy(on_invalid="always_sell", fallback=rule)
    assert policy(STATE, CANDS) is CANDS[-1]
    rec = _record(policy)
    assert not rec.valid and rec.fallback_used and rec.instrument_name == CANDS[-1].instrument_name
    with pytest.raises(ValueError, match="fallback"):
        LLMPolicy(model="m", on_invalid="always_sell", cache_mode="off")


def test_samples_majority_vote(server: ScriptedServer, make_policy) -> None:
    a, b = CANDS[0].instrument_name, CANDS[1].instrument_name
    server.enqueue(sell(a), sell(b), sell(b))
    policy = make_policy(samples=3, seed=11)
    assert policy(STATE, CANDS) is CANDS[1]
    rec = _record(policy)
    assert rec.votes == {a: 1, b: 2} and rec.calls_made == 3
    assert sorted(r["seed"] for r in server.requests) == [11, 12, 13]


def test_samples_tie_goes_to_do_nothing(server: ScriptedServer, make_policy) -> None:
    server.enqueue(sell(CANDS[0].instrument_name), do_nothing())
    assert make_policy(samples=2)(STATE, CANDS) is None


# -- transport -------------------------------------------------------------------------------


def test_429_with_retry_after_then_success(server: ScriptedServer, make_policy) -> None:
    server.enqueue(status(429, {"Retry-After": "1"}), sell(CANDS[0].instrument_name))
    policy = make_policy()
    started = time.perf_counter()
    assert policy(STATE, CANDS) is CANDS[0]
    assert time.perf_counter() - started >= 0.9
    assert _record(policy).calls_made == 2 and policy.summary().calls_made == 2


def test_500_then_success(server: ScriptedServer, make_policy) -> None:
    server.enqueue(status(500), sell(CANDS[0].instrument_name))
    policy = make_policy()
    assert policy(STATE, CANDS) is CANDS[0]
    assert _record(policy).calls_made == 2 and _record(policy).error is None


def test_timeouts_exhausted_are_recorded_as_errors(server: ScriptedServer, make_policy) -> None:
    server.enqueue(*[do_nothing(delay_s=0.5)] * 2)
    policy = make_policy(timeout_s=0.15, max_attempts=2)
    assert policy(STATE, CANDS) is None
    rec = _record(policy)
    assert rec.error and "timeout" in rec.error and not rec.valid and rec.calls_made == 2
    assert not rec.fallback_used and policy.summary().errors == 1
    # Errors are not cached: the next run asks again.
    server.enqueue(sell(CANDS[0].instrument_name))
    assert make_policy()(STATE, CANDS) is CANDS[0]


def test_on_error_abort_stops_the_run(server: ScriptedServer, make_policy) -> None:
    server.enqueue(*[status(503)] * 3)
    with pytest.raises(LLMCallError, match="2024-03-01T08:00"):
        make_policy(on_error="abort")(STATE, CANDS)


def test_server_without_json_schema_support(make_policy, api_key: str) -> None:
    with ScriptedServer(supports_json_schema=False) as srv:
        srv.enqueue(
            answer(
                "Sure! ```json\n"
                + json.dumps(
                    {
                        "action": "SELL_CALL",
                        "instrument_name": CANDS[0].instrument_name,
                        "rationale": "x",
                    }
                )
                + "\n```"
            )
        )
        policy = make_policy(srv)
        assert policy(STATE, CANDS) is CANDS[0]
        # Stepped down one level for this request: json_schema -> json_object.
        assert srv.request_count == 2
        assert srv.requests[1]["response_format"] == {"type": "json_object"}
        assert _record(policy).calls_made == 2


def test_structured_output_can_be_switched_off(server: ScriptedServer, make_policy) -> None:
    make_policy(structured_output=False)(STATE, CANDS)
    assert "response_format" not in server.requests[0]


def test_missing_api_key_is_unavailable_on_first_use(
    server: ScriptedServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ResponseCache(cache_dir) as cache:
        policy = LLMPolicy(
            model="gpt-4o-mini", base_url=server.url, api_key_env=KEY_ENV, cache=cache
        )
        with pytest.raises(LLMUnavailable, match=KEY_ENV):
            policy.ensure_available()
        with pytest.raises(LLMUnavailable, match=KEY_ENV):
            policy(STATE, CANDS)
        with pytest.raises(LLMUnavailable):
            policy.prefetch(decisions(5), progress=False)
        assert server.request_count == 0
        # A local server that needs no key: api_key_env null.
        local = LLMPolicy(model="llama3", base_url=server.url, api_key_env=None, cache=cache)
        local(STATE, CANDS)
        assert server.request_count == 1
    with pytest.raises(ValueError):
        LLMPolicyConfig(model="m", api_key_env="  ")


# -- cache and concurrency --------------------------------------------------------------------


def test_second_run_makes_zero_http_requests(server: ScriptedServer, make_policy) -> None:
    server.default = first_enum_or_nothing
    items = decisions(30)
    first = make_policy()
    for state, cands in items:
        first(state, cands)
    paid = first.summary()
    assert paid.calls_made == 30 and paid.cost_usd_incurred > 0 and paid.cost_usd_saved == 0
    server.reset_counts()

    second = make_policy()
    choices = [second(state, cands) for state, cands in items]
    assert server.request_count == 0
    assert [c.instrument_name for c in choices] == [r.instrument_name for r in first.records]
    summary = second.summary()
    assert summary.calls_made == 0 and summary.served_from_cache == 30
    assert summary.decisions_from_cache == 30 and summary.cost_usd_incurred == 0
    assert summary.cost_usd_saved == pytest.approx(paid.cost_usd_incurred)
    rec = _record(second)
    assert rec.cache_hit and rec.cost_usd == 0 and rec.cost_usd_saved > 0 and rec.prompt_tokens > 0


def test_cache_key_does_not_depend_on_the_key_or_cash(
    server: ScriptedServer, make_policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_policy()(STATE, CANDS)
    monkeypatch.setenv(KEY_ENV, "sk-another-key-entirely-000000")
    rich = make_state(cash_usd=99_999.0, coins_held=0.5)
    make_policy(timeout_s=1.0, max_concurrency=2)(rich, make_candidates(rich))
    assert server.request_count == 1


def test_read_only_with_the_server_stopped(make_policy, api_key: str) -> None:
    items = decisions(6)
    with ScriptedServer(default=first_enum_or_nothing) as srv:
        warm = make_policy(srv)
        warm.prefetch(items[:5], progress=False)
        expected = [warm(s, c) for s, c in items[:5]]
    # The server is gone; a read_only replay needs neither it nor an API key.
    offline = make_policy(srv, cache_mode="read_only", api_key_env="HARNESS_NO_SUCH_KEY")
    offline.ensure_available()
    assert [offline(s, c) for s, c in items[:5]] == expected
    assert offline.summary().calls_made == 0
    missing_state, missing_cands = items[5]
    when = pd.Timestamp(missing_state.time).isoformat()
    with pytest.raises(CacheMissError, match=re.escape(when)):
        offline(missing_state, missing_cands)


def test_prefetch_500_decisions_respects_max_concurrency_then_replays_from_memory(
    make_policy, api_key: str
) -> None:
    items = decisions(520)
    with ScriptedServer(default=first_enum_or_nothing, latency_s=0.01) as srv:
        policy = make_policy(srv, max_concurrency=20)
        summary = policy.prefetch(items, progress=False)
        assert srv.request_count == 520 and summary.calls_made == 520
        assert summary.decisions == 520 and summary.served_from_cache == 0
        assert 2 <= srv.max_in_flight <= 20
        # The sequential replay reads what prefetch asked: no new requests, no double counting.
        for state, cands in items:
            assert policy(state, cands) is cands[0]
        assert srv.request_count == 520 and policy.summary() == summary
        assert len(policy.records) == 520
        # Duplicated items collapse into one question.
        again = make_policy(srv, cache_mode="refresh", max_concurrency=8)
        again.prefetch([items[0]] * 10, progress=True)
        assert srv.request_count == 521


def test_anonymized_policy_maps_aliases_back(server: ScriptedServer, make_policy) -> None:
    server.enqueue(sell("C2"))
    policy = make_policy(anonymize=True)
    later = make_state(START + pd.Timedelta(days=3), spot=61_000.0)
    policy.set_anchor(START, 60_000.0)
    cands = make_candidates(later)
    assert policy(later, cands) is cands[1]
    text = json.dumps(server.requests[0]["messages"])
    assert "day 3, 08:00 UTC" in text and "2024" not in text
    assert all(c.instrument_name not in text for c in cands)
    assert server.requests[0]["response_format"]["json_schema"]["schema"]["properties"][
        "instrument_name"
    ]["anyOf"][0]["enum"] == ["C1", "C2", "C3"]
    assert _record(policy, later.time).instrument_name == cands[1].instrument_name
    assert policy.name.endswith(":anon")


# -- secrets ---------------------------------------------------------------------------------


def test_no_api_key_in_any_written_file(
    server: ScriptedServer, make_policy, cache_dir: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "run.log"
    handler = logging.FileHandler(log_path)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        server.default = first_enum_or_nothing
        server.enqueue(status(429, {"Retry-After": "0"}), status(401, message=f"bad key {SECRET}"))
        policy = make_policy()
        with pytest.raises(LLMUnavailable) as err:
            policy(STATE, CANDS)
        assert SECRET not in str(err.value)
        policy.prefetch(decisions(20), progress=False)
        for state, cands in decisions(20):
            policy(state, cands)
        logging.getLogger("harness.llm").warning("records: %s", policy.records)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    # The server really received the key, so the scan below is meaningful.
    assert f"Bearer {SECRET}" in server.authorizations
    written = [p for p in cache_dir.rglob("*") if p.is_file()] + [log_path]
    assert len(written) >= 2 and log_path.stat().st_size > 0
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), f"API key found in {path}"
    assert SECRET not in repr(policy.records) and SECRET not in repr(policy.summary())
    assert SECRET not in repr(policy.client) and SECRET not in repr(policy)


def test_prefetch_stops_cleanly_when_the_model_becomes_unavailable(
    server: ScriptedServer, make_policy
) -> None:
    server.default = lambda request: do_nothing(delay_s=0.05)
    server.enqueue(status(401, message="invalid api key"))
    policy = make_policy(max_concurrency=4)
    with pytest.raises(LLMUnavailable, match="401"):
        policy.prefetch(decisions(40), progress=False)
    # The other decisions were cancelled, not recorded as spurious transport errors.
    assert all(r.error is None for r in policy.records) and len(policy.records) < 40


def test_rate_limits_are_wired(make_policy) -> None:
    policy = make_policy(requests_per_minute=600, tokens_per_minute=100_000)
    limiter = policy.client.rate_limiter
    assert limiter.enabled
    assert limiter._requests.rate == pytest.approx(10.0)
    assert limiter._tokens.rate == pytest.approx(100_000 / 60)
    assert not make_policy().client.rate_limiter.enabled
