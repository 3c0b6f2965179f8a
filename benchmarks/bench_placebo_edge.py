"""Per-trade seller edge in the placebo world, decomposed (issue #15 item 11).

Every sell candidate of BTC 2024 (1h bars, a decision every 4 hours, 7-day 0.25-delta band,
`fill: mark`, no fees) on many placebo seeds; also always_sell's pick (nearest 0.25 delta). Per
trade: edge = premium (USD at sale) - payoff on the delivery price, in bps of the spot at sale,
with cluster-robust 95% intervals (clusters: seed x expiry; seeds alone give the same width).
Causes, one at a time: the 30-minute settlement average (payoff on it vs on the exact expiry
price, and analytically), the premium's Black-76 price at the true vol on the path's clock, the
premium held in coin to expiry, the realised move and variance of the sampled paths, and the
edge adjusted by control variates whose means are exact under the model.
Run: nice .venv/bin/python benchmarks/bench_placebo_edge.py [--seeds 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.data.placebo_fixtures (the trades the test measures)

from harness.data.synthetic import SyntheticMarket  # noqa: E402
from harness.pricing import black76_price  # noqa: E402
from harness.stats import cluster_robust_mean  # noqa: E402
from tests.data.placebo_fixtures import (  # noqa: E402
    SIGMA,
    adjusted_edge_bps,
    edge_bps,
    placebo_config,
    placebo_sells,
    seed_expiry_clusters,
    twap_edge_bps,
    years_to_expiry,
)


def seed_trades(seed: int) -> pd.DataFrame:
    """Every sell candidate of one placebo seed, with always_sell's pick (nearest delta) marked."""
    d = placebo_sells(seed)
    d["gap"] = (d["delta"] - placebo_config().target_delta).abs()
    pick = d.sort_values(["decision_time", "gap", "strike", "expiry"]).groupby("decision_time")
    d["picked"] = d.index.isin(pick.head(1).index)
    return d


def cluster_ci(x: np.ndarray, clusters: np.ndarray) -> str:
    """Mean [cluster-robust (CR1) 95% interval]."""
    m, se = cluster_robust_mean(x, clusters)
    return f"{m:+.3f} [{m - 1.96 * se:+.3f}, {m + 1.96 * se:+.3f}]"


def report(d: pd.DataFrame, name: str) -> None:
    """Print the decomposition of the edge of the trades `d`."""
    s0 = d["underlying_price"].to_numpy()
    st = d["spot_at_expiry"].to_numpy()
    k = d["strike"].to_numpy()
    tau = years_to_expiry(d)
    calls = np.ones(len(d), dtype=bool)
    cl = seed_expiry_clusters(d)
    premium, payoff = d["premium"].to_numpy(), d["payoff"].to_numpy()
    exact = np.maximum(st - k, 0.0)

    def bps(x: np.ndarray) -> np.ndarray:
        return x / s0 * 1e4

    b76 = black76_price(s0, k, tau, np.full(len(d), SIGMA), calls)
    r = st / s0
    v = SIGMA**2 * tau
    edge = edge_bps(d)
    print(f"== {name}: {len(d):,} trades, {d['seed'].nunique()} seeds, {len(set(cl)):,} clusters")
    print(f"pnl_vs_hodl USD per trade:           {cluster_ci(d['pnl_vs_hodl'].to_numpy(), cl)}")
    print(f"premium: {premium.mean():.2f} USD = {bps(premium).mean():.2f} bps of spot")
    print(f"edge (premium - payoff), bps:        {cluster_ci(edge, cl)}")
    print(f"premium - Black-76(true vol), USD:   max |diff| {np.abs(premium - b76).max():.2e}")
    print(f"TWAP: payoff(TWAP) - payoff(exact):  {cluster_ci(bps(payoff - exact), cl)} bps")
    print(f"TWAP analytic seller edge:           {twap_edge_bps(d).mean():+.3f} bps")
    print(f"edge on the exact expiry price, bps: {cluster_ci(bps(premium - exact), cl)}")
    held = premium / s0 * (st - s0)
    print(f"premium held in coin - at sale, bps: {cluster_ci(bps(held), cl)}")
    print(f"S_T / S_0 - 1, bps (martingale: 0):  {cluster_ci(bps(st - s0), cl)}")
    print(
        f"realised / implied variance:         {(np.log(r) ** 2).mean() / (v + v * v / 4).mean():.4f}"
    )
    hedged = edge + d["delta"].to_numpy() * bps(st - s0)
    print(f"edge + delta (S_T - S_0), bps:       {cluster_ci(hedged, cl)}")
    print(f"edge adjusted (exact-mean controls): {cluster_ci(adjusted_edge_bps(d), cl)} bps")


def main() -> None:
    """Run the seeds and print the decomposition for all candidates and always_sell's picks."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=300)
    args = ap.parse_args()
    t0 = time.time()
    parts = []
    for seed in range(args.seeds):
        parts.append(seed_trades(seed))
        if (seed + 1) % 25 == 0:
            print(f"{seed + 1}/{args.seeds} seeds, {time.time() - t0:.0f} s", flush=True)
    d = pd.concat(parts, ignore_index=True)
    report(d, "all candidates")
    report(d[d["picked"]], "always_sell picks")
    years = []
    for seed in range(args.seeds):
        m = SyntheticMarket(seed=seed, world="placebo")
        years.append(m.year_start_price("BTC", 2025) / m.year_start_price("BTC", 2024) - 1.0)
    y = np.asarray(years)
    print(
        f"2024 return of these seeds' paths: {y.mean():+.4f} "
        f"(se {y.std(ddof=1) / np.sqrt(len(y)):.4f}); {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
