"""Units of run integrity: failure kinds, spend caps, transcripts, batch prices, token counts."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.llm.budget import SpendCap, SpendCapReached, reserve, settle
from harness.llm.client import (
    LLMAuthError,
    LLMBadRequest,
    LLMCallError,
    LLMKeyMissing,
    LLMModelNotFound,
    LLMPaymentRequired,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    LLMUnavailable,
    LLMUnreachable,
)
from harness.llm.cost import ModelPrice, PriceTable, Usage
from harness.llm.health import classify_failure, probe_skips
from harness.llm.tokens import count_message_tokens, count_text_tokens, encoding_name
from harness.llm.transcripts import (
    TranscriptBook,
    TranscriptMissing,
    TranscriptRecord,
    TranscriptResponse,
    TranscriptWriter,
    read_transcripts,
)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (LLMUnavailable("environment variable X is not set: it must hold the key"), "missing_key"),
        (LLMUnavailable("http://h/v1 refused the request: HTTP 401: bad key"), "auth"),
        (LLMUnavailable("http://h/v1 refused the request: HTTP 403: forbidden"), "auth"),
        (LLMCallError("HTTP 402: Insufficient credits", attempts=1, status_code=402), "payment"),
        (LLMUnavailable("refused: HTTP 429: insufficient_quota"), "payment"),
        (LLMUnavailable("refused: HTTP 404: model does not exist"), "model_not_found"),
        (LLMCallError("HTTP 400: context length", attempts=1, status_code=400), "bad_request"),
        (
            LLMCallError("HTTP 429: slow down (gave up)", attempts=3, status_code=429),
            "rate_limited",
        ),
        (LLMCallError("HTTP 503: busy (gave up)", attempts=3, status_code=503), "server"),
        (LLMCallError("connection error: refused (gave up)", attempts=3), "unreachable"),
        (LLMCallError("timeout (gave up after 3 attempts)", attempts=3), "timeout"),
        (
            LLMCallError("MalformedResponse: HTTP 200 but not a chat completion", attempts=3),
            "server",
        ),
        (ValueError("something else"), "other"),
    ],
)
def test_failures_are_classified_in_one_place(exc: BaseException, kind: str) -> None:
    assert classify_failure(exc) == kind
    assert probe_skips(kind) == (kind != "bad_request")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "kind", "skips"),
    [
        (LLMKeyMissing, "missing_key", True),
        (LLMAuthError, "auth", True),
        (LLMPaymentRequired, "payment", True),
        (LLMModelNotFound, "model_not_found", True),
        (LLMUnreachable, "unreachable", True),
        (LLMTimeout, "timeout", True),
        (LLMRateLimited, "rate_limited", True),
        (LLMServerError, "server", True),
        (LLMBadRequest, "bad_request", False),
    ],
)
def test_the_wire_error_classes_are_their_own_kind(cls: type, kind: str, skips: bool) -> None:
    # The message says nothing the text rules would recognise: the class's `kind` decides.
    exc = cls("the server said no", attempts=1)
    assert classify_failure(exc) == kind
    assert probe_skips(kind) is skips  # type: ignore[arg-type]


def test_a_kind_attribute_from_the_wire_layer_wins() -> None:
    exc = LLMCallError("HTTP 500: whatever", attempts=1, status_code=500)
    exc.kind = "payment"  # type: ignore[attr-defined]
    assert classify_failure(exc) == "payment"


def test_spend_cap_holds_in_flight_money_and_books_real_cost() -> None:
    run, own = SpendCap(1.0, "run"), SpendCap(0.5, "policy")
    a = reserve((own, run), 0.3, "a")
    b = reserve((own, run), 0.2, "b")
    with pytest.raises(SpendCapReached, match=r"policy of \$0.5000 reached"):
        reserve((own, run), 0.01, "c")
    assert run.held_usd == pytest.approx(0.5)  # the refused request holds nothing anywhere
    settle(a, 0.05)
    settle(a, 0.05)  # settling twice books once
    assert own.spent_usd == pytest.approx(0.05) and own.held_usd == pytest.approx(0.2)
    c = reserve((own, run), 0.25, "c")
    settle(b, 0.0)
    settle(c, 0.1)
    assert run.spent_usd == pytest.approx(0.15) and run.held_usd == pytest.approx(0.0)


@given(st.lists(st.tuples(st.floats(0, 0.2), st.floats(0, 1)), max_size=40))
def test_spend_never_passes_the_cap(calls: list[tuple[float, float]]) -> None:
    """Whatever the estimates and real costs (real <= estimate), spent + held <= cap."""
    cap = SpendCap(1.0, "cap")
    for estimate, share in calls:
        try:
            hold = reserve((cap,), estimate, "x")
        except SpendCapReached:
            continue
        assert cap.spent_usd + cap.held_usd <= cap.limit_usd + 1e-9
        settle(hold, estimate * share)
    assert cap.spent_usd <= cap.limit_usd + 1e-9 and cap.held_usd == pytest.approx(0.0)


def test_spend_cap_is_thread_safe() -> None:
    cap = SpendCap(10.0, "cap")
    granted: list[int] = []

    def worker() -> None:
        for _ in range(200):
            try:
                settle(reserve((cap,), 0.01, "x"), 0.01)
                granted.append(1)
            except SpendCapReached:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 1000 and cap.spent_usd == pytest.approx(10.0)


def test_batch_prices() -> None:
    table = PriceTable.load()
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    mini = table.price_for("gpt-4o-mini")
    assert mini is not None and mini.batch_discount == 0.5
    assert mini.batch_cost_usd(usage) == pytest.approx((0.15 + 0.60) / 2)
    router = table.price_for("anthropic/claude-sonnet-4")
    assert router is not None and router.batch_cost_usd(usage) is None
    assert ModelPrice(1.0, 2.0, 1.0).batch_cost_usd(usage) is None


def test_batch_discount_is_validated(tmp_path) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text("models:\n  m:\n    input: 1\n    output: 1\n    batch_discount: 1.5\n")
    with pytest.raises(ValueError, match="batch_discount"):
        PriceTable.load(bad)


def test_token_counts_use_the_bundled_bpe_tables() -> None:
    import bpe_openai

    text = "BTC-29MAR24-75000-C premium 1,234.56 USD, delta 0.25"
    assert encoding_name("gpt-4o-mini") == "o200k_base"
    assert encoding_name("openai/gpt-4-turbo") == "cl100k_base"
    n = len(bpe_openai.get_encoding("o200k_base").encode(text))
    assert count_text_tokens(text, "gpt-4o-mini") == n
    assert count_message_tokens([("system", text), ("user", text)], "gpt-4o-mini") == 3 + 2 * (
        3 + n
    )


def _record(time: str, attempt: int = 0, sample: int = 0, **kw) -> TranscriptRecord:
    return TranscriptRecord(policy="p", decision_time=time, attempt=attempt, sample=sample, **kw)


def test_transcripts_round_trip_mask_headers_and_index_for_replay(tmp_path) -> None:
    path = tmp_path / "transcripts.jsonl"
    with TranscriptWriter(path, redact=lambda t: t.replace("sk-secret-123456789", "***")) as w:
        w.write(
            _record(
                "2024-03-01T08:00:00+00:00",
                cache_key="k1",
                response=TranscriptResponse(content="first", finish_reason="stop"),
                request={"messages": [], "params": {"extra_headers": {"X-Key": "abc"}}},
            )
        )
        w.write(
            _record("2024-03-01T08:00:00Z", cache_key="k1", error="HTTP 500: sk-secret-123456789")
        )
        w.write(_record("2024-03-01T12:00:00+00:00", sample=1, error="HTTP 500: boom"))
    path.open("a").write('{"policy": "p", "decision_ti')  # a torn last line
    text = path.read_text()
    assert "sk-secret" not in text and '"X-Key": "***"' in text and "abc" not in text
    records = list(read_transcripts(path))
    assert len(records) == 3 and records[0].response.content == "first"  # type: ignore[union-attr]
    book = TranscriptBook(records)
    when = pd.Timestamp("2024-03-01 08:00", tz="UTC")
    # an answered record wins over a later failed one in the same slot
    assert book.find("p", when, 0, 0, "k1").response.content == "first"  # type: ignore[union-attr]
    assert book.find("p", when + pd.Timedelta(hours=4), 0, 1).error == "HTTP 500: boom"
    with pytest.raises(TranscriptMissing, match="attempt 1"):
        book.find("p", when, 1, 0)
