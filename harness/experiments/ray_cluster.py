"""Ray for sweeps: connect to a cluster or start a loopback-only local instance, warm its workers.

This module imports only the standard library (and Ray when called), so `harness sweep
--backend ray` can bring Ray up and have its workers import what a trial needs while the
driver imports the runner itself: Ray's start-up and the workers' imports were otherwise
paid one after the other, after the driver's own imports.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
from typing import Any

from harness.experiments.sweep_pool import PRELOAD

_started_here = False  # this process started the Ray instance it is connected to

# Ray's switch for a node that is not part of a cluster ("0": its address is 127.0.0.1 and every
# Ray server listens there). `_node_ip_address="127.0.0.1"` alone does not do it: Ray replaces a
# loopback address with the machine's network address and its servers listen on every
# interface. Ray reads the switch once, when it is first imported.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None, workers: int | None) -> bool:
    """Connect to `address` (auto, ray://HOST:PORT) or start a loopback-only local Ray.

    Returns True when this process started Ray (here or in an earlier `init_ray` call that is
    not yet answered), so the caller shuts it down. A session that already called `ray.init`
    itself (tests, notebooks) is reused as it is, and False is returned.
    """
    global _started_here
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        os.environ[LOCAL_ONLY_ENV] = "0"
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
        _require_loopback(ray)
    return True


def _require_loopback(ray: Any) -> None:
    """Shut the new local Ray down and say why when its node is not on a loopback address."""
    address = ray.nodes()[0]["NodeManagerAddress"]
    if not ipaddress.ip_address(address).is_loopback:
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray started on {address}, not on loopback: `ray` was imported before "
            f"harness could set {LOCAL_ONLY_ENV}=0. Set it in the environment before importing "
            "ray, or start Ray yourself and pass --address."
        )


def start_ray(address: str | None, workers: int | None) -> list[Any]:
    """Bring Ray up now and have `workers` of its workers import what a trial imports.

    Returns the warm-up tasks' references (nothing waits for them: trials queue behind them on
    the same workers). The next `init_ray` reports that this process started Ray.
    """
    global _started_here
    _started_here = init_ray(address, workers) or _started_here
    import ray

    n = workers or int(ray.cluster_resources().get("CPU", 1))
    warm = ray.remote(num_cpus=1, max_retries=0)(import_trial_modules)
    return [warm.remote() for _ in range(max(1, n))]


def import_trial_modules() -> list[str]:
    """Import every module a trial needs (the local worker server's preload); their names."""
    for name in PRELOAD:
        importlib.import_module(name)
    return list(PRELOAD)
