"""Fixtures of the experiment tests: one loopback-only local Ray for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.experiments.ray_cluster import LOCAL_ONLY_ENV, init_ray

# Ray reads its local-only switch once, when it is first imported: set it before any test module
# can import ray (`init_ray` sets it too, but only when it is the first to import Ray)
os.environ[LOCAL_ONLY_ENV] = "0"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray started as `harness sweep` starts it: 2 CPUs, bound to 127.0.0.1 only, no
    dashboard, no usage stats (ray.init(num_cpus=2, include_dashboard=False,
    _node_ip_address="127.0.0.1") plus Ray's local-only switch); shut down at session end."""
    started = init_ray(None, 2)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()
