from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from harness.llm.cache import (
    CachedResponse,
    CacheMissError,
    ResponseCache,
    cache_key,
    canonical_json,
)
from harness.llm.client import ChatRequest
from harness.llm.cost import Usage


def _payload(model: str = "gpt-4o-mini", content: str = "hello", **extra: object) -> dict:
    request = ChatRequest(model=model, messages=(("user", content),), max_tokens=50)
    return {**request.key_payload("http://127.0.0.1:1/v1"), **extra}


def _answer(text: str = '{"action": "DO_NOTHING"}', cost: float = 0.25) -> CachedResponse:
    return CachedResponse(text=text, usage=Usage(100, 10, 0), cost_usd=cost, latency_s=0.5)


def test_key_is_canonical_and_covers_what_changes_the_output() -> None:
    base = _payload()
    assert cache_key(base) == cache_key(dict(reversed(list(base.items()))))
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    variants = [
        {**base, "model": "gpt-4o"},
        {**base, "base_url": "http://other/v1"},
        {**base, "messages": [{"role": "user", "content": "hello!"}]},
        {**base, "temperature": 0.5},
        {**base, "top_p": 0.9},
        {**base, "seed": 7},
        {**base, "max_tokens": 51},
        {**base, "response_format": {"type": "json_object"}},
        {**base, "sample_index": 1},
        {**base, "attempt": 1},
        {**base, "n": 3},
        {**base, "reasoning_effort": "low"},
        {**base, "extra_body": {"provider": {"order": ["a"]}}},
        {**base, "extra_query": {"api-version": "2024-10-21"}},
        {**base, "extra_header_names": ["X-Title"]},
    ]
    keys = {cache_key(v) for v in variants}
    assert len(keys) == len(variants) and cache_key(base) not in keys
    # Nothing about credentials, timeouts or concurrency is part of the payload, and fields at
    # their default are left out (keys written before they existed stay valid).
    assert not {"api_key", "timeout", "max_concurrency"} & set(base)
    assert not {"attempt", "n", "reasoning_effort", "extra_body"} & set(base)
    request = ChatRequest(model="m", messages=(("user", "x"),), attempt=1, n=2)
    assert {"attempt": 1, "n": 2}.items() <= request.key_payload("u").items()


def test_roundtrip_stores_readable_payload_usage_and_latency(tmp_path: Path) -> None:
    with ResponseCache(tmp_path) as cache:
        lookup = cache.get_or_compute(_payload(), _answer)
        assert lookup.source == "live" and not lookup.hit
        again = cache.get_or_compute(_payload(), lambda: pytest.fail("must not compute"))
        assert again.source == "cache" and again.hit
        entry = again.entry
        assert entry.key == cache_key(_payload())
        assert entry.key_payload["messages"] == [{"role": "user", "content": "hello"}]
        assert (
            entry.usage == Usage(100, 10, 0) and entry.latency_s == 0.5 and entry.cost_usd == 0.25
        )
        assert entry.created_at
    # The value is readable JSON in the sqlite file, next to its payload.
    rows = sqlite3.connect(tmp_path / "cache.db").execute("SELECT value FROM Cache").fetchall()
    stored = json.loads(rows[0][0])
    assert stored["key_payload"]["model"] == "gpt-4o-mini" and stored["text"]


def test_store_survives_reopening_and_never_evicts(tmp_path: Path) -> None:
    with ResponseCache(tmp_path) as cache:
        cache.get_or_compute(_payload(), _answer)
        assert cache._store.eviction_policy == "none"
    with ResponseCache(tmp_path, mode="read_only") as cache:
        assert cache.get_or_compute(_payload(), _answer).source == "cache"


def test_empty_refused_and_truncated_answers_are_stored(tmp_path: Path) -> None:
    # What the provider said is cached, whatever it was: a replay must not pay for it again.
    empty = CachedResponse(text="", content_null=True, finish_reason="length", reasoning="hmm")
    refused = CachedResponse(text="", refusal="I can't help with that.", finish_reason="stop")
    with ResponseCache(tmp_path) as cache:
        for i, entry in enumerate((empty, refused, _answer(text="  "))):
            assert (
                cache.get_or_compute(_payload(content=f"q{i}"), lambda e=entry: e).source == "live"
            )
        assert len(cache) == 3
        stored = cache.get_or_compute(_payload(content="q0"), lambda: pytest.fail("cached"))
        assert stored.hit and stored.entry.content is None
        assert stored.entry.finish_reason == "length" and stored.entry.reasoning == "hmm"
        again = cache.get_or_compute(_payload(content="q1"), lambda: pytest.fail("cached"))
        assert again.entry.refusal == "I can't help with that." and again.entry.content == ""


