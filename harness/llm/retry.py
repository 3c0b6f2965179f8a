"""Retry policy for chat calls (tenacity): which errors to retry and how long to wait."""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

log = logging.getLogger("harness.llm")

# Status codes worth another attempt: request timeout, conflict/lock, rate limit, server errors.
_RETRY_STATUS = frozenset({408, 409, 429})
# Error codes/types of a 429 that means the account is out of credit.
QUOTA_CODES = frozenset({"insufficient_quota", "quota_exceeded", "billing_hard_limit_reached"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How chat calls are retried; all durations in seconds."""

    max_attempts: int = 5  # HTTP attempts per request, the first included
    max_total_s: float = 300.0  # no new attempt would start after this much time
    initial_backoff_s: float = 1.0  # first exponential wait (before jitter)
    max_backoff_s: float = 30.0  # cap of one exponential wait
    max_retry_after_s: float = 120.0  # cap of a server-requested Retry-After wait

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if min(self.max_total_s, self.initial_backoff_s, self.max_backoff_s) < 0:
            raise ValueError("retry durations must be >= 0")


class MalformedResponse(openai.OpenAIError):
    """An HTTP 200 whose body is not a chat completion (proxy hiccup, truncated body)."""


class ProviderError(openai.OpenAIError):
    """A provider error inside an HTTP 200 (`error` in the body or choice, finish_reason error).

    OpenRouter reports upstream failures this way once the model has started; treated as a 5xx.
    """


def is_quota_exhausted(exc: BaseException) -> bool:
    """True for a 429 that means the account is out of credit, which waiting will not fix."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code != 429:
        return False
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    fields = (
        [error.get("code"), error.get("type"), exc.code, exc.type]
        if isinstance(error, dict)
        else []
    )
    return any(f in QUOTA_CODES for f in fields)


def is_retryable(exc: BaseException) -> bool:
    """True for errors another attempt may fix: timeouts, connection errors, 408/409/429, 5xx."""
    if isinstance(exc, openai.APIConnectionError | MalformedResponse | ProviderError):
        return True
    if isinstance(exc, openai.APIStatusError):
        if is_quota_exhausted(exc):
            return False
        return exc.status_code in _RETRY_STATUS or exc.status_code >= 500
    return False


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a server asked us to wait (`retry-after-ms`, `retry-after` seconds or HTTP date)."""
    if not headers:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if name == "retry-after":
                try:
                    when = email.utils.parsedate_to_datetime(value)
                except (TypeError, ValueError):
                    continue
                return max(0.0, when.timestamp() - time.time())
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


class WaitRetryAfterOrBackoff:
    """Wait what `Retry-After` says on 429/503, else exponential backoff with full jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, openai.APIStatusError) and exc.status_code in (429, 503):
            try:
                headers = exc.response.headers
            except Exception:  # a hand-built error without a response
                headers = None
            server_wait = retry_after_s(headers)
            if server_wait is not None:
                return min(server_wait, self.policy.max_retry_after_s)
        ceiling = min(
            self.policy.max_backoff_s,
            self.policy.initial_backoff_s * 2.0 ** (retry_state.attempt_number - 1),
        )
        # Full jitter spreads the retries of many concurrent decisions apart.
        return random.uniform(0.0, ceiling)


def _log_before_sleep(redact: Callable[[str], str]) -> Callable[[RetryCallState], None]:
    def log_it(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        log.info(
            "LLM call attempt %d failed (%s); retrying in %.2fs",
            retry_state.attempt_number,
            redact(describe_error(exc)) if exc else "?",
            retry_state.upcoming_sleep,
        )

    return log_it


def _common(
    policy: RetryPolicy,
    redact: Callable[[str], str] | None,
    retry_if: Callable[[BaseException], bool] = is_retryable,
) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(policy.max_attempts) | stop_before_delay(policy.max_total_s),
        "wait": WaitRetryAfterOrBackoff(policy),
        "retry": retry_if_exception(retry_if),
        "before_sleep": _log_before_sleep(redact or (lambda text: text)),
        "reraise": True,  # callers see the last real error, not tenacity.RetryError
    }


def sync_retrying(
    policy: RetryPolicy,
    redact: Callable[[str], str] | None = None,
    retry_if: Callable[[BaseException], bool] = is_retryable,
) -> Retrying:
    """A tenacity `Retrying` implementing `policy` for blocking calls (log lines `redact`ed).

    `retry_if` narrows which errors are retried (a batch create retries only a 429).
    """
    return Retrying(**_common(policy, redact, retry_if))


def async_retrying(
    policy: RetryPolicy, redact: Callable[[str], str] | None = None
) -> AsyncRetrying:
    """A tenacity `AsyncRetrying` implementing `policy` for coroutines (log lines `redact`ed)."""
    return AsyncRetrying(**_common(policy, redact))


def server_reason(exc: BaseException) -> str:
    """What the server said went wrong, in its own words where it gave any (not yet masked)."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {exc.__cause__ or exc}"
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        if isinstance(body, dict) and isinstance(body.get("detail"), list):
            # FastAPI-style validation errors: where and what, not the echoed input.
            items = [d for d in body["detail"] if isinstance(d, dict)]
            text = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}" for d in items
            )
            if text:
                return text[:500]
        if isinstance(body, dict):
            message = body.get("message") or body.get("detail") or body.get("error")
            code = body.get("code")
            if isinstance(message, str) and message:
                suffix = f" (code {code})" if isinstance(code, str) and code else ""
                return (message + suffix)[:500]
        if isinstance(body, str) and body.strip():
            return body.strip()[:500]
        message = exc.message if isinstance(exc.message, str) else str(exc)
        return message[:500]
    if isinstance(exc, MalformedResponse | ProviderError):
        return str(exc)[:500]
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def describe_error(exc: BaseException) -> str:
    """Short description of a call error for logs (not masked: callers redact it)."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {server_reason(exc)[:300]}"
    if isinstance(exc, ProviderError):
        return f"HTTP 200 with a provider error: {exc}"
    return server_reason(exc)
