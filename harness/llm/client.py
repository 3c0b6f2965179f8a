"""Chat-completions client over the `openai` SDK for any OpenAI-compatible server.

The SDK's own retries are off (`max_retries=0`) so every HTTP attempt goes through
`harness.llm.retry` and is counted. The API key is read from the environment when the first
request needs it and is kept only inside the SDK client; error texts are scrubbed of it and of
the values of `extra_headers`.

Errors (all `LLMError`, each with `kind`, `status_code`, `reason` (the server's own words, masked)
and `attempts`):

- `LLMUnavailable`: no request of this policy can succeed; the run skips the policy.
  `LLMKeyMissing` (the key variable is unset), `LLMAuthError` (401/403), `LLMPaymentRequired`
  (402, or 429 `insufficient_quota`), `LLMModelNotFound` (404: unknown model or wrong base_url).
- `LLMCallError`: this request failed after its retries; others may still succeed.
  `LLMUnreachable` (connection refused, DNS), `LLMTimeout`, `LLMRateLimited` (429 after every
  retry), `LLMServerError` (5xx, a provider error inside an HTTP 200, a 200 that is not a chat
  completion), `LLMBadRequest` (400/422 and other 4xx, with the server's text).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

import openai

from harness.llm.choice import ChatChoice
from harness.llm.cost import Usage
from harness.llm.final_answer import split_reasoning
from harness.llm.ratelimit import RateLimiter, estimate_tokens
from harness.llm.retry import (
    MalformedResponse,
    ProviderError,
    RetryPolicy,
    async_retrying,
    describe_error,
    is_quota_exhausted,
    is_retryable,
    server_reason,
    sync_retrying,
)

log = logging.getLogger("harness.llm")

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# Sent when `api_key_env` is None (local servers that need no key); it is not a secret.
PLACEHOLDER_API_KEY = "no-key-required"
MASK = "***"

_KEY_LIKE = re.compile(r"\b(sk|rk|or|pk)-[A-Za-z0-9_\-*]{8,}")
# A 400/422 means "no structured output here" only when its text says so.
_NAMES_STRUCTURED_OUTPUT = re.compile(
    r"response[_ ]?format|json[_ ]schema|structured[_ ]outputs?", re.IGNORECASE
)
# Structured-output levels, strongest first: a request steps down one level per rejection.
FORMAT_LEVELS = ("json_schema", "json_object", None)


def _sdk_http_module() -> ModuleType:
    """The HTTP library the installed openai SDK is built on (httpx2 for openai 3, else httpx)."""
    base = importlib.import_module("openai._base_client")
    for name in ("httpx2", "httpx"):
        module = getattr(base, name, None)
        if isinstance(module, ModuleType):
            return module
    raise ImportError("cannot tell which HTTP library the installed openai SDK uses")


_httpx = _sdk_http_module()


# -- errors --------------------------------------------------------------------------------------


class LLMError(RuntimeError):
    """Base class of the errors of the LLM layer; `kind` names the class of failure."""

    kind: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 0,
        status_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status_code = status_code
        self.reason = reason if reason is not None else message


class LLMUnavailable(LLMError):
    """The model cannot be used at all with this configuration: no request can succeed.

    The experiment layer catches this to report the policy as skipped.
    """

    kind: ClassVar[str] = "unavailable"


class LLMKeyMissing(LLMUnavailable):
    """The environment variable named by `api_key_env` is unset or empty."""

    kind: ClassVar[str] = "missing_key"


class LLMAuthError(LLMUnavailable):
    """HTTP 401/403: the key is rejected or lacks access."""

    kind: ClassVar[str] = "auth"


class LLMPaymentRequired(LLMUnavailable):
    """HTTP 402, or 429 `insufficient_quota`: the account is out of credit."""

    kind: ClassVar[str] = "payment"


class LLMModelNotFound(LLMUnavailable):
    """HTTP 404: the model is unknown to the server, or `base_url` is not its API root."""

    kind: ClassVar[str] = "model_not_found"


class LLMCallError(LLMError):
    """A request failed for good after its retries; `attempts` HTTP requests were made."""

    kind: ClassVar[str] = "call_failed"


class LLMUnreachable(LLMCallError):
    """No connection: refused, reset, DNS failure, TLS failure."""

    kind: ClassVar[str] = "unreachable"


class LLMTimeout(LLMCallError):
    """Every attempt timed out (`timeout_s`)."""

    kind: ClassVar[str] = "timeout"


class LLMRateLimited(LLMCallError):
    """HTTP 429 on every attempt, Retry-After honoured."""

    kind: ClassVar[str] = "rate_limited"


class LLMServerError(LLMCallError):
    """HTTP 5xx, a provider error inside an HTTP 200, or a 200 that is not a chat completion."""

    kind: ClassVar[str] = "server"


class LLMBadRequest(LLMCallError):
    """HTTP 400/422 (or another 4xx) that is not about structured output: the server's text."""

    kind: ClassVar[str] = "bad_request"


