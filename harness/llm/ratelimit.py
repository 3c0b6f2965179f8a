"""Client-side requests-per-minute and tokens-per-minute limits (token buckets with debt)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

# A bucket holds at most this many seconds of its rate, so a burst after an idle spell is
# bounded while short waits stay smooth.
BURST_SECONDS = 10.0


class _Bucket:
    """Continuous-refill bucket; a reservation may drive it negative (debt) and the caller waits
    until the debt is paid, so requests larger than the burst still get through."""

    def __init__(self, per_minute: float, now: float) -> None:
        if per_minute <= 0:
            raise ValueError("rate limits must be > 0 per minute")
        self.rate = per_minute / 60.0  # units per second
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self.level = self.capacity
        self.stamp = now

    def reserve(self, amount: float, now: float) -> float:
        """Take `amount` and return the seconds to wait before using it."""
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= amount
        return 0.0 if self.level >= 0 else -self.level / self.rate

    def refund(self, amount: float) -> None:
        """Give back (or, negative, take more of) a reservation once the real size is known."""
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Limits requests and tokens per minute across threads and coroutines of one process."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        now = clock()
        self._requests = _Bucket(requests_per_minute, now) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute, now) if tokens_per_minute else None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when any limit is set."""
        return self._requests is not None or self._tokens is not None

    def reserve(self, tokens: int) -> float:
        """Reserve one request of about `tokens` tokens; return the seconds to wait first."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            wait = 0.0
            if self._requests is not None:
                wait = max(wait, self._requests.reserve(1.0, now))
            if self._tokens is not None:
                wait = max(wait, self._tokens.reserve(float(tokens), now))
            return wait

    def acquire(self, tokens: int) -> float:
        """Blocking `reserve` + sleep; return the seconds waited."""
        wait = self.reserve(tokens)
        if wait > 0:
            time.sleep(wait)
        return wait

    async def aacquire(self, tokens: int) -> float:
        """Async `reserve` + sleep; return the seconds waited."""
        wait = self.reserve(tokens)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct a token reservation with the usage the server reported."""
        if self._tokens is None or actual_tokens <= 0:
            return
        with self._lock:
            self._tokens.refund(float(estimated_tokens - actual_tokens))


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int | None) -> int:
    """Rough token count of a request: ~4 characters per prompt token plus the answer budget."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return chars // 4 + 4 * len(messages) + (max_tokens or 0)
