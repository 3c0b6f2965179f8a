"""Chat-completions client over the `openai` SDK for any OpenAI-compatible server.

The SDK's own retries are off (`max_retries=0`) so every HTTP attempt goes through
`harness.llm.retry` and is counted. The API key is read from the environment when the first
request needs it and is kept only inside the SDK client; error texts are scrubbed of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

try:  # openai >= 3 runs on httpx2; older majors on httpx
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx  # type: ignore[no-redef]

from harness.llm.cost import Usage
from harness.llm.ratelimit import RateLimiter, estimate_tokens
from harness.llm.retry import (
    MalformedResponse,
    RetryPolicy,
    async_retrying,
    describe_error,
    is_quota_exhausted,
    is_retryable,
    sync_retrying,
)

log = logging.getLogger("harness.llm")

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# Sent when `api_key_env` is None (local servers that need no key); it is not a secret.
PLACEHOLDER_API_KEY = "no-key-required"

_KEY_LIKE = re.compile(r"\b(sk|rk|or|pk)-[A-Za-z0-9_\-*]{8,}")


class LLMError(RuntimeError):
    """Base class of the errors of the LLM layer."""


class LLMUnavailable(LLMError):
    """The model cannot be used at all (missing key, rejected key, unknown model, no quota).

    The experiment layer catches this to report the policy as skipped.
    """


class LLMCallError(LLMError):
    """A request failed for good after its retries; `attempts` HTTP requests were made."""

    def __init__(self, message: str, *, attempts: int, status_code: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything that defines one chat completion's output (one sample of one decision)."""

    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    temperature: float | None = 0.0
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # "max_completion_tokens" for OpenAI reasoning models
    response_format: str | None = None  # canonical JSON of the `response_format` field, or None
    sample_index: int = 0

    def message_dicts(self) -> list[dict[str, str]]:
        """Messages in the chat-completions wire format."""
        return [{"role": role, "content": content} for role, content in self.messages]

    def key_payload(self, base_url: str) -> dict[str, Any]:
        """Readable description of everything that changes the output (cache key material).

        Holds no credentials, timeouts or concurrency settings.
        """
        return {
            "base_url": base_url,
            "model": self.model,
            "messages": self.message_dicts(),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "max_tokens_param": self.max_tokens_param,
            "response_format": (
                json.loads(self.response_format) if self.response_format is not None else None
            ),
            "sample_index": self.sample_index,
        }


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A successful HTTP answer: the assistant text, usage, latency (s) and attempts made."""

    text: str
    finish_reason: str | None
    usage: Usage
    latency_s: float  # of the successful HTTP request
    attempts: int  # HTTP requests made, failed ones included
    schema_fallback: bool  # sent without `response_format` because the server rejected it
    raw: dict[str, Any] = field(repr=False)  # the response body as received


def normalise_base_url(base_url: str | None) -> str:
    """The URL the SDK will call: `base_url` without trailing slash, or OpenAI's when None."""
    return (base_url or OPENAI_BASE_URL).rstrip("/")


_SSL_LOCK = threading.Lock()
_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """The HTTP library's default TLS context, built once per process.

    Building it reads the CA bundle (~50 ms here), and each `prefetch` needs a new async SDK
    client; an SSLContext is safe to share between clients and threads.
    """
    global _SSL_CONTEXT
    with _SSL_LOCK:
        if _SSL_CONTEXT is None:
            _SSL_CONTEXT = _httpx.create_ssl_context()
        return _SSL_CONTEXT


def _http_client(*, asynchronous: bool) -> Any:
    """The SDK's default HTTP client with the shared TLS context (None: let the SDK build it)."""
    factory = getattr(
        openai, "DefaultAsyncHttpx2Client" if asynchronous else "DefaultHttpx2Client", None
    )
    return factory(verify=_ssl_context()) if factory is not None else None


