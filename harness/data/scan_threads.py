"""The threads a store scan spreads its per-file work over (`scan_threads`, `file_pool`).

A year's load reads twelve month partitions whose decode (pyarrow) releases the GIL, so
several files can be read at once. The per-file work runs in the pool; whatever a file's
result is merged into (instrument codes, deferred value positions, counters) is updated by
the calling thread, in file order, so the values and their order are the same whatever the
thread count. One thread is the default: on the shared two-core machine the pool did not
make a 4-hour year's load reliably faster and cost CPU (docs/performance.md, store9), so
it is opt-in (`FileDataSource(threads=...)`, $HARNESS_SCAN_THREADS, "auto" = the CPU count
capped at `MAX_SCAN_THREADS`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_SCAN_THREADS = 4  # beyond this a year of month files gains nothing (12 files, GIL-bound parts)
THREADS_ENV = "HARNESS_SCAN_THREADS"


def scan_threads(threads: int | None = None) -> int:
    """Threads a scan uses: `threads` if given, else $HARNESS_SCAN_THREADS (a number, or
    "auto": the CPU count capped at `MAX_SCAN_THREADS`), else 1."""
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip().lower()
        if env == "auto":
            threads = min(os.cpu_count() or 1, MAX_SCAN_THREADS)
        elif env:
            try:
                threads = int(env)
            except ValueError as exc:
                raise ValueError(f"{THREADS_ENV} must be a number or 'auto', got {env!r}") from exc
        else:
            threads = 1
    if threads < 1:
        raise ValueError(f"scan threads must be at least 1, got {threads}")
    return threads


class FilePool(Protocol):
    """What a scan needs of a pool: results of `fn` over items, lazily, in item order."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


class _Inline:
    """One thread: each item is done when its result is asked for (one file at a time)."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return map(fn, items)


@contextlib.contextmanager
def file_pool(threads: int, files: int) -> Iterator[FilePool]:
    """A pool of up to `threads` threads for `files` files (inline when one would do).

    Results come back in item order. On leaving, work not yet started is cancelled and the
    started work is waited for, so nothing runs on after the scan (and its memory pool) ends.
    """
    workers = min(threads, files)
    if workers <= 1:
        yield _Inline()
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harness-scan")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
