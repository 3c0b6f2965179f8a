"""Shared fixtures: one synthetic market and a small simulator, built once per session."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from harness.data.synthetic import SyntheticMarket
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

# The suite must not cry wolf: by default property tests draw the same examples every run
# (derandomize) and no example fails for being slow on a loaded machine (deadline). Set
# HYPOTHESIS_PROFILE=explore for fresh random examples when hunting for new failures.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def market() -> SyntheticMarket:
    return SyntheticMarket(seed=11)


@pytest.fixture(scope="session")
def small_config() -> CallSimulationConfig:
    return CallSimulationConfig(
        underlying="BTC",
        start="2024-02-01",
        end="2024-04-15",
        timeframe="1h",
        decision_interval_bars=4,
    )


@pytest.fixture(scope="session")
def sim(market: SyntheticMarket, small_config: CallSimulationConfig) -> CoveredCallSimulator:
    return CoveredCallSimulator(market, small_config)
