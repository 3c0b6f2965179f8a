"""ChatClient against the scripted server: the real openai SDK over real HTTP, no mocks."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from harness.llm.client import (
    PLACEHOLDER_API_KEY,
    ChatClient,
    ChatRequest,
    LLMBadRequest,
    LLMCallError,
    LLMUnavailable,
)
from harness.llm.contract import response_format_for
from harness.llm.cost import Usage
from harness.llm.ratelimit import RateLimiter, estimate_tokens
from harness.llm.retry import RetryPolicy, retry_after_s
from tests.llm.fixtures import KEY_ENV, SECRET
from tests.llm.scripted_server import (
    ScriptedServer,
    answer,
    do_nothing,
    garbage,
    raw_body,
    status,
)

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.01)
REQUEST = ChatRequest(
    model="gpt-4o-mini",
    messages=(("system", "be brief"), ("user", "decide")),
    max_tokens=100,
    response_format=json.dumps(response_format_for(["A", "B"])),
)


def _client(server: ScriptedServer, **kw: object) -> ChatClient:
    settings: dict = {
        "base_url": server.url,
        "api_key_env": KEY_ENV,
        "timeout_s": 5.0,
        "retry": FAST_RETRY,
    }
    settings.update(kw)
    return ChatClient(**settings)


def test_valid_answer(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(answer({"action": "DO_NOTHING"}, usage=(200, 20, 50)))
    client = _client(server)
    response = client.complete(REQUEST)
    assert json.loads(response.text) == {"action": "DO_NOTHING"}
    assert response.usage == Usage(200, 20, 50)
    assert response.attempts == 1 and not response.schema_fallback
    assert response.finish_reason == "stop" and response.latency_s > 0
    sent = server.requests[0]
    assert sent["model"] == "gpt-4o-mini" and sent["max_tokens"] == 100
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["temperature"] == 0.0 and "seed" not in sent and "top_p" not in sent
    assert server.authorizations == [f"Bearer {api_key}"]
    assert api_key not in repr(client)
    client.close()


def test_429_waits_what_retry_after_says(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(status(429, {"Retry-After": "1"}, "slow down"), do_nothing())
    client = _client(server)
    started = time.perf_counter()
    response = client.complete(REQUEST)
    elapsed = time.perf_counter() - started
    assert response.attempts == 2 and server.request_count == 2
    # The exponential backoff is ~ms here, so a ~1 s pause can only be the header's.
    assert 0.9 <= elapsed < 3.0


def test_503_retry_after_ms_and_500_then_success(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(status(503, {"retry-after-ms": "200"}), status(500), do_nothing())
    client = _client(server)
    started = time.perf_counter()
    response = client.complete(REQUEST)
    assert response.attempts == 3 and server.request_count == 3
    assert time.perf_counter() - started >= 0.19


def test_retries_are_capped_and_reported(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(*[status(500)] * 5)
    with pytest.raises(LLMCallError, match=r"HTTP 500.*3 attempts") as err:
        _client(server).complete(REQUEST)
    assert err.value.attempts == 3 and err.value.status_code == 500
    assert server.request_count == 3


def test_total_retry_time_is_capped(server: ScriptedServer, api_key: str) -> None:
    # Retry-After of 5 s would break the 0.5 s budget: stop instead of sleeping.
    server.enqueue(status(429, {"Retry-After": "5"}), do_nothing())
    client = _client(server, retry=RetryPolicy(max_attempts=5, max_total_s=0.5))
    started = time.perf_counter()
    with pytest.raises(LLMCallError) as err:
        client.complete(REQUEST)
    # well under the 5 s the header asked for (loose: client start-up on a loaded machine)
    assert err.value.attempts == 1 and time.perf_counter() - started < 4.0


@pytest.mark.parametrize("code", [400, 403, 401, 404])
def test_client_errors_are_not_retried(server: ScriptedServer, api_key: str, code: int) -> None:
    server.enqueue(status(code, message=f"nope, key {SECRET} rejected"), do_nothing())
    request = ChatRequest(model="m", messages=(("user", "x"),))  # no response_format
    expected = LLMCallError if code == 400 else LLMUnavailable
    with pytest.raises(expected) as err:
        _client(server).complete(request)
    assert server.request_count == 1
    assert SECRET not in str(err.value) and "***" in str(err.value)
    # The SDK error (whose request carries the Authorization header) is not chained.
    assert err.value.__cause__ is None


def test_quota_exhaustion_is_not_retried(server: ScriptedServer, api_key: str) -> None:
    quota = {
        "error": {
            "message": "out of credit",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }
    server.enqueue(raw_body(json.dumps(quota), "application/json", code=429), do_nothing())
    with pytest.raises(LLMUnavailable, match="429"):
        _client(server).complete(REQUEST)
    assert server.request_count == 1


def test_timeout_is_retried(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(do_nothing(delay_s=1.0), do_nothing())
    client = _client(server, timeout_s=0.25)
    response = client.complete(REQUEST)
    assert response.attempts == 2


def test_timeouts_exhausted(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(*[do_nothing(delay_s=0.6)] * 2)
    client = _client(
        server, timeout_s=0.2, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.001)
    )
    with pytest.raises(LLMCallError, match=r"timeout.*2 attempts"):
        client.complete(REQUEST)


def test_garbage_text_is_a_successful_http_answer(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(garbage("sell sell sell"))
    assert _client(server).complete(REQUEST).text == "sell sell sell"


def test_non_json_body_is_retried_then_reported(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(raw_body("<html>bad gateway</html>", "text/html"), do_nothing())
    assert _client(server).complete(REQUEST).attempts == 2
    server.enqueue(*[raw_body("oops")] * 3)
    with pytest.raises(LLMCallError, match="not a chat completion"):
        _client(server).complete(REQUEST)


def test_server_without_json_schema_support_steps_down_per_request(api_key: str) -> None:
    with ScriptedServer(supports_json_schema=False) as server:
        client = _client(server)
        first = client.complete(REQUEST)
        assert first.schema_fallback and first.attempts == 2
        assert first.response_format_used == "json_object"
        assert first.sent_params["response_format"] == {"type": "json_object"}
        assert first.sent_params["max_tokens"] == 100 and "messages" not in first.sent_params
        # Per request: the next one asks for the schema again (nothing is switched off).
        second = client.complete(REQUEST)
        assert second.schema_fallback and second.attempts == 2
        formats = [(r.get("response_format") or {}).get("type") for r in server.requests]
        assert formats == ["json_schema", "json_object"] * 2


def test_missing_key_is_unavailable_and_none_uses_a_placeholder(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    client = _client(server)
    with pytest.raises(LLMUnavailable, match=KEY_ENV):
        client.complete(REQUEST)
    with pytest.raises(LLMUnavailable):
        client.check_available()
    assert server.request_count == 0
    local = _client(server, api_key_env=None)
    local.check_available()
    assert local.complete(REQUEST).text
    assert server.authorizations == [f"Bearer {PLACEHOLDER_API_KEY}"]


def test_connection_refused_is_retried_then_reported(api_key: str) -> None:
    server = ScriptedServer().start()
    server.stop()
    with pytest.raises(LLMCallError, match=r"connection error.*3 attempts"):
        _client(server).complete(REQUEST)


def test_async_concurrency_is_bounded(api_key: str) -> None:
    with ScriptedServer(latency_s=0.02) as server:
        client = _client(server, max_concurrency=24)
        requests = [
            ChatRequest(model="m", messages=(("user", f"q{i}"),), sample_index=0)
            for i in range(150)
        ]

        async def main() -> list:
            try:
                return await asyncio.gather(*(client.acomplete(r) for r in requests))
            finally:
                await client.aclose()

        responses = asyncio.run(main())
        assert len(responses) == 150 and server.request_count == 150
        assert 2 <= server.max_in_flight <= 24


def test_async_path_retries_too(server: ScriptedServer, api_key: str) -> None:
    server.enqueue(status(500), status(429, {"Retry-After": "0"}), do_nothing())
    client = _client(server)

    async def main():
        try:
            return await client.acomplete(REQUEST)
        finally:
            await client.aclose()

    assert asyncio.run(main()).attempts == 3


def test_retry_after_parsing() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s(None) is None


def test_rate_limiter_spaces_requests_and_tokens() -> None:
    now = [0.0]
    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=6000, clock=lambda: now[0])
    # Burst of 10 s of rate, then one request per second.
    waits = [limiter.reserve(tokens=10) for _ in range(12)]
    assert waits[:10] == [0.0] * 10
    assert waits[10] == pytest.approx(1.0) and waits[11] == pytest.approx(2.0)
    now[0] = 100.0
    # Tokens: a bucket of 1000 (10 s at 100/s); 1500 tokens leaves a 500-token debt = 5 s.
    assert limiter.reserve(tokens=1500) == pytest.approx(5.0)
    limiter.settle(estimated_tokens=1500, actual_tokens=500)  # refund 1000
    assert limiter.reserve(tokens=400) == pytest.approx(0.0)
    assert not RateLimiter().enabled and RateLimiter().reserve(10**9) == 0.0
    assert estimate_tokens([{"role": "user", "content": "x" * 400}], 50) == 100 + 4 + 50


def test_http_library_is_the_one_the_installed_sdk_uses() -> None:
    import importlib

    from harness.llm import client as client_module

    base = importlib.import_module("openai._base_client")
    http = client_module._httpx
    assert http.__name__ in ("httpx", "httpx2") and getattr(base, http.__name__) is http
    made = client_module._http_client(asynchronous=False)
    assert isinstance(made, http.Client)
    made.close()


def test_validation_errors_that_echo_the_request_are_not_a_schema_rejection(
    server: ScriptedServer, api_key: str
) -> None:
    # A FastAPI-style 422 about temperature whose `input` echoes the whole request body.
    echo = {
        "detail": [
            {
                "loc": ["body", "temperature"],
                "msg": "Input should be less than or equal to 2",
                "input": {"response_format": {"type": "json_schema"}, "temperature": 9},
            }
        ]
    }
    server.enqueue(raw_body(json.dumps(echo), "application/json", code=422))
    with pytest.raises(LLMBadRequest, match=r"body\.temperature: Input should be") as err:
        _client(server).complete(REQUEST)
    assert server.request_count == 1 and "input" not in err.value.reason
    # One that names the field in its message does step down.
    vllm = {"object": "error", "message": "response_format json_schema is not supported"}
    server.enqueue(raw_body(json.dumps(vllm), "application/json", code=400), do_nothing())
    response = _client(server).complete(REQUEST)
    assert response.schema_fallback and response.response_format_used == "json_object"


# Mutation pass 5 (docs/testing.md): error texts the user reads, survivors of the sample.


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        ("Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead.", True),
        ("Unsupported value: 'temperature' does not support 0.2 with this model.", True),
        ("temperature is unsupported here", True),
        ("This model does not support temperature.", True),
        ("messages[1].content must be a string", False),
    ],
)
def test_a_rejected_reasoning_model_parameter_says_how_to_fix_the_config(
    server: ScriptedServer, api_key: str, reason: str, hint: bool
) -> None:
    server.enqueue(status(400, message=reason))
    with pytest.raises(LLMBadRequest) as err:
        _client(server).complete(ChatRequest(model="o-model", messages=(("user", "x"),)))
    text = str(err.value)
    assert reason in text
    fix = (
        " (a reasoning model: set `reasoning_model: true` in the policy config so the "
        "harness sends max_completion_tokens and no temperature)"
    )
    assert text.endswith(fix) if hint else (fix not in text and text.rstrip().endswith(reason))


def test_a_provider_error_in_an_http_200_body_names_its_code(
    server: ScriptedServer, api_key: str
) -> None:
    body = json.dumps({"error": {"message": "upstream overloaded", "code": 529}})
    for _ in range(3):
        server.enqueue(raw_body(body, content_type="application/json"))
    with pytest.raises(LLMCallError) as err:
        _client(server).complete(ChatRequest(model="m", messages=(("user", "x"),)))
    assert "upstream overloaded (code 529)" in str(err.value)


def test_the_step_down_warning_quotes_the_servers_rejection(
    api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with ScriptedServer(supports_json_schema=False) as server, caplog.at_level("WARNING"):
        assert _client(server).complete(REQUEST).schema_fallback
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "response_format type 'json_schema' is not supported" in warning


def test_redaction_masks_key_like_strings_that_are_not_our_key(
    server: ScriptedServer, api_key: str
) -> None:
    client = _client(server)
    text = "keys sk-proj_abcdef123456 and rk-1234567890ab, not sk-short"
    assert client.redact(text) == "keys sk-*** and rk-***, not sk-short"


def test_a_body_received_another_way_parses_content_parts_with_zero_latency(
    server: ScriptedServer, api_key: str
) -> None:
    parts = [{"type": "text", "text": '{"action": '}, {"type": "text", "text": '"DO_NOTHING"}'}]
    raw = {
        "id": "batch-line-1",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": parts},
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    response = _client(server).parse_completion(raw, ChatRequest(model="m", messages=()))
    assert response.text == '{"action": "DO_NOTHING"}'
    assert response.latency_s == 0.0 and response.attempts == 1


def test_a_token_limit_charges_each_blocking_request(server: ScriptedServer, api_key: str) -> None:
    now = [0.0]
    limiter = RateLimiter(tokens_per_minute=6000, clock=lambda: now[0])  # 1,000-token bucket
    server.enqueue(do_nothing())
    response = _client(server, rate_limiter=limiter).complete(REQUEST)
    # The request reserved its estimate and settled on its reported usage: the bucket now owes
    # exactly the tokens used, so the next 1,000 tokens wait that many tokens at 100 per second.
    used = response.usage.total_tokens
    assert used > 0
    assert limiter.reserve(tokens=1000) == pytest.approx(used / 100.0)


def test_request_params_are_the_sent_body_without_model_and_messages(
    server: ScriptedServer, api_key: str
) -> None:
    """Transcripts record the knobs sent, not the model (recorded apart) or the prompt."""
    server.enqueue(answer({"action": "DO_NOTHING"}))
    client = _client(server)
    response = client.complete(REQUEST)
    sent = server.requests[0]
    expected = {k: v for k, v in sent.items() if k not in ("model", "messages")}
    assert response.request_params == expected
    assert response.request_params["max_tokens"] == 100 and "temperature" in expected
    client.close()


def test_masked_header_values_are_refused_before_any_request_with_a_fix(
    server: ScriptedServer, api_key: str
) -> None:
    """A config rebuilt from a run folder holds '***' header values: say so, send nothing."""
    client = _client(server, extra_headers={"X-Team": "***", "X-Trace": "abc"})
    for call in (client.check_available, lambda: client.complete(REQUEST)):
        with pytest.raises(LLMUnavailable) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("extra_headers X-Team hold the mask '***', not a value")
        assert "a run folder's config.yaml masks header values; run with the original config" in (
            message
        )
        assert "X-Trace" not in message
    assert server.request_count == 0
    client.close()


def test_retry_log_lines_never_show_the_api_key(
    server: ScriptedServer, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server echoing the key in a retried error: the retry log masks it, sync and async."""
    leak = f"overloaded, key {SECRET} busy"
    server.enqueue(status(500, message=leak), do_nothing())
    server.enqueue(status(500, message=leak), do_nothing())
    client = _client(server)

    async def main() -> None:
        try:
            await client.acomplete(REQUEST)
        finally:
            await client.aclose()

    with caplog.at_level("INFO", logger="harness"):
        assert client.complete(REQUEST).attempts == 2
        asyncio.run(main())
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2 and all("overloaded, key ***" in line for line in retries)
    assert not any(SECRET in r.getMessage() for r in caplog.records)
