"""Ray for sweeps: started early by `harness sweep --backend ray`, workers warmed, shut down by
the sweep that started it and never when the caller started Ray itself."""

from __future__ import annotations

import sys

import pytest

from harness.experiments import ray_cluster
from harness.experiments.sweep_pool import PRELOAD


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
