"""Response cache on diskcache: a replay store of chat answers keyed by what changes the output.

The key is the SHA-256 of the canonical JSON of the request's key payload (model, base_url,
messages, sampling settings, response format, sample index; never the API key, timeouts or
concurrency). The readable payload is stored next to the answer with usage, cost and latency.
Nothing is ever evicted (`eviction_policy="none"`): entries go only through `clear`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import diskcache
from pydantic import BaseModel, ConfigDict

from harness.llm.cost import Usage

CacheMode = Literal["read_write", "read_only", "refresh", "off"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
CACHE_DIR_ENV = "HARNESS_LLM_CACHE"
DEFAULT_CACHE_DIR = Path(".cache") / "llm"
ENTRY_FORMAT = 1  # bump when CachedResponse changes incompatibly


class CacheMissError(LookupError):
    """A `read_only` cache has no answer for a request."""


class CachedResponse(BaseModel):
    """One stored answer: the request's readable key payload, the reply text, the raw response,
    and what it cost when it was first asked (USD, tokens, seconds)."""

    model_config = ConfigDict(frozen=True)

    key: str = ""
    key_payload: dict[str, Any] = {}
    text: str
    finish_reason: str | None = None
    usage: Usage = Usage()
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1
    schema_fallback: bool = False
    response: dict[str, Any] = {}
    created_at: str = ""
    format: int = ENTRY_FORMAT

    @property
    def model(self) -> str:
        """Model named in the request."""
        return str(self.key_payload.get("model", ""))


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """How a request was served: `live` (asked now), `cache` (stored earlier) or `shared`
    (collapsed onto an identical request in flight, which made the only call)."""

    entry: CachedResponse
    source: Literal["live", "cache", "shared"]

    @property
    def hit(self) -> bool:
        """True when this request made no HTTP call."""
        return self.source != "live"


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Size of the store and what this process did with it."""

    directory: str
    entries: int
    size_bytes: int
    by_model: dict[str, int]
    hits: int = 0
    misses: int = 0
    writes: int = 0
    shared: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON or tables."""
        return {
            "directory": self.directory,
            "entries": self.entries,
            "size_bytes": self.size_bytes,
            "by_model": dict(self.by_model),
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "shared": self.shared,
        }


def default_cache_dir() -> Path:
    """$HARNESS_LLM_CACHE, else ./.cache/llm."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def canonical_json(value: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces, UTF-8 kept) used for keys and hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(payload: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of `payload`."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


@dataclass(slots=True)
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    entry: CachedResponse | None = None
    error: BaseException | None = None


