"""Every request parameter that can change an answer changes the response-cache key.

The existing cache tests vary the payload dict directly; these vary the *request* (and the
policy config that builds it), so a parameter dropped from `key_payload` is caught. New
`ChatRequest` fields are covered automatically: each field is varied by its type.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from harness.llm.cache import cache_key
from harness.llm.client import ChatClient, ChatRequest
from harness.policies.llm import LLMPolicy
from tests.llm.fixtures import make_candidates, make_state

BASE_URL = "http://127.0.0.1:9/v1"
BASE = ChatRequest(
    model="gpt-4o-mini",
    messages=(("system", "be brief"), ("user", "sell?")),
    temperature=0.0,
    top_p=0.9,
    seed=3,
    max_tokens=400,
    response_format=json.dumps({"type": "json_object"}),
)

# A different value per known field; unknown (newly added) fields are varied by type below.
OTHER: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": (("system", "be brief"), ("user", "sell? ")),
    "temperature": 0.7,
    "top_p": 0.5,
    "seed": 4,
    "max_tokens": 401,
    "max_tokens_param": "max_completion_tokens",
    "response_format": json.dumps({"type": "json_schema", "json_schema": {"name": "x"}}),
    "sample_index": 1,
    "extra_body": json.dumps({"provider": {"order": ["x"]}}),  # canonical JSON text
    "reasoning_effort": "low",
}


def _other(name: str, value: Any) -> Any:
    if name in OTHER:
        return OTHER[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return 1
    raise AssertionError(f"no variant for new ChatRequest field {name!r}: add one to OTHER")


def _key(request: ChatRequest, base_url: str = BASE_URL) -> str:
    return cache_key(request.key_payload(base_url))


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ChatRequest)])
def test_each_request_field_changes_the_key(field: str) -> None:
    variant = dataclasses.replace(BASE, **{field: _other(field, getattr(BASE, field))})
    assert variant != BASE
    assert _key(variant) != _key(BASE), f"{field} is not part of the cache key"


def test_temperature_values_each_get_their_own_key() -> None:
    keys = {_key(dataclasses.replace(BASE, temperature=t)) for t in (None, 0.0, 0.2, 1.0)}
    assert len(keys) == 4


def test_base_url_changes_the_key_and_the_key_is_stable() -> None:
    assert _key(BASE) != _key(BASE, "http://127.0.0.1:10/v1")
    assert _key(BASE) == _key(dataclasses.replace(BASE))


def test_anything_sent_on_the_wire_is_in_the_key() -> None:
    """If two requests send different bodies, they must not share a cached answer."""
    client = ChatClient(base_url=BASE_URL, api_key_env=None)
    try:
        for f in dataclasses.fields(ChatRequest):
            variant = dataclasses.replace(BASE, **{f.name: _other(f.name, getattr(BASE, f.name))})
            if client._body(variant, True) != client._body(BASE, True):
                assert _key(variant) != _key(BASE), f.name
    finally:
        client.close()


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.8},
        {"top_p": 0.5},
        {"seed": 2},
        {"max_tokens": 300},
        {"max_tokens_param": "max_completion_tokens"},
        {"model": "gpt-4o"},
        {"prompt": "covered_call_v2"},
        {"base_url": "http://127.0.0.1:10/v1"},
        {"structured_output": False},
    ],
)
def test_policy_config_reaches_the_key(change: dict[str, Any]) -> None:
    state = make_state()
    cands = make_candidates(state)
    base = {
        "model": "gpt-4o-mini",
        "base_url": BASE_URL,
        "api_key_env": None,
        "cache_mode": "off",
        "seed": 1,
    }

    def keys(**cfg: Any) -> tuple[str, ...]:
        policy = LLMPolicy(**cfg)
        try:
            return policy._plan(state, cands).keys
        finally:
            policy.close()

    assert keys(**base) == keys(**base)
    assert keys(**base) != keys(**{**base, **change})


def test_readable_payload_names_each_setting() -> None:
    """The payload stored next to each answer is readable: settings under their own names."""
    p = BASE.key_payload(BASE_URL)
    assert p["base_url"] == BASE_URL and p["model"] == "gpt-4o-mini"
    assert p["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "sell?"},
    ]
    assert (p["temperature"], p["top_p"], p["seed"], p["max_tokens"]) == (0.0, 0.9, 3, 400)
    assert p["max_tokens_param"] == "max_tokens" and p["sample_index"] == 0
    assert p["response_format"] == {"type": "json_object"}
    assert (
        dataclasses.replace(BASE, response_format=None).key_payload(BASE_URL)["response_format"]
        is None
    )
    # never a credential or transport setting
    assert not {"api_key", "timeout", "max_concurrency", "headers"} & set(p)


def test_readable_payload_names_the_optional_settings() -> None:
    """Settings shown only when set appear under their own names, parsed, not as JSON text."""
    req = dataclasses.replace(
        BASE, reasoning_effort="high", extra_body='{"provider":{"order":["a"]}}', n=2, attempt=1
    )
    p = req.key_payload(BASE_URL)
    assert p["reasoning_effort"] == "high"
    assert p["extra_body"] == {"provider": {"order": ["a"]}}
    assert (p["n"], p["attempt"]) == (2, 1)


def test_client_query_and_header_names_are_in_the_key_but_never_header_values() -> None:
    def client(query: dict[str, str], headers: dict[str, str]) -> ChatClient:
        return ChatClient(
            base_url=BASE_URL, api_key_env=None, extra_query=query, extra_headers=headers
        )

    c = client({"b": "2", "a": "1"}, {"X-Tenant": "secret-1", "X-A": "v"})
    p = c.key_payload(BASE)
    assert list(p["extra_query"].items()) == [("a", "1"), ("b", "2")]
    assert p["extra_header_names"] == ["X-A", "X-Tenant"]
    assert "secret-1" not in json.dumps(p)
    key = cache_key(p)
    assert (
        cache_key(client({"a": "1", "b": "2"}, {"X-A": "w", "X-Tenant": "s2"}).key_payload(BASE))
        == key
    )
    assert (
        cache_key(client({"a": "1", "b": "3"}, {"X-A": "v", "X-Tenant": "x"}).key_payload(BASE))
        != key
    )
    assert cache_key(client({"a": "1", "b": "2"}, {"X-A": "v"}).key_payload(BASE)) != key
    plain = client({}, {}).key_payload(BASE)
    assert "extra_query" not in plain and "extra_header_names" not in plain
    assert plain == BASE.key_payload(BASE_URL)
