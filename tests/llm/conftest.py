"""Fixtures of the LLM tests: a scripted chat server, a temporary cache, a fast policy factory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.llm.cache import ResponseCache
from harness.policies.llm import LLMPolicy
from tests.llm.batch_server import BatchServer
from tests.llm.fixtures import KEY_ENV, SECRET
from tests.llm.scripted_server import ScriptedServer

# Tiny backoff so retry tests take milliseconds; Retry-After tests set their own header.
FAST = {
    "initial_backoff_s": 0.001,
    "max_backoff_s": 0.01,
    "timeout_s": 5.0,
    "max_attempts": 3,
}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def batch_server() -> Iterator[BatchServer]:
    """The local Files/Batch/chat server (OpenAI's shape), DO_NOTHING answers by default."""
    with BatchServer() as srv:
        yield srv


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


@pytest.fixture
def cache(tmp_path: Any) -> Iterator[ResponseCache]:
    with ResponseCache(tmp_path / "llm-cache") as c:
        yield c


@pytest.fixture
def make_policy(server: ScriptedServer, cache: ResponseCache, api_key: str):
    """Build LLMPolicy objects against `server` with fast retries; closes them afterwards."""
    made: list[LLMPolicy] = []

    def factory(**overrides: Any) -> LLMPolicy:
        settings: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "base_url": server.url,
            "api_key_env": KEY_ENV,
            "cache": cache,
            **FAST,
        }
        settings.update(overrides)
        policy = LLMPolicy(**settings)
        made.append(policy)
        return policy

    yield factory
    for policy in made:
        policy.close()
