"""LLMPolicy run health: the first uncached request goes alone and its answer is used; a
failing first request raises before anything else is sent; spend caps and early stops."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from harness.llm.budget import SpendCap
from harness.llm.cache import ResponseCache
from harness.llm.client import LLMPaymentRequired, LLMUnavailable
from harness.llm.tokens import count_message_tokens
from harness.policies.llm import LLMPolicy
from tests.llm.fixtures import KEY_ENV, decisions
from tests.llm.scripted_server import ScriptedServer, do_nothing, status
from tests.policies.conftest import FAST


def _policy(server: ScriptedServer, **kw: Any) -> LLMPolicy:
    settings: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "base_url": server.url,
        "api_key_env": KEY_ENV,
        **FAST,
        **kw,
    }
    return LLMPolicy(**settings)


def test_first_request_goes_alone_and_its_answer_is_used(api_key: str) -> None:
    in_flight_at_arrival: list[int] = []
    lock = threading.Lock()
    srv: ScriptedServer

    def respond(request: dict) -> Any:
        with lock:
            in_flight_at_arrival.append(srv.in_flight)
            first = len(in_flight_at_arrival) == 1
        return do_nothing(delay_s=0.2 if first else 0.05)

    with ScriptedServer(default=respond) as srv:
        items = decisions(12)
        with _policy(srv, cache_mode="off", max_concurrency=8) as policy:
            summary = policy.prefetch(items, progress=False)
        # the probe was alone; afterwards requests overlap (concurrency 8)
        assert in_flight_at_arrival[0] == 1 and in_flight_at_arrival[1] == 1
        assert max(in_flight_at_arrival) > 1
        # with no cache at all the probe's answer is still used: one request per decision
        assert srv.request_count == 12 and summary.calls_made == 12 and summary.decisions == 12


def test_a_failing_first_request_raises_before_anything_else_is_sent(api_key: str) -> None:
    with ScriptedServer(default=lambda r: status(402, message="Insufficient credits")) as srv:
        with (
            _policy(srv, cache_mode="off") as policy,
            # The wire raises LLMPaymentRequired (an LLMUnavailable) with the server's words.
            pytest.raises(LLMPaymentRequired, match=r"HTTP 402 .*Insufficient credits"),
        ):
            policy.prefetch(decisions(30), progress=False)
        assert srv.request_count == 1


def test_a_first_request_that_stays_unanswered_skips_with_its_kind(api_key: str) -> None:
    # 500 on every attempt of the first request: an LLMServerError, skipped as `server`.
    with ScriptedServer(default=lambda r: status(500, message="upstream overloaded")) as srv:
        with (
            _policy(srv, cache_mode="off", max_attempts=2, initial_backoff_s=0) as policy,
            pytest.raises(LLMUnavailable, match="first request failed \\(server\\)"),
        ):
            policy.prefetch(decisions(30), progress=False)
        assert srv.request_count == 2


def test_a_400_that_changes_text_on_retry_is_not_a_skip(api_key: str) -> None:
    with ScriptedServer() as srv:
        srv.enqueue(status(400, message="one"), status(400, message="two"))
        with _policy(srv, cache_mode="off", structured_output=False) as policy:
            summary = policy.prefetch(decisions(5), progress=False)
        # probe + its re-send, then the 4 other decisions
        assert srv.request_count == 6 and summary.errors == 1 and summary.asked == 5


def test_everything_cached_sends_nothing(api_key: str, tmp_path) -> None:
    with ScriptedServer() as srv, ResponseCache(tmp_path / "c") as cache:
        with _policy(srv, cache=cache) as policy:
            policy.prefetch(decisions(6), progress=False)
        srv.stop()  # a probe now would fail to connect
        with _policy(srv, cache=cache) as again:
            summary = again.prefetch(decisions(6), progress=False)
        assert summary.calls_made == 0 and summary.served_from_cache == 6


def test_spend_cap_stops_sending_and_keeps_what_was_answered(api_key: str) -> None:
    with ScriptedServer(default=lambda r: do_nothing()) as srv:
        # gpt-4o-mini: each request holds ~prompt x $0.15/M + 400 x $0.60/M, costs 120/30 tokens
        cap = SpendCap(0.001, "test cap")
        with _policy(srv, cache_mode="off", max_concurrency=2) as policy:
            policy.attach_run(spend_caps=[cap])
            summary = policy.prefetch(decisions(40), progress=False)
            assert policy.halted_for_spend and "test cap of $0.0010 reached" in str(policy.halted)
            assert 0 < summary.asked < 40 and srv.request_count == summary.asked
            assert cap.spent_usd == pytest.approx(summary.cost_usd_incurred)
            assert cap.spent_usd <= 0.001 and cap.held_usd == pytest.approx(0.0)
            # a stopped policy asks nothing more, also from the sequential path
            state, candidates = decisions(41)[-1]
            assert policy(state, candidates) is None and srv.request_count == summary.asked


def test_an_n_request_holds_n_answer_budgets(api_key: str) -> None:
    with ScriptedServer(default=lambda r: do_nothing()) as srv:
        items = decisions(1)
        with _policy(srv, cache_mode="off", samples=3, temperature=0.7) as policy:
            ((request, _),) = policy.requests_for(*items[0])
            assert request.n == 3
            prompt = count_message_tokens(request.messages, request.model)
            # room for 2 answers of 400 tokens at $0.60/M plus the prompt at $0.15/M, not 3
            cap = SpendCap((prompt * 0.15 + 2 * 400 * 0.60) / 1e6, "test cap")
            policy.attach_run(spend_caps=[cap])
            policy.prefetch(items, progress=False)
            assert policy.halted_for_spend and srv.request_count == 0
        with _policy(srv, cache_mode="off") as single:
            single.attach_run(spend_caps=[SpendCap(cap.limit_usd, "test cap")])
            single.prefetch(items, progress=False)
            assert not single.halted_for_spend and srv.request_count == 1