# -- requests and responses ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything that defines one chat completion's output (one sample of one decision).

    `temperature`/`top_p`/`seed`/`max_tokens`/`reasoning_effort` are sent only when not None;
    `response_format` and `extra_body` are canonical JSON text; `n` asks for that many choices in
    one request; `attempt` is the `on_invalid: retry` index (0 for the first question).
    """

    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    temperature: float | None = 0.0
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # "max_completion_tokens" for OpenAI reasoning models
    response_format: str | None = None  # canonical JSON of the `response_format` field, or None
    sample_index: int = 0
    n: int = 1
    reasoning_effort: str | None = None
    extra_body: str | None = None  # canonical JSON object merged into the request body
    attempt: int = 0

    def message_dicts(self) -> list[dict[str, str]]:
        """Messages in the chat-completions wire format."""
        return [{"role": role, "content": content} for role, content in self.messages]

    def key_payload(self, base_url: str) -> dict[str, Any]:
        """Readable description of everything that changes the output (cache key material).

        Holds no credentials, timeouts or concurrency settings. Fields added after the first
        cache format (`n`, `reasoning_effort`, `extra_body`, `attempt`) appear only when not at
        their default, so keys written before they existed stay valid.
        """
        payload: dict[str, Any] = {
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
        if self.n != 1:
            payload["n"] = self.n
        if self.reasoning_effort is not None:
            payload["reasoning_effort"] = self.reasoning_effort
        if self.extra_body is not None:
            payload["extra_body"] = json.loads(self.extra_body)
        if self.attempt:
            payload["attempt"] = self.attempt
        return payload

    def format_level(self) -> str | None:
        """`json_schema`, `json_object` or None: the structured output this request asks for."""
        if self.response_format is None:
            return None
        kind = json.loads(self.response_format).get("type")
        return kind if kind in ("json_schema", "json_object") else "json_schema"


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A completed HTTP answer: its choices (the first one also as `content`...), usage,
    latency (s), attempts made, and the request parameters actually sent (no key, no messages).
    """

    choices: tuple[ChatChoice, ...]
    usage: Usage
    latency_s: float  # of the successful HTTP request
    attempts: int  # HTTP requests made, failed ones included
    schema_fallback: bool  # sent with a weaker response_format than asked (server rejected it)
    request_params: dict[str, Any] = field(default_factory=dict)
    response_format_used: str | None = None  # json_schema / json_object / None (plain text)
    usage_reported: bool = True  # False: the server sent no `usage` (tokens count as 0)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the body as received

    @property
    def sent_params(self) -> dict[str, Any]:
        """The request parameters sent besides model and messages (no key, no header values)."""
        return dict(self.request_params)

    @property
    def reasoning_tokens(self) -> int:
        """Completion tokens spent on reasoning (`usage.reasoning_tokens`)."""
        return self.usage.reasoning_tokens

    @property
    def first(self) -> ChatChoice:
        """The first choice."""
        return self.choices[0]

    @property
    def content(self) -> str | None:
        """Content of the first choice (None when the server sent null)."""
        return self.first.content

    @property
    def text(self) -> str:
        """Content of the first choice, '' when none."""
        return self.first.text

    @property
    def reasoning(self) -> str | None:
        """Reasoning of the first choice, kept apart from the answer."""
        return self.first.reasoning

    @property
    def finish_reason(self) -> str | None:
        """finish_reason of the first choice."""
        return self.first.finish_reason

    @property
    def refusal(self) -> str | None:
        """refusal of the first choice."""
        return self.first.refusal


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
            factory = getattr(_httpx, "create_ssl_context", None)
            _SSL_CONTEXT = factory() if factory is not None else ssl.create_default_context()
        return _SSL_CONTEXT


