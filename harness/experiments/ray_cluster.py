"""Ray for sweeps: connect to a cluster or start a loopback-only local instance, warm its workers.

This module imports only the standard library (and Ray when called), so `harness sweep
--backend ray` can bring Ray up first: the driver's own imports run on a thread while
`ray.init` waits for Ray's processes to come up, and then Ray's workers import what a trial
needs while the driver builds the market. Paid one after the other, these were the largest
part of what Ray adds to a sweep's wall time.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from typing import Any

from harness.experiments.sweep_pool import PRELOAD

_started_here = False  # this process started the Ray instance it is connected to


def init_ray(address: str | None, workers: int | None) -> bool:
    """Connect to `address` (auto, ray://HOST:PORT) or start a loopback-only local Ray.

    Returns True when this process started Ray (here or in an earlier `init_ray` call that is
    not yet answered), so the caller shuts it down. A session that already called `ray.init`
    itself (tests, notebooks) is reused as it is, and False is returned.
    """
    global _started_here
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        started, _started_here = _started_here, False
        return started
    if address:
        ray.init(address=address)  # the cluster's own settings; Ray client accepts few options
    else:
        ray.init(
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    return True


def start_ray(
    address: str | None, workers: int | None, driver_imports: Sequence[str] = ()
) -> list[Any]:
    """Bring Ray up now and have `workers` of its workers import what a trial imports.

    `driver_imports` are imported on a thread meanwhile: `ray.init` mostly waits for Ray's
    processes, and must itself run on the main thread (it sets the SIGTERM handler that lets
    Ray shut down; started from a thread here, it once failed to reach its own GCS). Ray is
    imported first, so the two threads import disjoint modules. Returns the warm-up tasks'
    references (nothing waits for them: trials queue behind them on the same workers). The
    next `init_ray` reports that this process started Ray.
    """
    global _started_here
    import ray

    failed: list[BaseException] = []

    def import_driver_modules() -> None:
        try:
            for name in driver_imports:
                importlib.import_module(name)
        except BaseException as exc:  # re-raised on the main thread below
            failed.append(exc)

    meanwhile = threading.Thread(target=import_driver_modules, name="driver-imports")
    meanwhile.start()
    try:
        _started_here = init_ray(address, workers) or _started_here
    finally:
        meanwhile.join()
    if failed:
        raise failed[0]
    n = workers or int(ray.cluster_resources().get("CPU", 1))
    warm = ray.remote(num_cpus=1, max_retries=0)(import_trial_modules)
    return [warm.remote() for _ in range(max(1, n))]


def stop_ray() -> threading.Thread:
    """Shut this process's Ray down on a thread, started now; join it before exiting.

    Ray's shutdown mostly waits for its processes to exit (about 1.4 s on two cores), time
    the sweep spends writing its outputs meanwhile.
    """
    import ray

    stopping = threading.Thread(target=ray.shutdown, name="ray-shutdown")
    stopping.start()
    return stopping


def import_trial_modules() -> list[str]:
    """Import every module a trial needs (the local worker server's preload); their names."""
    for name in PRELOAD:
        importlib.import_module(name)
    return list(PRELOAD)
