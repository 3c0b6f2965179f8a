"""LLM policy tests share the scripted server, the test API key and fast retries with tests/llm."""

from tests.llm.conftest import FAST, api_key, server

__all__ = ["FAST", "api_key", "server"]
