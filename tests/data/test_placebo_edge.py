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
from harness.pricing import black76_price
from harness.stats import cluster_robust_mean
from tests.data.placebo_fixtures import (
    SIGMA,
    adjusted_edge_bps,
    placebo_sells,
    seed_expiry_clusters,
    twap_edge_bps,
    years_to_expiry,
)


def test_placebo_per_trade_edge_is_zero_within_a_cluster_robust_bound() -> None:
    d = pd.concat([placebo_sells(seed) for seed in range(8)], ignore_index=True)
    s0 = d["underlying_price"].to_numpy()
    calls = np.ones(len(d), dtype=bool)
    # the premium is exactly Black-76 at the path's true vol on the path's own clock
    np.testing.assert_allclose(d["mark_iv"], SIGMA, rtol=1e-12)
    np.testing.assert_allclose(
        d["premium"],
        black76_price(
            s0, d["strike"].to_numpy(), years_to_expiry(d), np.full(len(d), SIGMA), calls
        ),
        rtol=1e-12,
    )
    mean, se = cluster_robust_mean(adjusted_edge_bps(d), seed_expiry_clusters(d))
    # the one real seller edge: the 30-minute average's lower variance (about +0.24 bps)
    twap_bps = float(np.mean(twap_edge_bps(d)))
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
