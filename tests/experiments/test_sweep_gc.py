"""Sweep workers run each trial with the cyclic GC off and collect after it (the youngest
generation, all of every tenth trial); the driver's collector is left alone."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from harness.experiments import sweep_backends
from harness.experiments.sweep_backends import TrialTask, run_trial

TASK = TrialTask(index=0, trial_dir="unused", config_json="unused", html_report=False)


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Replace the trial itself: note whether automatic GC was on, and full collections."""
    seen: dict[str, list[Any]] = {"enabled": [], "collected": []}

    def fake(task: TrialTask, market: Any) -> tuple[str, str | None, None]:
        seen["enabled"].append(gc.isenabled())
        return "complete", None, None

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            seen["collected"].append(info["generation"])

    monkeypatch.setattr(sweep_backends, "_run_trial", fake)
    gc.callbacks.append(on_gc)
    yield seen
    gc.callbacks.remove(on_gc)


def test_a_worker_trial_runs_without_automatic_gc_then_collects(
    monkeypatch: pytest.MonkeyPatch, record: dict[str, list[Any]]
) -> None:
    monkeypatch.setattr(sweep_backends, "_WORKER", True)
    monkeypatch.setattr(sweep_backends, "_TRIALS_SINCE_FULL_GC", 0)
    assert gc.isenabled()
    outcome = run_trial(TASK)
    assert outcome.status == "complete" and outcome.cpu_s >= 0
    assert record["enabled"] == [False]  # off during the trial
    assert gc.isenabled() and record["collected"] == [0]  # on again, the trial's objects swept
    for _ in range(sweep_backends.FULL_GC_EVERY - 1):
        run_trial(TASK)
    assert record["enabled"] == [False] * sweep_backends.FULL_GC_EVERY
    assert record["collected"] == [0] * (sweep_backends.FULL_GC_EVERY - 1) + [2]


def test_the_driver_keeps_its_collector(record: dict[str, list[Any]]) -> None:
    assert not sweep_backends._WORKER  # this test process is no sweep worker
    freeze = gc.get_freeze_count()
    run_trial(TASK)
    assert record["enabled"] == [True] and gc.isenabled()
    assert gc.get_freeze_count() == freeze
