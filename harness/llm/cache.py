"""Response cache on diskcache: a replay store of chat answers keyed by what changes the output.

The key is the SHA-256 of the canonical JSON of the request's key payload (model, base_url,
messages, sampling settings, response format, sample index, retry attempt; never the API key,
header values, timeouts or concurrency). The readable payload is stored next to what the provider
said (content, reasoning, finish_reason, refusal, every choice), usage, cost and latency. Every
completed response is stored, empty, refused and truncated ones included; failed requests never
are. Nothing is ever evicted (`eviction_policy="none"`): entries go only through `clear`.

Single-flight across processes: the process that misses takes a lease on the key (an entry in a
separate `leases` store added with `Cache.add`, owner token, expiry) and renews it while its
request runs; other processes poll for the answer without blocking their event loop. A killed
owner's lease expires after `lease_s` and a waiter takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import diskcache
from pydantic import BaseModel, ConfigDict

from harness.llm.choice import ChatChoice
from harness.llm.cost import Usage

if TYPE_CHECKING:  # the client imports the openai SDK, which `harness cache stats` never needs
    from harness.llm.client import ChatResponse

CacheMode = Literal["read_write", "read_only", "refresh", "off"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
CACHE_DIR_ENV = "HARNESS_LLM_CACHE"
LEASE_S = 30.0  # a lease not renewed for this long is dead (its owner was killed)
POLL_S = (0.02, 0.5)  # first and longest wait between two looks at a key leased elsewhere
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
    text: str = ""  # content of the first choice ('' when the server sent null)
    content_null: bool = False  # the server sent `content: null`
    reasoning: str | None = None
    finish_reason: str | None = None
    refusal: str | None = None
    choices: list[dict[str, Any]] = []  # every choice (ChatChoice.as_dict), when n > 1 too
    usage: Usage = Usage()
    usage_reported: bool = True
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1
    schema_fallback: bool = False
    response_format_used: str | None = None
    # What was sent besides model and messages (see `sent_params`: the response_format is
    # left out here when it is the one in the key payload).
    request_params: dict[str, Any] = {}
    response: dict[str, Any] = {}
    created_at: str = ""
    format: int = ENTRY_FORMAT

    @property
    def model(self) -> str:
        """Model named in the request."""
        return str(self.key_payload.get("model", ""))

    @property
    def content(self) -> str | None:
        """Content of the first choice as received (None when the server sent null)."""
        return None if self.content_null else self.text

    @property
    def sent_params(self) -> dict[str, Any]:
        """The request parameters sent besides model and messages (no key, header values
        never): `request_params` with the response_format restored when it was stored only
        once, in the key payload."""
        params = dict(self.request_params)
        if self.response_format_used is not None and "response_format" not in params:
            params["response_format"] = self.key_payload.get("response_format")
        return params

    @property
    def reasoning_tokens(self) -> int:
        """Completion tokens spent on reasoning (`usage.reasoning_tokens`)."""
        return self.usage.reasoning_tokens

    @property
    def n_choices(self) -> int:
        """How many choices the server returned."""
        return max(1, len(self.choices))

    def choice(self, index: int) -> ChatChoice:
        """Choice `index` (entries written before `choices` existed have only the first)."""
        if self.choices:
            raw = self.choices[index]
            return ChatChoice(
                content=raw.get("content"),
                reasoning=raw.get("reasoning"),
                finish_reason=raw.get("finish_reason"),
                refusal=raw.get("refusal"),
            )
        if index != 0:
            raise IndexError(index)
        return ChatChoice(self.content, self.reasoning, self.finish_reason, self.refusal)

    @classmethod
    def from_response(cls, response: ChatResponse, cost_usd: float = 0.0) -> CachedResponse:
        """The entry for a completed HTTP answer (key and payload are set by the cache)."""
        return cls(
            text=response.text,
            content_null=response.content is None,
            reasoning=response.reasoning,
            finish_reason=response.finish_reason,
            refusal=response.refusal,
            choices=[c.as_dict() for c in response.choices],
            usage=response.usage,
            usage_reported=response.usage_reported,
            cost_usd=cost_usd,
            latency_s=response.latency_s,
            attempts=response.attempts,
            schema_fallback=response.schema_fallback,
            response_format_used=response.response_format_used,
            request_params=response.request_params,
            response=response.raw,
        )


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
        self,
        directory: str | os.PathLike[str] | None = None,
        mode: CacheMode = "read_write",
        *,
        lease_s: float = LEASE_S,
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
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        self.lease_s = float(lease_s)
        self._leases: diskcache.Cache | None = None  # opened on the first miss

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.directory)!r}, mode={self.mode!r})"

    def close(self) -> None:
        """Close the underlying stores."""
        self._store.close()
        if self._leases is not None:
            self._leases.close()

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
        """Store `entry` under its key (empty, refused, truncated answers too). Return whether
        stored (an entry without a key is not)."""
        if not entry.key:
            return False
        self._store.set(entry.key, entry.model_dump_json(), tag=entry.model or None)
        with self._lock:
            self._writes += 1
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def store(
        self,
        payload: Mapping[str, Any],
        entry: CachedResponse,
        *,
        mode: CacheMode | None = None,
        key: str | None = None,
    ) -> CachedResponse:
        """Store an answer obtained another way (a batch job) exactly as `get_or_compute` stores
        a live one (key, readable payload, time written); `off` returns it without storing.

        No lease is taken: nothing is computed here, and an identical answer written by another
        process meanwhile is simply replaced."""
        mode = self._resolve_mode(mode)
        return self._finish(key or cache_key(payload), payload, entry, mode)

    def writing_many(self) -> contextlib.AbstractContextManager[Any]:
        """One transaction around many `store` calls (thousands of batch answers are written
        in one commit instead of one each; other processes wait for it)."""
        return self._store.transact()

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
        update: dict[str, Any] = {"key": key, "key_payload": dict(payload)}
        params = entry.request_params
        if "response_format" in params and params["response_format"] == payload.get(
            "response_format"
        ):
            # The schema is the bulk of an entry; the key payload already holds it.
            update["request_params"] = {k: v for k, v in params.items() if k != "response_format"}
        entry = entry.model_copy(update=update)
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
        """Serve `payload` from the store, or call `compute` once even if threads or other
        processes race on it.

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
            self._count_shared()
            return CacheLookup(flight.entry, "shared")
        try:
            lookup = self._lead(key, payload, compute, mode)
            flight.entry = lookup.entry
            return lookup
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
        """Async `get_or_compute`: identical requests in flight on this loop share one call,
        and a request leased by another process is awaited without blocking the loop."""
        mode = self._resolve_mode(mode)
        key = key or cache_key(payload)
        entry = self._lookup(key, payload, mode)
        if entry is not None:
            return CacheLookup(entry, "cache")
        pending = self._aflights.get(key)
        if pending is not None and pending.get_loop() is asyncio.get_running_loop():
            shared = await asyncio.shield(pending)
            self._count_shared()
            return CacheLookup(shared, "shared")
        future: asyncio.Future[CachedResponse] = asyncio.get_running_loop().create_future()
        self._aflights[key] = future
        try:
            lookup = await self._alead(key, payload, compute, mode)
            future.set_result(lookup.entry)
            return lookup
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody may be waiting
            raise
        finally:
            if self._aflights.get(key) is future:
                del self._aflights[key]

    # -- cross-process single-flight -----------------------------------------------------------

    def _count_shared(self) -> None:
        with self._lock:
            self._shared += 1

    @property
    def _lease_store(self) -> diskcache.Cache:
        with self._lock:
            if self._leases is None:
                self._leases = diskcache.Cache(
                    str(self.directory / "leases"), eviction_policy="none"
                )
            return self._leases

    def _acquire(self, key: str, token: str) -> bool:
        # `add` only writes when the key is absent or its lease expired: an atomic test-and-set.
        return bool(self._lease_store.add(key, token, expire=self.lease_s))

    def _renew(self, key: str, token: str) -> None:
        store = self._lease_store
        with store.transact():
            if store.get(key) == token:
                store.set(key, token, expire=self.lease_s)

    def _release(self, key: str, token: str) -> None:
        store = self._lease_store
        with store.transact():
            if store.get(key) == token:
                store.delete(key)

    def _answered_elsewhere(self, key: str, mode: CacheMode, since: datetime) -> CacheLookup | None:
        """The answer another process stored while we waited (for `refresh`: stored after
        `since`), counted as shared."""
        entry = self.get(key)
        if entry is None:
            return None
        if mode == "refresh":
            try:
                if datetime.fromisoformat(entry.created_at) < since:
                    return None
            except ValueError:
                return None
        self._count_shared()
        return CacheLookup(entry, "shared")

    def _lead(
        self,
        key: str,
        payload: Mapping[str, Any],
        compute: Callable[[], CachedResponse],
        mode: CacheMode,
    ) -> CacheLookup:
        if mode == "off":
            return CacheLookup(self._finish(key, payload, compute(), mode), "live")
        since, token, delay = datetime.now(UTC), uuid.uuid4().hex, POLL_S[0]
        while True:
            if self._acquire(key, token):
                stop = threading.Event()
                renewer = threading.Thread(
                    target=self._renew_until, args=(key, token, stop), daemon=True
                )
                renewer.start()
                try:
                    shared = self._answered_elsewhere(key, mode, since)
                    if shared is not None:
                        return shared
                    return CacheLookup(self._finish(key, payload, compute(), mode), "live")
                finally:
                    stop.set()
                    renewer.join()
                    self._release(key, token)
            shared = self._answered_elsewhere(key, mode, since)
            if shared is not None:
                return shared
            time.sleep(delay)
            delay = min(delay * 2, POLL_S[1])

    def _renew_until(self, key: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 3):
            self._renew(key, token)

    async def _alead(
        self,
        key: str,
        payload: Mapping[str, Any],
        compute: Callable[[], Awaitable[CachedResponse]],
        mode: CacheMode,
    ) -> CacheLookup:
        if mode == "off":
            return CacheLookup(self._finish(key, payload, await compute(), mode), "live")
        since, token, delay = datetime.now(UTC), uuid.uuid4().hex, POLL_S[0]
        while True:
            if self._acquire(key, token):
                renewer = asyncio.create_task(self._arenew_forever(key, token))
                try:
                    shared = self._answered_elsewhere(key, mode, since)
                    if shared is not None:
                        return shared
                    return CacheLookup(self._finish(key, payload, await compute(), mode), "live")
                finally:
                    renewer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renewer
                    self._release(key, token)
            shared = self._answered_elsewhere(key, mode, since)
            if shared is not None:
                return shared
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_S[1])

    async def _arenew_forever(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            self._renew(key, token)

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
