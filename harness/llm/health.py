"""What kind of failure an LLM call ended in: one place that maps errors to a kind.

The run-health rules (docs/llm.md, "Run health") act on the kind: a policy whose first request
ends in any failure is skipped (a `bad_request` only if it repeats with the same text), and
errors during the run count towards `max_error_rate`. The kinds are the `kind` of the error
classes of `harness.llm.client` (LLMAuthError -> auth, LLMModelNotFound -> model_not_found, ...),
used as they are; only an exception without a known `kind` (an `LLMCallError` raised elsewhere,
any other exception) is classified here from its status code and message.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

FailureKind = Literal[
    "missing_key",  # LLMKeyMissing: the environment variable holding the key is not set
    "auth",  # LLMAuthError: 401 / 403, key rejected
    "payment",  # LLMPaymentRequired: 402 or 429 insufficient_quota, out of credit
    "model_not_found",  # LLMModelNotFound: 404, unknown model or wrong base_url
    "unreachable",  # LLMUnreachable: connection refused, DNS failure, TLS failure
    "timeout",  # LLMTimeout: every attempt timed out
    "bad_request",  # LLMBadRequest: 400 / 422, the server rejects this request as sent
    "rate_limited",  # LLMRateLimited: 429 that did not clear within the retry budget
    "server",  # LLMServerError: 5xx, an error inside a 200, a 200 that is no chat completion
    "other",
]
FAILURE_KINDS: tuple[str, ...] = get_args(FailureKind)

_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_QUOTA = ("insufficient_quota", "quota_exceeded", "billing_hard_limit", "credit")


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    found = _STATUS.search(str(exc))
    return int(found.group(1)) if found else None


def classify_failure(exc: BaseException) -> FailureKind:
    """The kind of a final LLM error (`LLMUnavailable`, `LLMCallError` or any exception)."""
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str) and kind in FAILURE_KINDS:
        return kind  # type: ignore[return-value]
    text = str(exc)
    lower = text.lower()
    if "environment variable" in lower and "is not set" in lower:
        return "missing_key"
    status = _status_of(exc)
    if status in (401, 403):
        return "auth"
    if status == 402 or (status == 429 and any(q in lower for q in _QUOTA)):
        return "payment"
    if status == 404:
        return "model_not_found"
    if status in (400, 413, 422):
        return "bad_request"
    if status == 429:
        return "rate_limited"
    if status is not None and status >= 500:
        return "server"
    if lower.startswith("timeout") or "timed out" in lower:
        return "timeout"
    if lower.startswith("connection error"):
        return "unreachable"
    if "not a chat completion" in lower or "malformedresponse" in lower:
        return "server"
    return "other"


def probe_skips(kind: FailureKind) -> bool:
    """True when a first request ending in `kind` means no later request can succeed.

    Every kind does except `bad_request`, which skips only when it repeats with the same text
    on one retry (the caller checks that): a 400 can be about one prompt, not the endpoint.
    The first request has had its full retry budget, so a `server` or `rate_limited` failure
    there means the endpoint does not answer; later in the run those kinds are errors that
    count towards `max_error_rate` / `max_consecutive_errors`.
    """
    return kind != "bad_request"
