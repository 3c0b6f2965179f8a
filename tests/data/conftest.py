"""Fixtures for the market-data tests: fixture paths and a local recorded-format Deribit server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.data.deribit_client import DeribitClient
from tests.data.deribit_server import DeribitServer, build_market
from tests.store_replay_fixtures import write_4h_store

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def weekly_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two months of 4-hour snapshots, every expiry up to 20 days (dailies listed 4 days
    out), with ATM summaries and low-tier marks; shared read-only (tests rewrite copies)."""
    return write_4h_store(
        tmp_path_factory.mktemp("weekly"), "2024-02-01", "2024-03-20", seed=11, max_dte=20.0
    )


@pytest.fixture
def deribit_server() -> Iterator[DeribitServer]:
    server = DeribitServer(build_market()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(deribit_server: DeribitServer) -> Iterator[DeribitClient]:
    # Tiny backoff and a generous rate limit keep retry tests fast.
    with DeribitClient(
        deribit_server.base_url,
        history_url=deribit_server.history_url,
        timeout=2.0,
        backoff_initial=0.001,
        backoff_max=0.01,
        requests_per_second=1000.0,
        burst=1000,
    ) as c:
        yield c


@pytest.fixture
def deribit_client_factory(deribit_server: DeribitServer) -> Iterator:
    """Make clients against the local server with overridden settings (closed afterwards)."""
    made: list[DeribitClient] = []

    def make(**overrides: object) -> DeribitClient:
        settings = {
            "history_url": deribit_server.history_url,
            "timeout": 2.0,
            "backoff_initial": 0.001,
            "backoff_max": 0.01,
            "requests_per_second": 1000.0,
            "burst": 1000,
        } | overrides
        c = DeribitClient(deribit_server.base_url, **settings)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
