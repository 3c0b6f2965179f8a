"""A batch-parsed answer equals the live-parsed one for the same scripted answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.llm.batch import BatchItem, BatchLedger, OpenAIBatchProvider, PollPolicy, run_batches
from harness.llm.client import (
    ChatClient,
    ChatRequest,
    ChatResponse,
    LLMBadRequest,
    LLMError,
    LLMServerError,
)
from harness.llm.contract import response_format_for
from harness.llm.retry import RetryPolicy
from tests.llm.batch_server import BatchServer, ChatError, completion
from tests.llm.fixtures import KEY_ENV, SECRET

FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.01)
PLAIN = ChatRequest(
    model="gpt-4o-mini",
    messages=(("system", "be brief"), ("user", "decide")),
    max_tokens=100,
    response_format=json.dumps(response_format_for(["A", "B"])),
)
REASONING = ChatRequest(
    model="o4-mini",
    messages=(("user", "decide"),),
    temperature=None,
    max_tokens=2000,
    max_tokens_param="max_completion_tokens",
    reasoning_effort="low",
    seed=7,
)

ANSWERS: dict[str, tuple[ChatRequest, dict[str, Any]]] = {
    "plain": (PLAIN, completion({"action": "DO_NOTHING"}, usage=(200, 20, 50))),
    "reasoning": (
        REASONING,
        completion(
            '{"action": "DO_NOTHING"}',
            reasoning="premium is thin",
            reasoning_tokens=640,
            usage=(90, 700, 0),
        ),
    ),
    "think_tags": (PLAIN, completion('<think>hmm</think>{"action": "DO_NOTHING"}')),
    "refusal": (PLAIN, completion(None, refusal="I can't help with trading.")),
    "truncated": (PLAIN, completion('{"action": "SELL_', finish_reason="length")),
}


def _client(server: BatchServer) -> ChatClient:
    return ChatClient(base_url=server.url, api_key_env=KEY_ENV, timeout_s=5.0, retry=FAST_RETRY)


def _comparable(response: ChatResponse) -> dict[str, Any]:
    return {
        "choices": response.choices,
        "usage": response.usage,
        "schema_fallback": response.schema_fallback,
        "request_params": response.request_params,
        "response_format_used": response.response_format_used,
        "usage_reported": response.usage_reported,
        "raw": response.raw,
        "attempts": response.attempts,
    }


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_batch_parse_equals_live_parse(name: str, api_key: str, tmp_path: Path) -> None:
    request, body = ANSWERS[name]
    with BatchServer(lambda _body: body) as server:
        client = _client(server)
        live = client.complete(request)
        sent = json.loads(server_last_chat_body(server))
        item = BatchItem("k", request.model, client.base_url, client.request_body(request))
        results = run_batches(
            [item],
            lambda base_url, model: OpenAIBatchProvider(base_url=base_url, api_key_env=KEY_ENV),
            BatchLedger(tmp_path / "batches.json"),
            metadata={"harness_run": "equivalence"},
            poll=PollPolicy(initial_s=0.001, max_s=0.001),
        )
        assert server.chat_calls == 1  # the live call only
        batch = client.parse_completion(results["k"].body or {}, request)
        client.close()
    assert _comparable(batch) == _comparable(live)
    assert sent == item.body


def test_request_body_is_the_live_body_without_credentials(api_key: str) -> None:
    with BatchServer() as server:
        client = _client(server)
        client.complete(REASONING)
        body = client.request_body(REASONING)
        assert json.loads(server_last_chat_body(server)) == body
        client.close()
    assert body["max_completion_tokens"] == 2000 and "temperature" not in body
    assert body["reasoning_effort"] == "low" and body["seed"] == 7
    assert SECRET not in json.dumps(body)


@pytest.mark.parametrize(
    "raw",
    [
        {"error": {"message": "upstream overloaded", "code": 502}},
        {"choices": [{"index": 0, "finish_reason": "error", "message": {"content": None}}]},
        {"object": "chat.completion"},
    ],
)
def test_errors_inside_a_200_body_raise_the_live_class(raw: dict[str, Any], api_key: str) -> None:
    with BatchServer(lambda _body: raw) as server:
        client = _client(server)
        with pytest.raises(LLMError) as live:
            client.complete(PLAIN)
        with pytest.raises(LLMError) as batch:
            client.parse_completion(raw, PLAIN)
        client.close()
    assert type(batch.value) is type(live.value) is LLMServerError
    assert "gave up" not in str(batch.value)


def test_http_errors_share_the_taxonomy(api_key: str) -> None:
    with BatchServer(lambda _body: ChatError(400, "bad temperature")) as server:
        client = _client(server)
        with pytest.raises(LLMBadRequest):
            client.complete(PLAIN)
        client.close()


def server_last_chat_body(server: BatchServer) -> str:
    """The last live chat body the server answered (recorded by the answer script's input)."""
    return json.dumps(server.chat_bodies[-1])
