"""Batch request lines, splitting within limits, and output/error line parsing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.llm.batch import (
    BatchItem,
    BatchLimits,
    batch_lines,
    parse_output,
    parse_output_line,
    split_batches,
)
from harness.llm.client import (
    LLMAuthError,
    LLMBadRequest,
    LLMModelNotFound,
    LLMPaymentRequired,
    LLMRateLimited,
    LLMServerError,
)

URL_A = "http://127.0.0.1:1/v1"
URL_B = "http://127.0.0.1:2/v1"


def _item(i: int, model: str = "gpt-4o-mini", base_url: str = URL_A, size: int = 10) -> BatchItem:
    body = {"model": model, "messages": [{"role": "user", "content": "x" * size}]}
    return BatchItem(custom_id=f"key{i:04d}", model=model, base_url=base_url, body=body)


def test_a_line_is_the_openai_request_format() -> None:
    item = _item(1)
    (line,) = batch_lines([item])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "custom_id": "key0001",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": item.body,
    }


def test_split_by_model_base_url_and_request_count() -> None:
    items = [
        _item(i, model="m1" if i % 3 else "m2", base_url=URL_A if i < 6 else URL_B)
        for i in range(12)
    ]
    files = split_batches(items, BatchLimits(max_requests=2))
    for chunk in files:
        assert len(chunk) <= 2
        assert len({(item.model, item.base_url) for item in chunk}) == 1
    assert sorted(item.custom_id for chunk in files for item in chunk) == sorted(
        item.custom_id for item in items
    )
    # order within a model is kept
    m1_a = [
        item.custom_id
        for chunk in files
        for item in chunk
        if (item.model, item.base_url) == ("m1", URL_A)
    ]
    assert m1_a == [i.custom_id for i in items if (i.model, i.base_url) == ("m1", URL_A)]


def test_split_by_bytes() -> None:
    items = [_item(i, size=100) for i in range(10)]
    line = len(batch_lines(items[:1])[0])
    files = split_batches(items, BatchLimits(max_bytes=3 * line))
    assert [len(chunk) for chunk in files] == [3, 3, 3, 1]


def test_a_request_larger_than_the_byte_limit_is_named() -> None:
    with pytest.raises(ValueError, match="key0000"):
        split_batches([_item(0, size=500)], BatchLimits(max_bytes=100))


def test_duplicate_custom_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        split_batches([_item(1), _item(1)], BatchLimits())


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BatchLimits(max_requests=0)


@settings(max_examples=60, deadline=None)
@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(["m1", "m2", "m3"]),
            st.sampled_from([URL_A, URL_B]),
            st.integers(0, 300),
        ),
        max_size=60,
    ),
    max_requests=st.integers(1, 7),
    max_bytes=st.integers(450, 2000),
)
def test_split_loses_and_duplicates_nothing_and_respects_limits(
    specs: list[tuple[str, str, int]], max_requests: int, max_bytes: int
) -> None:
    items = [_item(i, model, url, size) for i, (model, url, size) in enumerate(specs)]
    files = split_batches(items, BatchLimits(max_requests=max_requests, max_bytes=max_bytes))
    flat = [item.custom_id for chunk in files for item in chunk]
    assert sorted(flat) == sorted(item.custom_id for item in items)
    assert len(flat) == len(set(flat))
    for chunk in files:
        assert chunk, "no empty files"
        assert len(chunk) <= max_requests
        assert sum(len(line) for line in batch_lines(chunk)) <= max_bytes
        assert len({(item.model, item.base_url) for item in chunk}) == 1


def _line(custom_id: str, status: int | None, body: object = None, error: object = None) -> str:
    response = None if status is None else {"status_code": status, "request_id": "r", "body": body}
    return json.dumps(
        {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": error}
    )


def test_parse_an_answer() -> None:
    body = {"choices": [{"index": 0, "message": {"content": "hi"}}]}
    result = parse_output_line(_line("k", 200, body).encode())
    assert result.custom_id == "k" and result.status_code == 200 and result.body == body
    assert result.error is None and not result.missing


@pytest.mark.parametrize(
    ("status", "error", "cls"),
    [
        (
            400,
            {"message": "bad temperature", "type": "invalid_request_error", "code": None},
            LLMBadRequest,
        ),
        (401, {"message": "bad key"}, LLMAuthError),
        (404, {"message": "no such model", "code": "model_not_found"}, LLMModelNotFound),
        (429, {"message": "slow down", "code": "rate_limit_exceeded"}, LLMRateLimited),
        (429, {"message": "no credit", "code": "insufficient_quota"}, LLMPaymentRequired),
        (500, {"message": "oops", "type": "server_error"}, LLMServerError),
    ],
)
def test_error_lines_follow_the_live_taxonomy(status: int, error: dict, cls: type) -> None:
    result = parse_output_line(_line("k", status, {"error": error}))
    assert type(result.error) is cls
    assert result.status_code == status and result.body is None
    assert error["message"] in str(result.error) and result.error.reason == error["message"]


def test_lines_never_run_are_missing() -> None:
    expired = {"code": "batch_expired", "message": "not executed before the window expired"}
    result = parse_output_line(_line("k", None, error=expired))
    assert result.missing and result.code == "batch_expired" and result.status_code is None
    other = parse_output_line(_line("k", None, error={"code": "weird", "message": "?"}))
    assert not other.missing and isinstance(other.error, LLMServerError)


def test_a_200_line_without_a_body_is_a_server_error() -> None:
    result = parse_output_line(_line("k", 200, "upstream hiccup"))
    assert isinstance(result.error, LLMServerError) and result.body is None


def test_bad_lines_are_named() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        parse_output_line("{nope")
    with pytest.raises(ValueError, match="custom_id"):
        parse_output_line(json.dumps({"response": None}))


def test_parse_output_skips_blank_lines() -> None:
    data = (
        _line("a", 200, {"choices": []})
        + "\n\n"
        + _line("b", 500, {"error": {"message": "x"}})
        + "\n"
    ).encode()
    assert [r.custom_id for r in parse_output(data)] == ["a", "b"]
