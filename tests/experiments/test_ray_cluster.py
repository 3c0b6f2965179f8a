"""Ray for sweeps: started early by `harness sweep --backend ray`, workers warmed, shut down by
the sweep that started it and never when the caller started Ray itself."""

from __future__ import annotations

import ipaddress
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


def test_the_local_ray_listens_on_loopback_only(ray_session: None) -> None:
    import psutil
    import ray

    assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
    # Ray's servers (GCS, raylet, agents, workers) are this process's descendants; with
    # `_node_ip_address` alone they listened on every interface ("*")
    listening = {
        (p.name(), c.laddr.ip)
        for p in psutil.Process().children(recursive=True)
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert any(name == "gcs_server" for name, _ in listening)
    assert any(name == "raylet" for name, _ in listening)
    assert all(_is_loopback(ip) for _, ip in listening), listening


def _is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also written as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class _FakeRay:
    """What `_require_loopback` asks of Ray: the nodes, and a shutdown it records."""

    def __init__(self, address: str) -> None:
        self.address, self.shut = address, False

    def nodes(self) -> list[dict[str, str]]:
        return [{"NodeManagerAddress": self.address}]

    def shutdown(self) -> None:
        self.shut = True


def test_a_local_ray_off_loopback_is_shut_down_with_the_reason() -> None:
    # what happens when `ray` was imported before harness set Ray's local-only switch (starting
    # a real one here would listen on the machine's network address)
    fake = _FakeRay("192.0.2.7")
    with pytest.raises(
        RuntimeError, match=r"192\.0\.2\.7, not on loopback.*RAY_ENABLE_WINDOWS_OR_OSX"
    ):
        ray_cluster._require_loopback(fake)
    assert fake.shut
    ok = _FakeRay("127.0.0.1")
    ray_cluster._require_loopback(ok)
    assert not ok.shut
