"""A sweep whose LLM policy runs with `execution: batch`: the driver's prefetch goes by batch.

Against the local Files/Batch server: no chat completion is made, each distinct request is
submitted once across all trials, and the trials decide exactly as a live sweep does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.experiments.sweep import run_sweep
from tests.experiments.batch_fixtures import KEY_ENV, SECRET, choices, config, pick
from tests.experiments.run_health_fixtures import assert_secret_nowhere
from tests.experiments.sweep_fixtures import trial_errors, write_sweep
from tests.llm.batch_server import BatchServer

AXES = {
    "policies.llm.prompt": ["covered_call_v1", "covered_call_v2"],
    "reward.drawdown_penalty": [0.0, 0.5],
}


def _sweep(tmp: Path, url: str, execution: str) -> dict[int, Path]:
    """Run the 2 prompts x 2 penalties sweep on two workers; trial folders by index."""
    folder = tmp / execution
    folder.mkdir()
    base = config(folder, url, start="2024-02-01", end="2024-02-20", execution=execution)
    path = write_sweep(
        folder, {"name": f"{execution}-grid", "base": "base.yaml", "axes": AXES}, base
    )
    summary = run_sweep(path, workers=2, out_dir=folder / "runs", quiet=True)
    assert summary.n_complete == 4, trial_errors(summary.sweep_dir)
    data: dict[str, Any] = json.loads((summary.sweep_dir / "sweep.json").read_text())
    return {t["index"]: summary.sweep_dir / "trials" / t["trial_id"] for t in data["trials"]}


def test_batch_sweep_submits_each_request_once_and_decides_as_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with BatchServer(pick) as server:
        live = _sweep(tmp_path, server.url, "live")
        live_calls = server.chat_calls
        assert live_calls > 0 and server.created == 0

        batch = _sweep(tmp_path, server.url, "batch")
        assert server.chat_calls == live_calls  # the batch sweep made no chat completion
        assert server.created >= 1
        # two prompts: every distinct request went out once, whatever the penalty axis
        assert max(server.submitted.values()) == 1
        assert len(server.submitted) == live_calls

    for i, trial in batch.items():
        assert choices(trial) == choices(live[i]), i
    sweep_dir = next(iter(batch.values())).parents[1]
    prefetch = json.loads((sweep_dir / "sweep.json").read_text())["llm_prefetch"]
    assert prefetch["batch_submitted"] == live_calls
    assert prefetch["replayed_in_workers"] == 4
    assert assert_secret_nowhere([tmp_path], SECRET) > 0