class ChatClient:
    """Blocking and asyncio chat calls with retries, rate limits and a concurrency bound."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key_env: str | None = DEFAULT_API_KEY_ENV,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        max_concurrency: int = 8,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.base_url = normalise_base_url(base_url)
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter or RateLimiter()
        self.max_concurrency = int(max_concurrency)
        self._secret: str | None = None
        self._sync: openai.OpenAI | None = None
        self._async: tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI, asyncio.Semaphore] | None
        self._async = None
        self._schema_unsupported = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    @property
    def schema_unsupported(self) -> bool:
        """True once the server rejected a JSON-schema `response_format`."""
        return self._schema_unsupported

    # -- credentials -------------------------------------------------------------------------

    def check_available(self) -> None:
        """Raise `LLMUnavailable` when the API key this client needs is not in the environment."""
        self._api_key()

    def _api_key(self) -> str:
        if self.api_key_env is None:
            return PLACEHOLDER_API_KEY
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise LLMUnavailable(
                f"environment variable {self.api_key_env} is not set: it must hold the API key "
                f"for {self.base_url}. For a local server that needs no key set "
                "`api_key_env: null`."
            )
        self._secret = value
        return value

    def redact(self, text: str) -> str:
        """`text` with the API key (and anything shaped like a key) masked."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return _KEY_LIKE.sub(lambda m: m.group(1) + "-***", text)

    # -- SDK clients ---------------------------------------------------------------------------

    def _sync_client(self) -> openai.OpenAI:
        with self._lock:
            if self._sync is None:
                self._sync = openai.OpenAI(
                    api_key=self._api_key(),
                    base_url=self.base_url,
                    timeout=self.timeout_s,
                    max_retries=0,
                    http_client=_http_client(asynchronous=False),
                )
            return self._sync

    def _async_client(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        with self._lock:
            # httpx connection pools are bound to the loop that created them, so each event loop
            # (one per `prefetch`) gets its own SDK client and semaphore.
            if self._async is None or self._async[0] is not loop:
                client = openai.AsyncOpenAI(
                    api_key=self._api_key(),
                    base_url=self.base_url,
                    timeout=self.timeout_s,
                    max_retries=0,
                    http_client=_http_client(asynchronous=True),
                )
                self._async = (loop, client, asyncio.Semaphore(self.max_concurrency))
            return self._async[1], self._async[2]

    def close(self) -> None:
        """Close the blocking SDK client (the async one is closed by `aclose`)."""
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the async SDK client of the running loop."""
        with self._lock:
            state, self._async = self._async, None
        if state is not None and state[0] is asyncio.get_running_loop():
            await state[1].close()

    # -- calls ---------------------------------------------------------------------------------

    def _body(self, request: ChatRequest, with_format: bool) -> dict[str, Any]:
        # The request body goes through the SDK's generic `post` (auth, base_url, timeouts and
        # error types as for `chat.completions.create`) as plain JSON: the typed `create` path
        # spends milliseconds per call transforming params that are already wire-format dicts,
        # which caps the throughput of hundreds of concurrent decisions on one event loop.
        kwargs: dict[str, Any] = {"model": request.model, "messages": request.message_dicts()}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.max_tokens is not None:
            kwargs[request.max_tokens_param] = request.max_tokens
        if with_format and request.response_format is not None:
            kwargs["response_format"] = json.loads(request.response_format)
        return kwargs

    def _wants_format(self, request: ChatRequest) -> bool:
        return request.response_format is not None and not self._schema_unsupported

    @staticmethod
    def _is_schema_rejection(exc: BaseException) -> bool:
        # Servers without structured outputs answer 400 (vLLM, llama.cpp) or 422 to the field.
        return isinstance(exc, openai.APIStatusError) and exc.status_code in (400, 422)

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Send `request` (blocking), retrying per the policy; raise `LLMCallError` at the end."""
        client = self._sync_client()
        counter = _Attempts()
        estimate = estimate_tokens(request.message_dicts(), request.max_tokens)

        def attempt() -> ChatResponse:
            self.rate_limiter.acquire(estimate)
            with_format = self._wants_format(request)
            try:
                return self._post_sync(client, request, with_format, counter)
            except openai.APIStatusError as exc:
                if not (with_format and self._is_schema_rejection(exc)):
                    raise
                self._note_schema_rejection(exc)
                return self._post_sync(client, request, False, counter)

        response = self._run(lambda: sync_retrying(self.retry)(attempt), counter)
        self.rate_limiter.settle(estimate, response.usage.total_tokens)
        return response

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        """Send `request` from a coroutine, at most `max_concurrency` at a time per event loop."""
        client, semaphore = self._async_client()
        counter = _Attempts()
        estimate = estimate_tokens(request.message_dicts(), request.max_tokens)

        async def attempt() -> ChatResponse:
            async with semaphore:
                await self.rate_limiter.aacquire(estimate)
                with_format = self._wants_format(request)
                try:
                    return await self._post_async(client, request, with_format, counter)
                except openai.APIStatusError as exc:
                    if not (with_format and self._is_schema_rejection(exc)):
                        raise
                    self._note_schema_rejection(exc)
                    return await self._post_async(client, request, False, counter)

        try:
            response = await async_retrying(self.retry)(attempt)
        except Exception as exc:
            raise self._final_error(exc, counter) from None
        self.rate_limiter.settle(estimate, response.usage.total_tokens)
        return response

    def _run(self, call: Any, counter: _Attempts) -> ChatResponse:
        try:
            return call()
        except Exception as exc:
            raise self._final_error(exc, counter) from None

    def _final_error(self, exc: Exception, counter: _Attempts) -> LLMError:
        # `from None` at the raise sites: the SDK exception carries the request, whose headers
        # hold the key, and must not travel into records or tracebacks written to logs.
        if isinstance(exc, LLMError):
            return exc
        message = self.redact(describe_error(exc))
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        if status in (401, 403, 404) or is_quota_exhausted(exc):
            return LLMUnavailable(f"{self.base_url} refused the request: {message}")
        if is_retryable(exc):
            message = f"{message} (gave up after {counter.count} attempts)"
        return LLMCallError(message, attempts=counter.count, status_code=status)

    def _note_schema_rejection(self, exc: openai.APIStatusError) -> None:
        if not self._schema_unsupported:
            log.warning(
                "%s rejected response_format json_schema (%s); falling back to plain JSON "
                "instructions for this client",
                self.base_url,
                self.redact(describe_error(exc)),
            )
        self._schema_unsupported = True

    def _post_sync(
        self, client: openai.OpenAI, request: ChatRequest, with_format: bool, counter: _Attempts
    ) -> ChatResponse:
        counter.count += 1
        started = time.perf_counter()
        response = client.post(
            "/chat/completions", cast_to=_httpx.Response, body=self._body(request, with_format)
        )
        latency = time.perf_counter() - started
        fallback = request.response_format is not None and not with_format
        return _parse_response(response.text, latency, counter.count, fallback)

    async def _post_async(
        self,
        client: openai.AsyncOpenAI,
        request: ChatRequest,
        with_format: bool,
        counter: _Attempts,
    ) -> ChatResponse:
        counter.count += 1
        started = time.perf_counter()
        response = await client.post(
            "/chat/completions", cast_to=_httpx.Response, body=self._body(request, with_format)
        )
        latency = time.perf_counter() - started
        fallback = request.response_format is not None and not with_format
        return _parse_response(response.text, latency, counter.count, fallback)


class _Attempts:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


def _parse_response(
    body: str, latency_s: float, attempts: int, schema_fallback: bool
) -> ChatResponse:
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        message = choice.get("message") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise MalformedResponse(f"HTTP 200 but not a chat completion: {body[:200]!r}") from None
    return ChatResponse(
        text=_content_text(message.get("content")),
        finish_reason=choice.get("finish_reason"),
        usage=Usage.from_openai(data.get("usage")),
        latency_s=latency_s,
        attempts=attempts,
        schema_fallback=schema_fallback,
        raw=data,
    )


def _content_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        # Some servers send content parts: [{"type": "text", "text": "..."}].
        return "".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part) for part in content
        )
    return str(content)