class ResponseCache:
    """Disk store of chat answers with modes, single-flight and per-process statistics."""

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, mode: CacheMode = "read_write"
    ) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"cache mode {mode!r} is not one of {', '.join(CACHE_MODES)}")
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.mode: CacheMode = mode
        # tag = model, indexed, so `clear(model=...)` is one indexed delete.
        self._store = diskcache.Cache(str(self.directory), eviction_policy="none", tag_index=True)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._aflights: dict[str, asyncio.Future[CachedResponse]] = {}
        self._hits = self._misses = self._writes = self._shared = 0

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.directory)!r}, mode={self.mode!r})"

    def close(self) -> None:
        """Close the underlying store."""
        self._store.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plain access ------------------------------------------------------------------------

    def get(self, key: str) -> CachedResponse | None:
        """The stored answer under `key`, or None (unreadable old formats count as absent)."""
        raw = self._store.get(key)
        if raw is None:
            return None
        try:
            entry = CachedResponse.model_validate_json(raw)
        except ValueError:
            return None
        return entry if entry.format == ENTRY_FORMAT else None

    def put(self, entry: CachedResponse) -> bool:
        """Store `entry` under its key; empty answers are not stored. Return whether stored."""
        if not entry.key or not entry.text.strip():
            return False
        self._store.set(entry.key, entry.model_dump_json(), tag=entry.model or None)
        with self._lock:
            self._writes += 1
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    # -- lookups with modes and single-flight --------------------------------------------------

    def _resolve_mode(self, mode: CacheMode | None) -> CacheMode:
        mode = mode or self.mode
        if mode not in CACHE_MODES:
            raise ValueError(f"cache mode {mode!r} is not one of {', '.join(CACHE_MODES)}")
        return mode

    def _lookup(
        self, key: str, payload: Mapping[str, Any], mode: CacheMode
    ) -> CachedResponse | None:
        if mode in ("read_write", "read_only"):
            entry = self.get(key)
            if entry is not None:
                with self._lock:
                    self._hits += 1
                return entry
            with self._lock:
                self._misses += 1
            if mode == "read_only":
                raise CacheMissError(
                    f"read_only cache {self.directory} has no answer for model "
                    f"{payload.get('model')!r} at {payload.get('base_url')!r} (key {key[:16]})"
                )
        return None

    def _finish(
        self, key: str, payload: Mapping[str, Any], entry: CachedResponse, mode: CacheMode
    ) -> CachedResponse:
        entry = entry.model_copy(update={"key": key, "key_payload": dict(payload)})
        if not entry.created_at:
            entry = entry.model_copy(update={"created_at": datetime.now(UTC).isoformat()})
        if mode != "off":
            self.put(entry)
        return entry

    def get_or_compute(
        self,
        payload: Mapping[str, Any],
        compute: Callable[[], CachedResponse],
        *,
        mode: CacheMode | None = None,
        key: str | None = None,
    ) -> CacheLookup:
        """Serve `payload` from the store, or call `compute` once even if threads race on it.

        `key` may be passed when the caller already computed `cache_key(payload)`.
        """
        mode = self._resolve_mode(mode)
        key = key or cache_key(payload)
        entry = self._lookup(key, payload, mode)
        if entry is not None:
            return CacheLookup(entry, "cache")
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.entry is not None
            with self._lock:
                self._shared += 1
            return CacheLookup(flight.entry, "shared")
        try:
            flight.entry = self._finish(key, payload, compute(), mode)
            return CacheLookup(flight.entry, "live")
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    async def aget_or_compute(
        self,
        payload: Mapping[str, Any],
        compute: Callable[[], Awaitable[CachedResponse]],
        *,
        mode: CacheMode | None = None,
        key: str | None = None,
    ) -> CacheLookup:
        """Async `get_or_compute`: identical requests in flight on this loop share one call."""
        mode = self._resolve_mode(mode)
        key = key or cache_key(payload)
        entry = self._lookup(key, payload, mode)
        if entry is not None:
            return CacheLookup(entry, "cache")
        pending = self._aflights.get(key)
        if pending is not None and pending.get_loop() is asyncio.get_running_loop():
            shared = await asyncio.shield(pending)
            with self._lock:
                self._shared += 1
            return CacheLookup(shared, "shared")
        future: asyncio.Future[CachedResponse] = asyncio.get_running_loop().create_future()
        self._aflights[key] = future
        try:
            entry = self._finish(key, payload, await compute(), mode)
            future.set_result(entry)
            return CacheLookup(entry, "live")
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody may be waiting
            raise
        finally:
            if self._aflights.get(key) is future:
                del self._aflights[key]

    # -- maintenance ---------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Entry count, bytes on disk, entries per model, and this process's hits/misses."""
        by_model: dict[str, int] = {}
        for key in self._store.iterkeys():
            _, tag = self._store.get(key, default=(None, None), tag=True)
            name = str(tag) if tag is not None else "?"
            by_model[name] = by_model.get(name, 0) + 1
        with self._lock:
            counters = (self._hits, self._misses, self._writes, self._shared)
        return CacheStats(
            directory=str(self.directory),
            entries=len(self._store),
            size_bytes=int(self._store.volume()),
            by_model=dict(sorted(by_model.items())),
            hits=counters[0],
            misses=counters[1],
            writes=counters[2],
            shared=counters[3],
        )

    def clear(self, model: str | None = None) -> int:
        """Delete every entry, or only those of `model`; return how many were deleted."""
        if model is None:
            return int(self._store.clear())
        return int(self._store.evict(model))

    def entries(self) -> list[CachedResponse]:
        """Every stored answer (for inspection and tests; reads the whole store)."""
        out = []
        for key in self._store.iterkeys():
            entry = self.get(key)
            if entry is not None:
                out.append(entry)
        return out
