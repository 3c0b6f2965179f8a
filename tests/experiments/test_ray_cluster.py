"""Ray for sweeps: started early by `harness sweep --backend ray`, workers warmed, shut down by
the sweep that started it and never when the caller started Ray itself."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from harness.experiments import ray_cluster, sweep
from harness.experiments.sweep import run_sweep
from harness.experiments.sweep_pool import PRELOAD
from tests.experiments.sweep_fixtures import write_sweep


def test_warm_up_tasks_import_the_trial_modules_on_the_workers(ray_session: None) -> None:
    import ray

    refs = ray_cluster.start_ray(None, 2)
    assert len(refs) == 2
    assert ray.get(refs) == [list(PRELOAD)] * 2

    @ray.remote(num_cpus=1)
    def loaded() -> list[bool]:
        return [name in sys.modules for name in PRELOAD]

    # a task after the warm-up finds the modules there (Ray reuses the warmed workers)
    assert all(ray.get(loaded.remote()))
    # the session's own Ray was reused: a sweep must not shut it down
    assert ray_cluster.init_ray(None, 2) is False
    assert ray.is_initialized()


def test_a_ray_started_early_is_shut_down_by_the_sweep_that_uses_it(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what `start_ray` records when it started Ray itself (here the session's instance stands
    # in for it): the sweep's `init_ray` then answers "started here" once
    monkeypatch.setattr(ray_cluster, "_started_here", True)
    assert ray_cluster.init_ray(None, 2) is True
    assert ray_cluster.init_ray(None, 2) is False


def test_the_driver_imports_run_on_a_thread_while_ray_starts(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a module that notes the thread importing it
    (tmp_path / "noted_import.py").write_text(
        "import threading\nTHREAD = threading.current_thread().name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "noted_import", raising=False)
    ray_cluster.start_ray(None, 2, driver_imports=("noted_import",))
    assert sys.modules["noted_import"].THREAD == "driver-imports"
    # an import that fails is raised on the caller's thread, after Ray is up
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        ray_cluster.start_ray(None, 2, driver_imports=("no_such_module_here",))


def test_a_sweep_that_started_ray_stops_it_behind_its_outputs_and_waits(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    events: list[str] = []
    outputs_done = threading.Event()

    def stop_later() -> threading.Thread:
        # stands in for Ray's shutdown (the session's Ray must stay up): it ends only after the
        # outputs, and a moment later, so a sweep that did not wait for it would return first
        def stop() -> None:
            outputs_done.wait(10)
            time.sleep(0.2)
            events.append("stopped")

        events.append("stopping")
        stopping = threading.Thread(target=stop)
        stopping.start()
        return stopping

    outputs = sweep.SweepRunner._outputs

    def outputs_then_release(self: sweep.SweepRunner, *args: object) -> str:
        sentence = outputs(self, *args)
        events.append("outputs")
        outputs_done.set()
        return sentence

    monkeypatch.setattr(ray_cluster, "_started_here", True)  # as if this sweep started it
    monkeypatch.setattr(sweep, "stop_ray", stop_later)
    monkeypatch.setattr(sweep.SweepRunner, "_outputs", outputs_then_release)
    summary = run_sweep(write_sweep(tmp_path), backend="ray", out_dir=tmp_path / "runs", quiet=True)
    assert summary.n_complete == 4
    assert events == ["stopping", "outputs", "stopped"]
    assert ray.is_initialized()
