"""Cross-process single-flight: two runs (two processes) on one cache pay once per request."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness.llm.cache import CachedResponse, ResponseCache, cache_key
from harness.llm.client import ChatRequest
from tests.llm.scripted_server import ScriptedServer, first_enum_or_nothing

ROOT = Path(__file__).resolve().parents[2]

# A run in a child process: the same 12 decisions, prefetched concurrently, on a shared cache.
CHILD = """
import sys, time
from pathlib import Path
from harness.llm.cache import ResponseCache
from harness.policies.llm import LLMPolicy
from tests.llm.fixtures import decisions

url, cache_dir, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
items = decisions(12)
with ResponseCache(cache_dir) as cache:
    policy = LLMPolicy(model="gpt-4o-mini", base_url=url, api_key_env=None, cache=cache,
                       max_concurrency=4, initial_backoff_s=0.001, max_backoff_s=0.01)
    while not go.exists():  # both children start asking at the same moment
        time.sleep(0.005)
    summary = policy.prefetch(items, progress=False)
    print(summary.calls_made, summary.served_from_cache, flush=True)
    policy.close()
"""


def test_two_processes_on_one_cache_pay_once_per_request(tmp_path: Path) -> None:
    go = tmp_path / "go"
    with ScriptedServer(default=first_enum_or_nothing, latency_s=0.15) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, server.url, str(tmp_path / "cache"), str(go)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        time.sleep(0.5)
        go.touch()
        outputs = [child.communicate(timeout=120) for child in children]
        for child, (_, err) in zip(children, outputs, strict=True):
            assert child.returncode == 0, err
        # One HTTP request per distinct request, whichever process made it.
        assert server.request_count == 12
    calls, served = zip(*(map(int, out.split()) for out, _ in outputs), strict=True)
    assert sum(calls) == 12 and sum(served) == 12
    with ResponseCache(tmp_path / "cache") as cache:
        assert len(cache) == 12


def _payload(content: str = "q") -> dict:
    request = ChatRequest(model="m", messages=(("user", content),))
    return request.key_payload("http://127.0.0.1:1/v1")


def test_a_dead_owners_lease_expires(tmp_path: Path) -> None:
    with ResponseCache(tmp_path, lease_s=0.3) as cache:
        key = cache_key(_payload())
        # A process that took the lease and was killed: nobody renews or releases it.
        assert cache._acquire(key, "killed-process")
        started = time.perf_counter()
        lookup = cache.get_or_compute(_payload(), lambda: CachedResponse(text="late"))
        waited = time.perf_counter() - started
        assert lookup.source == "live" and lookup.entry.text == "late"
        assert 0.25 <= waited < 3.0
        # The lease is released after the answer is stored.
        assert cache._acquire(key, "next") and cache.get(key) is not None


def test_waiting_for_another_process_does_not_block_the_event_loop(tmp_path: Path) -> None:
    with ResponseCache(tmp_path, lease_s=5.0) as cache, ResponseCache(tmp_path) as other:
        key = cache_key(_payload())
        assert other._acquire(key, "other-process")
        ticks: list[float] = []

        async def ticker() -> None:
            for _ in range(10):
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.02)

        async def finish_elsewhere() -> None:
            await asyncio.sleep(0.15)
            other.put(
                CachedResponse(key=key, key_payload=_payload(), text="from the other process")
            )
            other._release(key, "other-process")

        async def never() -> CachedResponse:
            raise AssertionError("the waiter must not ask")

        async def main():
            lookup, *_ = await asyncio.gather(
                cache.aget_or_compute(_payload(), never), ticker(), finish_elsewhere()
            )
            return lookup

        lookup = asyncio.run(main())
        assert lookup.source == "shared" and lookup.entry.text == "from the other process"
        assert len(ticks) == 10 and max(b - a for a, b in itertools.pairwise(ticks)) < 0.15
        assert cache.stats().shared == 1


def test_owner_error_releases_the_lease_and_renewal_keeps_it(tmp_path: Path) -> None:
    with ResponseCache(tmp_path, lease_s=0.3) as cache:
        key = cache_key(_payload("slow"))

        def slow() -> CachedResponse:
            time.sleep(0.7)  # longer than the lease: the owner renews it meanwhile
            assert not cache._acquire(key, "intruder")
            return CachedResponse(text="slow")

        assert cache.get_or_compute(_payload("slow"), slow).source == "live"

        def boom() -> CachedResponse:
            raise RuntimeError("transport")

        failing = cache_key(_payload("boom"))
        with contextlib.suppress(RuntimeError):
            cache.get_or_compute(_payload("boom"), boom)
        assert cache._acquire(failing, "next")  # released at once, not left to expire


# Mutation pass 5 (docs/testing.md): lease renewal and refresh waits, survivors of the sample.


def test_async_owner_renews_its_lease_while_it_computes(tmp_path: Path) -> None:
    with ResponseCache(tmp_path, lease_s=1.0) as cache:
        key = cache_key(_payload("slow async"))

        async def slow() -> CachedResponse:
            await asyncio.sleep(2.2)  # over two leases: only renewal keeps intruders out
            assert not cache._acquire(key, "intruder")
            return CachedResponse(text="slow")

        lookup = asyncio.run(cache.aget_or_compute(_payload("slow async"), slow))
        assert lookup.source == "live" and lookup.entry.text == "slow"


def test_a_renewed_lease_still_expires_one_lease_later(tmp_path: Path) -> None:
    """A renewal moves the expiry one lease ahead, never removes it (an owner that dies after
    renewing must not hold the request forever)."""
    with ResponseCache(tmp_path, lease_s=30.0) as cache:
        key = cache_key(_payload("renewed"))
        assert cache._acquire(key, "owner")
        before = time.time()
        cache._renew(key, "owner")
        after = time.time()
        token, expires = cache._lease_store.get(key, expire_time=True)
        assert token == "owner" and expires is not None
        assert before + 30.0 <= expires <= after + 30.0
        assert not cache._acquire(key, "next")


def test_refresh_waits_for_an_answer_stored_after_it_started(tmp_path: Path) -> None:
    """An answer older than the refresh is not taken; the one the lease holder stores is."""
    from datetime import UTC, datetime, timedelta

    with ResponseCache(tmp_path, lease_s=5.0) as cache, ResponseCache(tmp_path) as other:
        key = cache_key(_payload())
        old = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        other.put(CachedResponse(key=key, key_payload=_payload(), text="old", created_at=old))
        assert other._acquire(key, "other-process")

        def finish_elsewhere() -> None:
            time.sleep(0.2)
            now = datetime.now(UTC).isoformat()
            other.put(CachedResponse(key=key, key_payload=_payload(), text="new", created_at=now))
            other._release(key, "other-process")

        def never() -> CachedResponse:
            raise AssertionError("the waiter must not ask")

        thread = threading.Thread(target=finish_elsewhere)
        thread.start()
        lookup = cache.get_or_compute(_payload(), never, mode="refresh")
        thread.join()
        assert lookup.source == "shared" and lookup.entry.text == "new"
