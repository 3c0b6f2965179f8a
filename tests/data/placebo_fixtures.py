"""The placebo world's sell candidates and their control-adjusted edge (test and benchmark).

Shared by tests/data/test_placebo_edge.py and benchmarks/bench_placebo_edge.py so both measure
the same trades the same way (docs/calibration.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.data.synthetic import SyntheticMarket
from harness.data.worlds import WORLDS
from harness.pricing import black76_price
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

SIGMA = WORLDS["placebo"].coins["BTC"].mean_vol
YEAR_S = 365.0 * 86400.0
# variance-time the delivery price (mean of 30 one-minute prices ending at expiry) removes
# from the payoff: sum_{i,j<30} max(i, j) / 30^2 = 17,545 / 900 = 19.49 minutes
TWAP_MINUTES = 17_545 / 900


def placebo_config() -> CallSimulationConfig:
    """BTC 2024, 1h bars, a decision every 4 hours, fill at mark, no fees."""
    return CallSimulationConfig(
        underlying="BTC",
        start="2024-01-01",
        end="2024-12-31",
        timeframe="1h",
        decision_interval_bars=4,
        fill="mark",
        fee_rate=0.0,
        delivery_fee_rate=0.0,
    )


def placebo_sells(seed: int) -> pd.DataFrame:
    """Every sell candidate of one placebo seed, with the spot at the exact expiry instant."""
    market = SyntheticMarket(seed=seed, world="placebo")
    labels = CoveredCallSimulator(market, placebo_config()).counterfactual_labels()
    sells = labels[labels["action"] == "SELL_CALL"].copy()
    sells["spot_at_expiry"] = market.spot_at("BTC", pd.DatetimeIndex(sells["expiry"]))
    sells["seed"] = seed
    return sells


def years_to_expiry(d: pd.DataFrame) -> np.ndarray:
    """Time from decision to expiry of each trade, in 365-day years."""
    gap = pd.DatetimeIndex(d["expiry"]) - pd.DatetimeIndex(d["decision_time"])
    return gap.total_seconds().to_numpy() / YEAR_S


def seed_expiry_clusters(d: pd.DataFrame) -> np.ndarray:
    """Cluster label of each trade: its seed and expiry (trades settling together)."""
    return (d["seed"].astype(str) + d["expiry"].astype(str)).to_numpy()


def edge_bps(d: pd.DataFrame) -> np.ndarray:
    """Premium minus payoff of each trade, in bps of the spot at sale."""
    return (d["premium"] - d["payoff"]).to_numpy() / d["underlying_price"].to_numpy() * 1e4


def adjusted_edge_bps(d: pd.DataFrame) -> np.ndarray:
    """`edge_bps` less two control variates whose means are exact under the placebo model.

    E[S_T / S_0] = 1 and E[ln(S_T / S_0)^2] = v + v^2 / 4 with v = sigma^2 tau: regressing the
    edge on their deviations keeps its mean and drops most of the path noise.
    """
    edge = edge_bps(d)
    ratio = d["spot_at_expiry"].to_numpy() / d["underlying_price"].to_numpy()
    v = SIGMA**2 * years_to_expiry(d)
    controls = np.column_stack([ratio - 1.0, np.log(ratio) ** 2 - v - v * v / 4])
    beta = np.linalg.lstsq(controls - controls.mean(0), edge - edge.mean(), rcond=None)[0]
    return edge - controls @ beta


def twap_edge_bps(d: pd.DataFrame) -> np.ndarray:
    """Seller edge of each trade from the settlement average, analytically, in bps of spot."""
    s0 = d["underlying_price"].to_numpy()
    strike = d["strike"].to_numpy()
    tau = years_to_expiry(d)
    vol = np.full(len(d), SIGMA)
    calls = np.ones(len(d), dtype=bool)
    full = black76_price(s0, strike, tau, vol, calls)
    shorter = black76_price(s0, strike, tau - TWAP_MINUTES / (365 * 1440), vol, calls)
    return (full - shorter) / s0 * 1e4
