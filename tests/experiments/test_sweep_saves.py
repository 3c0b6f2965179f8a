"""sweep.json while trials finish: rewritten at most once a second, at once on a failure."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.experiments import sweep as sweep_module
from harness.experiments.sweep import run_sweep
from harness.experiments.sweep_backends import TrialOutcome, TrialTask, run_inline
from tests.experiments.sweep_fixtures import write_sweep


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_s: float
) -> tuple[list[dict[str, Any]], list[int]]:
    """Run the 4-trial sweep inline, the second trial run reported failed.

    Returns sweep.json at every write and the trial indices in the order they ran.
    """
    written: list[dict[str, Any]] = []
    order: list[int] = []
    write = sweep_module._write_json

    def recording(path: Path, data: dict[str, Any]) -> None:
        write(path, data)
        written.append(json.loads(path.read_text()))

    def failing_second(tasks: Iterable[TrialTask]) -> Iterator[TrialOutcome]:
        for outcome in run_inline(tasks):
            order.append(outcome.index)
            yield replace(outcome, status="failed", error="boom") if len(order) == 2 else outcome

    monkeypatch.setattr(sweep_module, "_write_json", recording)
    monkeypatch.setattr(sweep_module, "run_inline", failing_second)
    monkeypatch.setattr(sweep_module, "SAVE_EVERY_S", every_s)
    summary = run_sweep(write_sweep(tmp_path), workers=1, out_dir=tmp_path / "runs", quiet=True)
    assert (summary.n_complete, summary.n_failed) == (3, 1)
    return written, order


def _statuses(data: dict[str, Any]) -> list[str]:
    return [t["status"] for t in data["trials"]]


def _expected(order: list[int], n_done: int) -> list[str]:
    """Trial statuses (by index) after the first `n_done` trials of `order` finished."""
    out = ["pending"] * len(order)
    for k, index in enumerate(order[:n_done]):
        out[index] = "failed" if k == 1 else "complete"
    return out


def test_sweep_json_is_written_on_the_first_trial_a_failure_and_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written, order = _run(tmp_path, monkeypatch, every_s=1e9)
    assert sorted(order) == [0, 1, 2, 3]
    assert [_statuses(d) for d in written] == [
        _expected(order, 0),  # before any trial runs
        _expected(order, 1),  # the first trial: never a second late
        _expected(order, 2),  # a failure is written at once
        _expected(order, 4),  # the end: every trial's outcome
    ]
    assert [d["status"] for d in written] == ["running"] * 3 + ["complete_with_failures"]
    final = written[-1]["trials"]
    assert all(t["cpu_s"] is not None and t["elapsed_s"] is not None for t in final)
    assert final[order[1]]["error"] == "boom"


def test_without_a_throttle_every_trial_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written, order = _run(tmp_path, monkeypatch, every_s=0.0)
    assert [_statuses(d) for d in written] == [
        *(_expected(order, n) for n in range(5)),
        _expected(order, 4),
    ]