def test_failed_computations_are_not_stored(tmp_path: Path) -> None:
    def boom() -> CachedResponse:
        raise RuntimeError("transport")

    with ResponseCache(tmp_path) as cache:
        with pytest.raises(RuntimeError):
            cache.get_or_compute(_payload(), boom)
        assert len(cache) == 0


def test_modes(tmp_path: Path) -> None:
    calls = []

    def compute(text: str) -> CachedResponse:
        calls.append(text)
        return _answer(text=text)

    with ResponseCache(tmp_path) as cache:
        with pytest.raises(CacheMissError, match="read_only"):
            cache.get_or_compute(_payload(), lambda: compute("x"), mode="read_only")
        assert cache.get_or_compute(_payload(), lambda: compute("first")).entry.text == "first"
        assert cache.get_or_compute(_payload(), lambda: compute("no")).entry.text == "first"
        refreshed = cache.get_or_compute(_payload(), lambda: compute("second"), mode="refresh")
        assert refreshed.source == "live" and refreshed.entry.text == "second"
        assert (
            cache.get_or_compute(_payload(), lambda: compute("no"), mode="read_only").entry.text
            == "second"
        )
        off = cache.get_or_compute(_payload(), lambda: compute("third"), mode="off")
        assert off.source == "live" and off.entry.text == "third"
        assert cache.get(cache_key(_payload())).text == "second"  # off wrote nothing
        assert calls == ["first", "second", "third"]
        with pytest.raises(ValueError, match="cache mode"):
            cache.get_or_compute(_payload(), _answer, mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache mode"):
        ResponseCache(tmp_path, mode="nope")  # type: ignore[arg-type]


def test_concurrent_identical_requests_collapse_into_one_call(tmp_path: Path) -> None:
    calls = []
    barrier = threading.Barrier(20)

    def slow() -> CachedResponse:
        calls.append(1)
        time.sleep(0.2)
        return _answer()

    results = []

    def worker() -> None:
        barrier.wait()
        results.append(cache.get_or_compute(_payload(), slow, mode="refresh"))

    with ResponseCache(tmp_path) as cache:
        threads = [threading.Thread(target=worker) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1
        assert sorted(r.source for r in results) == ["live"] + ["shared"] * 19
        assert cache.stats().shared == 19


def test_async_identical_requests_collapse_and_errors_propagate(tmp_path: Path) -> None:
    calls = []

    async def slow() -> CachedResponse:
        calls.append(1)
        await asyncio.sleep(0.05)
        return _answer()

    async def failing() -> CachedResponse:
        calls.append(1)
        await asyncio.sleep(0.05)
        raise RuntimeError("down")

    async def main(cache: ResponseCache) -> None:
        lookups = await asyncio.gather(
            *(cache.aget_or_compute(_payload(), slow) for _ in range(50))
        )
        assert sorted(lk.source for lk in lookups) == ["live"] + ["shared"] * 49
        (live,) = [lk.entry for lk in lookups if lk.source == "live"]
        assert live.text == _answer().text and live.usage == _answer().usage
        assert all(lk.entry == live for lk in lookups)  # followers get the leader's answer
        assert len(calls) == 1
        other = _payload(content="other")
        outcomes = await asyncio.gather(
            *(cache.aget_or_compute(other, failing) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        assert len(calls) == 2

    with ResponseCache(tmp_path) as cache:
        asyncio.run(main(cache))
        assert cache.get(cache_key(_payload(content="other"))) is None


def test_stats_and_clear_by_model(tmp_path: Path) -> None:
    with ResponseCache(tmp_path) as cache:
        for i in range(3):
            cache.get_or_compute(_payload("gpt-4o-mini", f"m{i}"), _answer)
        for i in range(2):
            cache.get_or_compute(_payload("llama3", f"l{i}"), _answer)
        cache.get_or_compute(_payload("llama3", "l0"), _answer)
        stats = cache.stats()
        assert stats.entries == 5 and stats.by_model == {"gpt-4o-mini": 3, "llama3": 2}
        assert stats.hits == 1 and stats.misses == 5 and stats.writes == 5
        assert stats.size_bytes > 0 and stats.as_dict()["entries"] == 5
        assert cache.clear(model="llama3") == 2
        assert cache.stats().by_model == {"gpt-4o-mini": 3}
        assert cache.clear() == 3 and len(cache) == 0


def test_the_cache_does_not_import_the_openai_sdk() -> None:
    # `harness cache stats/clear` stay fast: only the client needs the SDK.
    import subprocess
    import sys

    code = "import sys, harness.llm.cache; print('openai' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "False"


# Mutation pass 5 (docs/testing.md): survivors of the seeded sample in cache.py.


def test_an_entry_keeps_the_raw_body_and_every_choices_refusal(tmp_path: Path) -> None:
    from harness.llm.client import ChatChoice, ChatResponse

    raw = {"id": "chatcmpl-1", "choices": [{"message": {"refusal": "no"}}]}
    response = ChatResponse(
        choices=(ChatChoice(None, None, "stop", "no"), ChatChoice("{}", None, "stop", None)),
        usage=Usage(10, 2, 0),
        latency_s=0.1,
        attempts=1,
        schema_fallback=False,
        raw=raw,
    )
    entry = CachedResponse.from_response(response)
    assert entry.response == raw
    assert entry.n_choices == 2
    assert entry.choice(0).refusal == "no" and entry.choice(0).content is None
    assert entry.choice(1).content == "{}" and entry.choice(1).refusal is None


def test_repr_and_stats_name_the_cache_directory(tmp_path: Path) -> None:
    with ResponseCache(tmp_path, mode="read_only") as cache:
        assert repr(cache) == f"ResponseCache({str(tmp_path)!r}, mode='read_only')"
        assert cache.stats().directory == str(tmp_path)


def test_async_mode_off_asks_live_and_stores_nothing(tmp_path: Path) -> None:
    async def compute() -> CachedResponse:
        return _answer(text="live")

    with ResponseCache(tmp_path) as cache:
        lookup = asyncio.run(cache.aget_or_compute(_payload(), compute, mode="off"))
        assert lookup.source == "live" and not lookup.hit and lookup.entry.text == "live"
        assert len(cache) == 0


def test_each_choice_keeps_its_own_finish_reason() -> None:
    """A truncated sample among n answers stays truncated when read back from the cache."""
    from harness.llm.client import ChatChoice, ChatResponse

    response = ChatResponse(
        choices=(ChatChoice("{}", None, "stop", None), ChatChoice('{"a', None, "length", None)),
        usage=Usage(10, 2, 0),
        latency_s=0.1,
        attempts=1,
        schema_fallback=False,
    )
    entry = CachedResponse.from_response(response)
    assert [entry.choice(i).finish_reason for i in range(2)] == ["stop", "length"]


def test_each_choice_keeps_its_own_content_reasoning_and_refusal() -> None:
    """Every field of each of n samples reads back from the cache as it was received."""
    from harness.llm.client import ChatChoice, ChatResponse

    sent = (
        ChatChoice('{"action": "DO_NOTHING"}', "spot is flat", "stop", None),
        ChatChoice(None, "thinking about it", "stop", "I cannot help with trading"),
    )
    response = ChatResponse(
        choices=sent, usage=Usage(10, 2, 0), latency_s=0.1, attempts=1, schema_fallback=False
    )
    entry = CachedResponse.from_response(response)
    assert [entry.choice(i) for i in range(2)] == list(sent)


def test_async_lookups_read_refresh_and_refuse_like_the_sync_ones(tmp_path: Path) -> None:
    """The async path honours the cache mode: a stored answer is read, never asked again."""
    calls = []

    def compute(text: str):
        async def run() -> CachedResponse:
            calls.append(text)
            return _answer(text=text)

        return run

    async def main(cache: ResponseCache) -> None:
        with pytest.raises(CacheMissError, match="read_only"):
            await cache.aget_or_compute(_payload(), compute("x"), mode="read_only")
        first = await cache.aget_or_compute(_payload(), compute("first"))
        assert first.source == "live" and first.entry.text == "first"
        again = await cache.aget_or_compute(_payload(), compute("no"))
        assert again.source == "cache" and again.hit and again.entry.text == "first"
        fresh = await cache.aget_or_compute(_payload(), compute("second"), mode="refresh")
        assert fresh.source == "live" and fresh.entry.text == "second"
        stored = await cache.aget_or_compute(_payload(), compute("no"), mode="read_only")
        assert stored.source == "cache" and stored.entry.text == "second"

    with ResponseCache(tmp_path) as cache:
        asyncio.run(main(cache))
        assert calls == ["first", "second"]
        assert cache.stats().hits == 2
