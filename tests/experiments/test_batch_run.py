"""Batch mode of `harness run` against the local Files/Batch server (tests/llm/batch_server.py).

Each test runs a short synthetic period; the one-year end-to-end run with a kill is in
test_batch_end_to_end.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.experiments.config import parse_config
from harness.experiments.replay import replay_run
from harness.experiments.runner import run_experiment
from harness.llm.cache import ResponseCache
from tests.experiments.batch_fixtures import (
    KEY_ENV,
    SECRET,
    choices,
    config,
    digest,
    manifest,
    metrics,
    pick,
    transcripts,
)
from tests.experiments.run_health_fixtures import assert_secret_nowhere
from tests.llm.batch_server import BatchServer, ChatError, Outcome, completion


@pytest.fixture
def server() -> Iterator[BatchServer]:
    with BatchServer(pick) as srv:
        yield srv


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def _run(tmp: Path, data: dict[str, Any], **kw: Any):
    return run_experiment(parse_config(data), out_dir=tmp / "runs", quiet=True, **kw)


def _asked(run_dir: Path) -> int:
    rows = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    return sum(1 for r in rows if r["policy"] == "llm" and r["candidates"])


def test_batch_run_equals_live_run_then_is_fully_cached(tmp_path: Path, server: BatchServer):
    live = _run(tmp_path, config(tmp_path, server.url, cache="live-cache"))
    live_calls = server.chat_calls
    assert live_calls == _asked(live.run_dir) > 5

    batch = _run(tmp_path, config(tmp_path, server.url, cache="batch-cache"), batch=True)
    assert server.chat_calls == live_calls  # not one chat completion in batch mode
    assert server.created >= 1
    assert choices(batch.run_dir) == choices(live.run_dir)
    recs = [r for r in transcripts(batch.run_dir) if r["policy"] == "llm"]
    assert recs and {r["execution"] for r in recs} == {"batch"}
    assert not any(r["from_cache"] for r in recs)
    assert (batch.run_dir / "batches.json").is_file()
    assert manifest(batch.run_dir)["batches"]["llm"]["batch_ids"]
    # Half price: batch_discount 0.5 of gpt-4o-mini, same tokens as the live answers.
    live_cost = metrics(live.run_dir)["llm"]["cost_usd"]
    batch_cost = metrics(batch.run_dir)["llm"]["cost_usd"]
    assert live_cost > 0
    assert math.isclose(batch_cost, live_cost / 2, rel_tol=1e-9)
    assert math.isclose(metrics(batch.run_dir)["llm"]["cost_usd_batch"], batch_cost)
    assert metrics(batch.run_dir)["llm"]["cost_usd_live"] == 0
    usage = manifest(batch.run_dir)["llm_usage"]["llm"]
    assert math.isclose(usage["cost_usd_batch_at_live_prices"], live_cost, rel_tol=1e-9)
    report = (batch.run_dir / "report.md").read_text()
    assert "at live prices" in report  # the live vs batch split of the cost

    # The run folder is its own evidence: a replay from its transcripts is identical.
    replayed = replay_run(batch.run_dir, out_dir=tmp_path / "replays", quiet=True)
    assert replayed.reproduced

    before = sum(server.calls.values())
    again = _run(tmp_path, config(tmp_path, server.url, cache="batch-cache"), batch=True)
    assert sum(server.calls.values()) == before  # fully cached: no call of any kind
    assert choices(again.run_dir) == choices(live.run_dir)
    assert metrics(again.run_dir)["llm"]["cost_usd"] == 0
    assert_secret_nowhere([tmp_path], SECRET)


def test_large_prefetch_is_split_at_the_configured_limit(tmp_path: Path, server: BatchServer):
    data = config(tmp_path, server.url, batch={"max_requests": 4})
    done = _run(tmp_path, data, batch=True)
    n = _asked(done.run_dir)
    assert server.created == math.ceil(n / 4)
    sizes = [len(server.file_text(u["id"]).splitlines()) for u in server.uploads]
    assert max(sizes) <= 4 and sum(sizes) == n
    assert server.chat_calls == 0
    assert max(server.submitted.values()) == 1


def test_split_by_bytes(tmp_path: Path, server: BatchServer):
    one = None
    data = config(tmp_path, server.url, batch={"max_bytes": "12KB"})
    done = _run(tmp_path, data, batch=True)
    for u in server.uploads:
        one = u["bytes"]
        assert one <= 12 * 1024
    assert server.created >= 2
    assert sum(len(server.file_text(u["id"]).splitlines()) for u in server.uploads) == _asked(
        done.run_dir
    )


def test_leftovers_live_asks_missing_items_live(tmp_path: Path, server: BatchServer):
    server.script(Outcome("expired", answered=3))
    done = _run(tmp_path, config(tmp_path, server.url, batch={"leftovers": "live"}), batch=True)
    n = _asked(done.run_dir)
    assert server.chat_calls == n - 3
    recs = [r for r in transcripts(done.run_dir) if r["policy"] == "llm"]
    assert sum(r["execution"] == "batch" for r in recs) == 3
    assert sum(r["execution"] == "live" for r in recs) == n - 3
    assert manifest(done.run_dir)["policy_status"]["llm"]["status"] == "ok"
    usage = manifest(done.run_dir)["llm_usage"]["llm"]
    assert usage["batch_leftovers_live"] == n - 3
    assert usage["cost_usd_live"] > 0 and usage["cost_usd_batch"] > 0


def test_leftovers_resubmit_sends_a_second_batch(tmp_path: Path, server: BatchServer):
    server.script(Outcome("expired", answered=3))
    data = config(tmp_path, server.url, batch={"leftovers": "resubmit"})
    done = _run(tmp_path, data, batch=True)
    n = _asked(done.run_dir)
    assert server.created == 2
    assert server.chat_calls == 0
    assert sum(server.submitted.values()) == n + (n - 3)  # only the missing ones went twice
    assert all(r["error"] is None for r in _llm_rows(done.run_dir))


def _llm_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    return [r for r in rows if r["policy"] == "llm" and r["candidates"]]


def test_leftovers_error_records_failed_items_and_never_caches_them(
    tmp_path: Path, server: BatchServer
):
    def some_fail(body: dict[str, Any]) -> dict[str, Any] | ChatError:
        if digest(body) % 5 == 0:
            return ChatError(500, "The server had an error while processing your request")
        return pick(body)

    server.answer = some_fail
    data = config(tmp_path, server.url, batch={"leftovers": "error"}, max_error_rate=1.0)
    done = _run(tmp_path, data, batch=True)
    rows = _llm_rows(done.run_dir)
    failed = [r for r in rows if r["error"] is not None]
    assert failed and len(failed) < len(rows)
    assert all("500" in r["error"] or "server" in r["error"].lower() for r in failed)
    assert server.chat_calls == 0
    recs = [r for r in transcripts(done.run_dir) if r["policy"] == "llm" and r["error"]]
    assert recs and all(r["execution"] == "batch" and r["error_kind"] == "server" for r in recs)
    with ResponseCache(tmp_path / "cache") as cache:
        assert all(r["cache_key"] not in cache for r in recs)


def test_every_item_rejected_skips_the_policy(tmp_path: Path, server: BatchServer):
    server.answer = lambda body: ChatError(404, "The model `gpt-4o-mini` does not exist")
    done = _run(tmp_path, config(tmp_path, server.url), batch=True)
    assert "llm" in done.skipped
    assert "first batch" in done.skipped["llm"]
    assert server.chat_calls == 0


def test_retry_round_is_a_second_batch(tmp_path: Path, server: BatchServer):
    def invalid_first(body: dict[str, Any]) -> dict[str, Any]:
        if len(body["messages"]) == 2 and digest(body) % 2 == 0:
            return completion("I would rather not say", usage=(1000, 10, 0))
        return pick(body)

    server.answer = invalid_first
    data = config(tmp_path, server.url, on_invalid="retry")
    done = _run(tmp_path, data, batch=True)
    assert server.created == 2
    assert server.chat_calls == 0
    recs = [r for r in transcripts(done.run_dir) if r["policy"] == "llm"]
    assert any(r["attempt"] == 1 for r in recs)
    assert all(r["execution"] == "batch" for r in recs)
    assert all(r["valid"] for r in _llm_rows(done.run_dir))


def test_samples_missing_from_an_n_request_go_in_the_next_round(
    tmp_path: Path, server: BatchServer
):
    # The scripted server returns one choice for `n`: the other samples are asked one by one.
    data = config(tmp_path, server.url, samples=3, temperature=0.7)
    done = _run(tmp_path, data, batch=True)
    assert server.created == 2
    assert server.chat_calls == 0
    recs = [r for r in transcripts(done.run_dir) if r["policy"] == "llm"]
    assert {r["sample"] for r in recs} == {0, 1, 2}


def test_hold_to_expiry_false_asks_position_dependent_decisions_live(
    tmp_path: Path, server: BatchServer, capsys: pytest.CaptureFixture[str]
):
    data = config(tmp_path, server.url, hold_to_expiry=False)
    done = run_experiment(parse_config(data), out_dir=tmp_path / "runs", batch=True)
    recs = [r for r in transcripts(done.run_dir) if r["policy"] == "llm"]
    assert any(r["execution"] == "batch" for r in recs)
    live = [r for r in recs if r["execution"] == "live"]
    assert live and server.chat_calls == len(live)
    assert "asked live during the portfolio replay" in capsys.readouterr().err


def test_spend_cap_holds_batch_prices_and_stops_cleanly(tmp_path: Path, server: BatchServer):
    # gpt-4o-mini at batch prices: worst case ~ (prompt + 400 answer tokens) per request.
    data = config(tmp_path, server.url, cache="capped")
    first = _run(tmp_path, data, batch=True, max_cost_usd=0.0006)
    assert first.status == "stopped"
    assert "--batch" in (first.resume_hint or "")
    submitted = sum(server.submitted.values())
    n = _asked(first.run_dir) if (first.run_dir / "decisions.jsonl").exists() else 0
    assert 0 < submitted
    resumed = _run(tmp_path, data, batch=True, resume=first.run_dir, max_cost_usd=10.0)
    assert resumed.status == "complete"
    assert max(server.submitted.values()) == 1  # nothing went twice
    assert server.chat_calls == 0
    assert _asked(resumed.run_dir) >= n


def test_leftovers_resubmit_resends_items_that_came_back_failed(
    tmp_path: Path, server: BatchServer
):
    seen: set[int] = set()

    def fail_once(body: dict[str, Any]) -> dict[str, Any] | ChatError:
        h = digest(body)
        if h % 4 == 0 and h not in seen:
            seen.add(h)
            return ChatError(500, "The server had an error while processing your request")
        return pick(body)

    server.answer = fail_once
    data = config(tmp_path, server.url, batch={"leftovers": "resubmit"})
    done = _run(tmp_path, data, batch=True)
    assert seen and server.created == 2
    assert sum(v == 2 for v in server.submitted.values()) == len(seen)
    assert server.chat_calls == 0
    assert all(r["error"] is None for r in _llm_rows(done.run_dir))


def test_resubmits_are_bounded_then_errors(tmp_path: Path, server: BatchServer):
    server.answer = lambda body: (
        ChatError(500, "server error") if digest(body) % 4 == 0 else pick(body)
    )
    data = config(
        tmp_path,
        server.url,
        batch={"leftovers": "resubmit", "max_resubmits": 1},
        max_error_rate=1.0,
    )
    done = _run(tmp_path, data, batch=True)
    assert server.created == 2 and max(server.submitted.values()) == 2
    failed = [r for r in _llm_rows(done.run_dir) if r["error"] is not None]
    assert failed and server.chat_calls == 0


def test_batches_still_running_stop_the_run_for_resume(tmp_path: Path, server: BatchServer):
    server.hold = True  # the provider never finishes within max_wait_s
    data = config(tmp_path, server.url, batch={"poll": {"initial_s": 0.01, "max_wait_s": 0.2}})
    first = _run(tmp_path, data, batch=True)
    assert first.status == "stopped"
    assert "--resume" in (first.resume_hint or "") and "--batch" in (first.resume_hint or "")
    assert server.chat_calls == 0 and server.created == 1
    assert not _llm_rows(first.run_dir)  # nothing decided, nothing asked another way
    server.hold = False
    done = _run(tmp_path, data, batch=True, resume=first.run_dir)
    assert done.status == "complete"
    assert server.created == 1 and max(server.submitted.values()) == 1
    assert server.chat_calls == 0
    assert _llm_rows(done.run_dir)
