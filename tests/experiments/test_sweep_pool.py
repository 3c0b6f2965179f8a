"""The sweep's worker server: light to import, started early, workers preloaded."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

import harness.experiments as experiments
from harness.experiments.sweep_pool import PRELOAD, start_worker_server, worker_context


def _loaded(names: tuple[str, ...]) -> list[bool]:
    """In a worker: which of `names` were imported before this call (by the server)."""
    return [n in sys.modules for n in names]


@pytest.mark.parametrize("module", ["sweep_pool", "ray_cluster"])
def test_the_modules_started_first_import_no_ray_runner_or_pandas(module: str) -> None:
    # `harness sweep` imports them to start its workers (the worker server, or Ray) before
    # the driver imports the runner
    code = (
        f"import sys, harness.experiments.{module}\n"
        "heavy = [m for m in ('ray', 'pandas', 'pyarrow', 'harness.experiments.runner',"
        " 'harness.experiments.config') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_package_exports_resolve_on_first_use() -> None:
    for name in experiments.__all__:
        assert getattr(experiments, name) is not None
    from harness.experiments import ConfigError, run_sweep  # noqa: F401 - the import is the test

    assert "run_sweep" in dir(experiments)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        experiments.nothing_here  # noqa: B018


def test_workers_fork_from_a_server_that_already_imported_the_trial_modules() -> None:
    start_worker_server()
    with ProcessPoolExecutor(max_workers=1, mp_context=worker_context()) as pool:
        assert pool.submit(_loaded, PRELOAD).result(timeout=120) == [True] * len(PRELOAD)
