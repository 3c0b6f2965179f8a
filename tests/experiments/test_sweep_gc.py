"""Sweep workers run with the automatic cyclic GC off and collect fully after every tenth
trial; the driver's collector is left alone."""

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


def test_a_worker_collects_fully_every_tenth_trial_only(
    monkeypatch: pytest.MonkeyPatch, record: dict[str, list[Any]]
) -> None:
    monkeypatch.setattr(sweep_backends, "_WORKER", True)
    monkeypatch.setattr(sweep_backends, "_TRIALS_SINCE_FULL_GC", 0)
    assert gc.isenabled()
    try:
        outcome = run_trial(TASK)
        assert outcome.status == "complete" and outcome.cpu_s >= 0
        assert record["enabled"] == [False]  # off during the trial
        assert not gc.isenabled() and record["collected"] == []  # and after it: no pass yet
        for _ in range(sweep_backends.FULL_GC_EVERY - 1):
            run_trial(TASK)
        assert record["enabled"] == [False] * sweep_backends.FULL_GC_EVERY
        assert record["collected"] == [2]  # one full collection, after the tenth trial
        run_trial(TASK)
        assert record["collected"] == [2]
    finally:
        gc.enable()


def test_settling_a_worker_freezes_its_objects_and_turns_the_collector_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweep_backends, "_WORKER", False)
    assert gc.isenabled()
    try:
        sweep_backends._settle_worker()
        assert sweep_backends._WORKER and not gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_driver_keeps_its_collector(record: dict[str, list[Any]]) -> None:
    assert not sweep_backends._WORKER  # this test process is no sweep worker
    freeze = gc.get_freeze_count()
    run_trial(TASK)
    assert record["enabled"] == [True] and gc.isenabled()
    assert gc.get_freeze_count() == freeze
