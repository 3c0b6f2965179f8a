"""What kind of failure an LLM call ended in: one place that maps errors to a kind.

The run-health rules (docs/llm.md, "Run health") act on the kind: a policy whose first request
ends in any failure is skipped (a `bad_request` only if it repeats with the same text), and
errors during the run count towards `max_error_rate`. The wire layer may attach a `kind`
attribute to its errors; it wins over what is inferred here from status codes and messages.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

FailureKind = Literal[
    "missing_key",  # the environment variable holding the key is not set
    "auth",  # 401 / 403: key rejected
    "payment",  # 402 or 429 insufficient_quota: out of credit
    "not_found",  # 404: unknown model or endpoint
    "unreachable",  # connection refused, DNS failure, timeouts
    "bad_request",  # 400 / 422: the server rejects this request as sent
    "rate_limited",  # 429 that did not clear within the retry budget
    "server",  # 5xx after retries, or an error reported inside a 200
    "malformed",  # a 200 whose body is not a chat completion (HTML page, proxy hiccup)
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
        return "not_found"
    if status in (400, 413, 422):
        return "bad_request"
    if status == 429:
        return "rate_limited"
    if status is not None and status >= 500:
        return "server"
    if lower.startswith(("connection error", "timeout")) or "timed out" in lower:
        return "unreachable"
    if "not a chat completion" in lower or "malformedresponse" in lower:
        return "malformed"
    return "other"


def probe_skips(kind: FailureKind) -> bool:
    """True when a first request ending in `kind` means no later request can succeed.

    Every kind does except `bad_request`, which skips only when it repeats with the same text
    on one retry (the caller checks that): a 400 can be about one prompt, not the endpoint.
    """
    return kind != "bad_request"
