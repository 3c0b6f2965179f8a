"""The placebo world gives sellers no per-trade edge (issue #15 item 11; docs/calibration.md).

The per-trade edge is premium (USD at sale) minus the payoff on the delivery price, in basis
points of the spot at sale. Its raw mean is dominated by where the few seeds' paths happened to
go, so it is measured with two control variates whose means are exact under the placebo model
(E[S_T / S_0] = 1 and E[ln(S_T / S_0)^2] = v + v^2 / 4 with v = sigma^2 tau): the adjusted mean
keeps the edge and drops most of the path noise. The controls would also absorb a wrong drift or
a wrong path variance, so those are checked on their own on the yearly levels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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


def _trades(seeds: range) -> pd.DataFrame:
    """Every sell candidate of 2024 on the placebo world (4-hour decisions, fill at mark)."""
    cfg = CallSimulationConfig(
        underlying="BTC",
        start="2024-01-01",
        end="2024-12-31",
        timeframe="1h",
        decision_interval_bars=4,
        fill="mark",
        fee_rate=0.0,
        delivery_fee_rate=0.0,
    )
    out = []
    for seed in seeds:
        market = SyntheticMarket(seed=seed, world="placebo")
        labels = CoveredCallSimulator(market, cfg).counterfactual_labels()
        sells = labels[labels["action"] == "SELL_CALL"].copy()
        sells["spot_at_expiry"] = market.spot_at("BTC", pd.DatetimeIndex(sells["expiry"]))
        sells["seed"] = seed
        out.append(sells)
    return pd.concat(out, ignore_index=True)


def _cluster_mean(x: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Mean and its cluster-robust standard error (CR1)."""
    m = float(x.mean())
    sums = pd.Series(x - m).groupby(clusters).sum().to_numpy()
    g = len(sums)
    return m, float(np.sqrt((sums**2).sum() * g / (g - 1)) / len(x))


def test_placebo_per_trade_edge_is_zero_within_a_cluster_robust_bound() -> None:
    d = _trades(range(8))
    s0 = d["underlying_price"].to_numpy()
    strike = d["strike"].to_numpy()
    tau = (
        pd.DatetimeIndex(d["expiry"]) - pd.DatetimeIndex(d["decision_time"])
    ).total_seconds().to_numpy() / YEAR_S
    calls = np.ones(len(d), dtype=bool)
    # the premium is exactly Black-76 at the path's true vol on the path's own clock
    np.testing.assert_allclose(d["mark_iv"], SIGMA, rtol=1e-12)
    np.testing.assert_allclose(
        d["premium"], black76_price(s0, strike, tau, np.full(len(d), SIGMA), calls), rtol=1e-12
    )
    edge = (d["premium"] - d["payoff"]).to_numpy() / s0 * 1e4
    ratio = d["spot_at_expiry"].to_numpy() / s0
    v = SIGMA**2 * tau
    controls = np.column_stack([ratio - 1.0, np.log(ratio) ** 2 - v - v * v / 4])
    beta = np.linalg.lstsq(controls - controls.mean(0), edge - edge.mean(), rcond=None)[0]
    clusters = (d["seed"].astype(str) + d["expiry"].astype(str)).to_numpy()
    mean, se = _cluster_mean(edge - controls @ beta, clusters)
    # the one real seller edge: the 30-minute average's lower variance (about +0.24 bps)
    twap_short = SIGMA * SIGMA * TWAP_MINUTES / (365 * 1440)
    tau_twap = tau - twap_short / SIGMA**2
    twap = black76_price(s0, strike, tau, np.full(len(d), SIGMA), calls) - black76_price(
        s0, strike, tau_twap, np.full(len(d), SIGMA), calls
    )
    twap_bps = float(np.mean(twap / s0 * 1e4))
    assert 0.1 < twap_bps < 0.5
    # 8 seeds x 51 weekly expiries: se 4.5 bps (premium about 108 bps), so the bound (3.5 se,
    # 15.7 bps) fails on premiums 15% too rich (measured: adjusted mean +19.0 bps) at a 2.5e-4
    # false-failure rate, and, with fixed seeds, never by chance once it passes; 300 seeds
    # (docs/calibration.md) pin the edge far tighter
    assert se < 5.0
    assert abs(mean - twap_bps) < 3.5 * se


def test_placebo_yearly_log_returns_have_the_martingale_drift_and_the_true_variance() -> None:
    # the minute path is bridged onto the yearly levels, so its drift and total variance are
    # those of the yearly log returns: z = (ln r + V / 2) / sqrt(V) must be N(0, 1)
    z = []
    for seed in range(150):
        market = SyntheticMarket(seed=seed, world="placebo")
        years = np.arange(2019, 2032)
        x = np.log([market.year_start_price("BTC", int(y)) for y in years])
        days = np.array([366 if y % 4 == 0 else 365 for y in years[:-1]])
        var = SIGMA**2 * days / 365.0
        z.extend((np.diff(x) + var / 2) / np.sqrt(var))
    z_a = np.asarray(z)
    # 1,800 draws: se of the mean 0.024; a drift of -sigma^2 instead of -sigma^2/2 is -0.27
    assert abs(z_a.mean()) < 4 / np.sqrt(len(z_a))
    assert z_a.var() == pytest.approx(1.0, abs=0.15)