def _http_client(*, asynchronous: bool) -> Any:
    """The SDK's default HTTP client with the shared TLS context (None: let the SDK build it)."""
    flavour = "Httpx2" if _httpx.__name__ == "httpx2" else "Httpx"
    factory = getattr(
        openai, f"DefaultAsync{flavour}Client" if asynchronous else f"Default{flavour}Client", None
    )
    return factory(verify=_ssl_context()) if factory is not None else None


def names_structured_output(exc: BaseException) -> bool:
    """True for a 400/422 whose text is about `response_format` / JSON schema support."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in (400, 422):
        return False
    # Only the server's message: bodies that echo the request would always name the field.
    return bool(_NAMES_STRUCTURED_OUTPUT.search(server_reason(exc)))


def _format_body(level: str | None, requested: str | None) -> dict[str, Any] | None:
    if level is None or requested is None:
        return None
    if level == "json_object":
        return {"type": "json_object"}
    return json.loads(requested)


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
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
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
        self._headers = {str(k): str(v) for k, v in (extra_headers or {}).items()}
        self.extra_query = {str(k): str(v) for k, v in (extra_query or {}).items()}
        self._secret: str | None = None
        self._sync: openai.OpenAI | None = None
        self._async: tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI, asyncio.Semaphore] | None
        self._async = None
        self._warned_levels: set[str | None] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    @property
    def header_names(self) -> tuple[str, ...]:
        """Names of the extra headers sent (their values are never shown)."""
        return tuple(sorted(self._headers))

    def key_payload(self, request: ChatRequest) -> dict[str, Any]:
        """`request.key_payload` plus this client's `extra_query` and extra header *names*.

        Header values never enter a key: they may carry credentials, and rotating a token must
        not invalidate the cache.
        """
        payload = request.key_payload(self.base_url)
        if self.extra_query:
            payload["extra_query"] = dict(sorted(self.extra_query.items()))
        if self._headers:
            payload["extra_header_names"] = list(self.header_names)
        return payload

    # -- credentials -------------------------------------------------------------------------

    def check_available(self) -> None:
        """Raise `LLMKeyMissing` when the API key this client needs is not in the environment,
        `LLMUnavailable` when an extra header holds the mask instead of its value."""
        self._api_key()
        self._check_headers()

    def _check_headers(self) -> None:
        # A run folder's config.yaml masks header values; sending the mask would only earn a
        # confusing 401, so a config rebuilt from it must not reach the network.
        masked = sorted(name for name, value in self._headers.items() if value == MASK)
        if masked:
            raise LLMUnavailable(
                f"extra_headers {', '.join(masked)} hold the mask {MASK!r}, not a value: a run "
                "folder's config.yaml masks header values; run with the original config"
            )

    def _api_key(self) -> str:
        if self.api_key_env is None:
            return PLACEHOLDER_API_KEY
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise LLMKeyMissing(
                f"environment variable {self.api_key_env} is not set: it must hold the API key "
                f"for {self.base_url}. For a local server that needs no key set "
                "`api_key_env: null`."
            )
        self._secret = value
        return value

    def redact(self, text: str) -> str:
        """`text` with the API key, extra header values and anything shaped like a key masked."""
        secrets = [self._secret, *self._headers.values()]
        for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
            text = text.replace(secret, MASK)
        return _KEY_LIKE.sub(lambda m: m.group(1) + "-" + MASK, text)

    # -- SDK clients ---------------------------------------------------------------------------

    def _sdk_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "api_key": self._api_key(),
            "base_url": self.base_url,
            "timeout": self.timeout_s,
            "max_retries": 0,
        }
        if self._headers:
            self._check_headers()
            options["default_headers"] = dict(self._headers)
        if self.extra_query:
            options["default_query"] = dict(self.extra_query)
        return options

    def _sync_client(self) -> openai.OpenAI:
        with self._lock:
            if self._sync is None:
                self._sync = openai.OpenAI(
                    **self._sdk_options(), http_client=_http_client(asynchronous=False)
                )
            return self._sync

    def _async_client(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        with self._lock:
            # httpx connection pools are bound to the loop that created them, so each event loop
            # (one per `prefetch`) gets its own SDK client and semaphore.
            if self._async is None or self._async[0] is not loop:
                client = openai.AsyncOpenAI(
                    **self._sdk_options(), http_client=_http_client(asynchronous=True)
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

    @staticmethod
    def _body(request: ChatRequest, level: str | None) -> dict[str, Any]:
        # The request body goes through the SDK's generic `post` (auth, base_url, timeouts and
        # error types as for `chat.completions.create`) as plain JSON: the typed `create` path
        # spends milliseconds per call transforming params that are already wire-format dicts,
        # which caps the throughput of hundreds of concurrent decisions on one event loop.
        body: dict[str, Any] = {"model": request.model, "messages": request.message_dicts()}
        if request.extra_body is not None:
            body.update(json.loads(request.extra_body))
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.seed is not None:
            body["seed"] = request.seed
        if request.max_tokens is not None:
            body[request.max_tokens_param] = request.max_tokens
        if request.reasoning_effort is not None:
            body["reasoning_effort"] = request.reasoning_effort
        if request.n != 1:
            body["n"] = request.n
        response_format = _format_body(level, request.response_format)
        if response_format is not None:
            body["response_format"] = response_format
        return body

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body a live call POSTs for `request` at its own structured-output level.

        Used for batch request lines; it holds no credentials (those travel in headers).
        """
        return self._body(request, request.format_level())

    def parse_completion(
        self, raw: Mapping[str, Any], request: ChatRequest, *, latency_s: float = 0.0
    ) -> ChatResponse:
        """Parse a chat-completion body received another way (a batch output line) as live.

        Errors inside the body raise the same `LLMError` classes a live answer raises.
        """
        counter = _Attempts(request.format_level())
        counter.count = 1
        sent = self.request_body(request)
        try:
            return _parse_data(dict(raw), latency_s, counter, request, sent)
        except (MalformedResponse, ProviderError) as exc:
            raise self._final_error(exc, counter, request, retried=False) from None

    def sdk_client(self) -> openai.OpenAI:
        """The blocking SDK client (key, headers, query, timeout; SDK retries off).

        For other endpoints of the same server, such as the Batch API's files and batches.
        """
        return self._sync_client()

    def _step_down(self, exc: BaseException, level: str | None) -> str | None:
        """The next weaker format after a rejection that names structured output; else raise."""
        if level is None or not names_structured_output(exc):
            raise exc
        weaker = FORMAT_LEVELS[FORMAT_LEVELS.index(level) + 1]
        if level not in self._warned_levels:
            self._warned_levels.add(level)
            log.warning(
                "%s rejected response_format %s (%s); this request is re-sent with %s. Set "
                "`structured_output: %s` in the policy config to skip the rejected request.",
                self.base_url,
                level,
                self.redact(server_reason(exc)),
                weaker or "plain JSON instructions",
                weaker or "false",
            )
        return weaker

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Send `request` (blocking), retrying per the policy; raise an `LLMError` at the end."""
        client = self._sync_client()
        counter = _Attempts(request.format_level())
        estimate = estimate_tokens(request.message_dicts(), request.max_tokens)

        def attempt() -> ChatResponse:
            self.rate_limiter.acquire(estimate)
            while True:
                try:
                    return self._post_sync(client, request, counter)
                except openai.APIStatusError as exc:
                    counter.level = self._step_down(exc, counter.level)

        try:
            response = sync_retrying(self.retry, self.redact)(attempt)
        except Exception as exc:
            raise self._final_error(exc, counter, request) from None
        self.rate_limiter.settle(estimate, response.usage.total_tokens)
        return response

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        """Send `request` from a coroutine, at most `max_concurrency` at a time per event loop."""
        client, semaphore = self._async_client()
        counter = _Attempts(request.format_level())
        estimate = estimate_tokens(request.message_dicts(), request.max_tokens)

        async def attempt() -> ChatResponse:
            async with semaphore:
                await self.rate_limiter.aacquire(estimate)
                while True:
                    try:
                        return await self._post_async(client, request, counter)
                    except openai.APIStatusError as exc:
                        counter.level = self._step_down(exc, counter.level)

        try:
            response = await async_retrying(self.retry, self.redact)(attempt)
        except Exception as exc:
            raise self._final_error(exc, counter, request) from None
        self.rate_limiter.settle(estimate, response.usage.total_tokens)
        return response

    def _final_error(
        self, exc: Exception, counter: _Attempts, request: ChatRequest, *, retried: bool = True
    ) -> LLMError:
        # `from None` at the raise sites: the SDK exception carries the request, whose headers
        # hold the key, and must not travel into records or tracebacks written to logs.
        if isinstance(exc, LLMError):
            return exc
        attempts = counter.count
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        reason = self.redact(server_reason(exc))
        where = f"from {self.base_url}"
        tries = f" (gave up after {attempts} attempts)" if retried and is_retryable(exc) else ""
        cls: type[LLMError]
        if isinstance(exc, openai.APITimeoutError):
            cls, message = LLMTimeout, f"timeout after {self.timeout_s:g}s {where}{tries}"
        elif isinstance(exc, openai.APIConnectionError):
            cls, message = LLMUnreachable, f"cannot reach {self.base_url}: {reason}{tries}"
        elif isinstance(exc, ProviderError):
            cls, message = (
                LLMServerError,
                f"HTTP 200 with a provider error {where}: {reason}{tries}",
            )
        elif isinstance(exc, MalformedResponse):
            cls, message = LLMServerError, f"{reason} {where}{tries}"
        elif status is None:
            cls, message = LLMCallError, self.redact(describe_error(exc))
        else:
            cls = _class_for_status(status, exc)
            message = f"HTTP {status} {where}: {reason}{tries}"
            if cls is LLMModelNotFound:
                message += (
                    f" (model {request.model!r} unknown there, or base_url is not the API root)"
                )
            elif cls is LLMBadRequest:
                message += _parameter_hint(reason, request)
        return cls(message, attempts=attempts, status_code=status, reason=reason)

    def _post_sync(
        self, client: openai.OpenAI, request: ChatRequest, counter: _Attempts
    ) -> ChatResponse:
        counter.count += 1
        body = self._body(request, counter.level)
        started = time.perf_counter()
        response = client.post("/chat/completions", cast_to=_httpx.Response, body=body)
        latency = time.perf_counter() - started
        return _parse_response(response.text, latency, counter, request, body)

    async def _post_async(
        self, client: openai.AsyncOpenAI, request: ChatRequest, counter: _Attempts
    ) -> ChatResponse:
        counter.count += 1
        body = self._body(request, counter.level)
        started = time.perf_counter()
        response = await client.post("/chat/completions", cast_to=_httpx.Response, body=body)
        latency = time.perf_counter() - started
        return _parse_response(response.text, latency, counter, request, body)


def _class_for_status(status: int, exc: BaseException) -> type[LLMError]:
    return error_class_for_status(status, quota_exhausted=is_quota_exhausted(exc))


def error_class_for_status(status: int, *, quota_exhausted: bool = False) -> type[LLMError]:
    """The `LLMError` class of an HTTP error status, as live calls classify it."""
    if status in (401, 403):
        return LLMAuthError
    if status == 402 or quota_exhausted:
        return LLMPaymentRequired
    if status == 404:
        return LLMModelNotFound
    if status == 429:
        return LLMRateLimited
    if status == 408:
        return LLMTimeout
    if status >= 500 or status == 409:
        return LLMServerError
    return LLMBadRequest


def _parameter_hint(reason: str, request: ChatRequest) -> str:
    """A how-to for the parameter errors of OpenAI reasoning models."""
    low = reason.lower()
    if "max_completion_tokens" in low or (
        "temperature" in low and ("unsupported" in low or "does not support" in low)
    ):
        return (
            " (a reasoning model: set `reasoning_model: true` in the policy config so the "
            "harness sends max_completion_tokens and no temperature)"
        )
    if "context length" in low or "context_length" in low or "maximum context" in low:
        return " (the prompt is too long for this model)"
    return ""


class _Attempts:
    __slots__ = ("count", "level")

    def __init__(self, level: str | None) -> None:
        self.count = 0
        self.level = level  # structured-output level of the next attempt


def _parse_response(
    body: str, latency_s: float, counter: _Attempts, request: ChatRequest, sent: dict[str, Any]
) -> ChatResponse:
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedResponse(f"HTTP 200 but not a chat completion: {body[:200]!r}") from None
    if not isinstance(data, dict):
        raise MalformedResponse(f"HTTP 200 but not a chat completion: {body[:200]!r}")
    return _parse_data(data, latency_s, counter, request, sent)


def _parse_data(
    data: dict[str, Any],
    latency_s: float,
    counter: _Attempts,
    request: ChatRequest,
    sent: dict[str, Any],
) -> ChatResponse:
    raw_choices = data.get("choices")
    if data.get("error") and not raw_choices:
        raise ProviderError(_error_text(data["error"]))
    if not isinstance(raw_choices, list) or not raw_choices:
        raise MalformedResponse(f"HTTP 200 but not a chat completion: {_excerpt(data)}")
    choices = []
    for raw in sorted(raw_choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
        if not isinstance(raw, dict):
            raise MalformedResponse(f"HTTP 200 with a malformed choice: {_excerpt(data)}")
        if raw.get("error") or raw.get("finish_reason") == "error":
            raise ProviderError(_error_text(raw.get("error") or "finish_reason: error"))
        choices.append(_choice(raw))
    usage_raw = data.get("usage")
    params = {k: v for k, v in sent.items() if k not in ("model", "messages")}
    return ChatResponse(
        choices=tuple(choices),
        usage=Usage.from_openai(usage_raw),
        latency_s=latency_s,
        attempts=counter.count,
        schema_fallback=counter.level != request.format_level(),
        request_params=params,
        response_format_used=counter.level,
        usage_reported=bool(usage_raw),
        raw=data,
    )


def _excerpt(data: Mapping[str, Any]) -> str:
    return repr(json.dumps(data)[:200])


def _choice(raw: Mapping[str, Any]) -> ChatChoice:
    message = raw.get("message") or {}
    if not isinstance(message, Mapping):
        raise MalformedResponse("HTTP 200 with a malformed message")
    content = message.get("content")
    text = None if content is None else _content_text(content)
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        reasoning = split_reasoning(text)[0] if text else None
    refusal = message.get("refusal")
    return ChatChoice(
        content=text,
        reasoning=reasoning,
        finish_reason=raw.get("finish_reason"),
        refusal=refusal if isinstance(refusal, str) and refusal else None,
    )


def _error_text(error: object) -> str:
    if isinstance(error, Mapping):
        message = error.get("message") or json.dumps(error)[:300]
        code = error.get("code")
        return f"{message} (code {code})" if code is not None else str(message)
    return str(error)[:300]


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        # Some servers send content parts: [{"type": "text", "text": "..."}].
        return "".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part) for part in content
        )
    return str(content)
