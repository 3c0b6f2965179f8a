"""Fixtures of the experiment tests: one loopback-only local Ray for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray bound to 127.0.0.1, no dashboard, no usage stats; shut down at session end."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # read at import: nothing may leave the machine
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
