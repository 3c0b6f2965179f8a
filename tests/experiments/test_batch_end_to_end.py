"""Issue 12's done-when: a one-year run in batch mode against the local batch server completes,
costs half of the live run, and resumes after a kill without resubmitting anything."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.experiments.config import parse_config
from harness.experiments.runner import run_experiment
from tests.experiments.batch_fixtures import (
    KEY_ENV,
    SECRET,
    choices,
    config,
    manifest,
    metrics,
    pick,
    transcripts,
)
from tests.llm.batch_server import BatchServer

ROOT = Path(__file__).resolve().parents[2]
# Weekly decisions on Thursdays (weekly calls expire on Fridays: 8 days to expiry).
YEAR = {"start": "2024-02-01", "end": "2025-02-01", "timeframe": "1h", "interval": 168}


def _recorded_batch(runs: Path) -> Path | None:
    """The run folder whose batches.json already names a created batch."""
    for ledger in runs.glob("*/batches.json"):
        try:
            entries = json.loads(ledger.read_text())["entries"]
        except (ValueError, KeyError):
            continue
        if any(e.get("batch_id") for e in entries):
            return ledger.parent
    return None


def test_one_year_batch_run_costs_half_and_resumes_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with BatchServer(pick) as server:
        live = run_experiment(
            parse_config(config(tmp_path, server.url, name="year", cache="live", **YEAR)),
            out_dir=tmp_path / "live-runs",
            quiet=True,
        )
        live_calls = server.chat_calls
        rows = [
            json.loads(x) for x in (live.run_dir / "decisions.jsonl").read_text().split("\n") if x
        ]
        asked = sum(1 for r in rows if r["policy"] == "llm" and r["candidates"])
        assert live_calls > 40  # about one decision a week for a year

        data = config(tmp_path, server.url, name="year", cache="batch", **YEAR)
        path = tmp_path / "year.yaml"
        path.write_text(yaml.safe_dump(data))
        runs = tmp_path / "runs"
        server.hold = True  # the batch stays in progress until the process is killed
        env = {**os.environ, "PYTHONPATH": str(ROOT), KEY_ENV: SECRET}
        log = (tmp_path / "killed.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(runs), "--batch"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            run_dir = None
            while run_dir is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
                run_dir = _recorded_batch(runs)
            assert run_dir is not None, (tmp_path / "killed.log").read_text()
            time.sleep(0.3)  # a few polls of the held batch
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            log.close()
        text = (tmp_path / "killed.log").read_text()
        assert "resume with: harness run" in text and "--batch" in text
        assert server.created == 1
        submitted = dict(server.submitted)
        assert server.calls["GET /v1/batches/{id}"] >= 1

        server.hold = False
        resumed = run_experiment(
            parse_config(data), out_dir=runs, resume=run_dir, quiet=True, batch=True
        )
        assert resumed.status == "complete"
        assert server.created == 1  # polled the batch of the killed process, created none
        assert dict(server.submitted) == submitted
        assert max(server.submitted.values()) == 1  # no custom_id was submitted twice
        assert server.chat_calls == live_calls  # not one chat completion by the batch run
        assert choices(resumed.run_dir) == choices(live.run_dir)
        live_cost = metrics(live.run_dir)["llm"]["cost_usd"]
        assert live_cost > 0
        assert math.isclose(metrics(resumed.run_dir)["llm"]["cost_usd"], live_cost / 2)
        assert manifest(resumed.run_dir)["policy_status"]["llm"]["status"] == "ok"
        recs = [r for r in transcripts(resumed.run_dir) if r["policy"] == "llm"]
        assert {r["execution"] for r in recs} == {"batch"} and len(recs) == asked
        report = (resumed.run_dir / "report.md").read_text()
        assert "at live prices" in report
