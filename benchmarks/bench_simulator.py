"""Simulator speed and memory on one year of synthetic BTC (1h bars, decision every 4 bars).

Prints: market load time; `simulate_policy(always_sell)` time; counterfactual labels for every
candidate of every decision; the same work done the way the original design sketch did it
(per decision: fetch the chain, filter, fetch spot and option paths, loop over bars in Python)
and the speed ratio; peak memory. Run: .venv/bin/python benchmarks/bench_simulator.py
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import pandas as pd

from harness.data.synthetic import SyntheticMarket
from harness.policies import always_sell
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig


def sketch_single_call(
    market: SyntheticMarket, cfg: CallSimulationConfig, t: pd.Timestamp
) -> float | None:
    """The seed design: one decision, fetched and looped over in plain Python. Returns pnl vs HODL."""
    chain = market.list_option_chain(cfg.underlying, t)
    calls = [
        c
        for c in chain
        if c.kind == "call"
        and abs(c.dte - cfg.target_dte) <= cfg.dte_tolerance
        and abs(c.delta - cfg.target_delta) <= cfg.delta_tolerance
        and c.bid_price
        and c.expiry <= cfg.end_ts
    ]
    if not calls:
        return None
    pick = min(calls, key=lambda c: (abs(c.delta - cfg.target_delta), c.strike))
    spot = market.get_spot_ohlc(cfg.underlying, t, pick.expiry, cfg.timeframe)
    opt = market.get_option_ohlc(pick.instrument_name, t, pick.expiry, cfg.timeframe)
    premium = pick.bid_price
    fee = min(cfg.fee_rate * pick.underlying_price, 0.125 * premium)
    peak, worst = -np.inf, 0.0
    for ts, row in spot.iterrows():  # the per-bar Python loop of the sketch
        mark = opt["close"].get(ts, np.nan)
        if mark != mark:
            continue
        value = row["close"] - mark + premium - fee
        peak = max(peak, value)
        worst = max(worst, (peak - value) / peak)
    settle = market.settlement_price(cfg.underlying, pick.expiry)
    payoff = max(settle - pick.strike, 0.0)
    dfee = min(cfg.delivery_fee_rate * settle, 0.125 * payoff) if payoff > 0 else 0.0
    return premium - fee - payoff - dfee


class Clock:
    """Wall and CPU seconds of a block (CPU is the steadier figure on a shared machine)."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    def __str__(self) -> str:
        return f"{self.wall:.3f} s (cpu {self.cpu:.3f} s)"


def load_average() -> str:
    """The 1-minute load average: other jobs on the machine inflate wall times."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def eth_hourly_memory() -> None:
    """Peak memory and times of ETH 2023-2024 with a decision every hour (issue #15 goal: < 1 GB)."""
    cfg = CallSimulationConfig(
        underlying="ETH",
        start="2023-01-01",
        end="2024-12-31",
        timeframe="1h",
        decision_interval_bars=1,
    )
    print(f"start: {load_average()}")
    with Clock() as load:
        sim = CoveredCallSimulator(SyntheticMarket(seed=7), cfg)
    with Clock() as t_policy:
        res = sim.simulate_policy(always_sell())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"ETH 2023-2024, hourly decisions: {len(sim.decision_times())} decisions, "
        f"{len(sim.store)} chain rows stored, {len(res.trades)} trades of always_sell"
    )
    print(f"load: {load}; simulate_policy(always_sell): {t_policy}")
    print(f"peak memory (max RSS of the process): {peak_mb:.0f} MB")
    print(f"end: {load_average()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--sample-every", type=int, default=10, help="run the sketch on every Nth decision"
    )
    ap.add_argument(
        "--eth-hourly",
        action="store_true",
        help="only the memory case: ETH 2023-2024, a decision every hour (run it on its own)",
    )
    args = ap.parse_args()
    if args.eth_hourly:
        eth_hourly_memory()
        return
    cfg = CallSimulationConfig(
        underlying="BTC",
        start="2024-01-01",
        end="2024-12-31",
        timeframe="1h",
        decision_interval_bars=4,
        target_dte=7,
        target_delta=0.25,
    )
    print(f"start: {load_average()}")
    market = SyntheticMarket(seed=7)
    with Clock() as load:
        sim = CoveredCallSimulator(market, cfg)
    n_dec = len(sim.decision_times())
    with Clock() as t_policy:
        res = sim.simulate_policy(always_sell())
    with Clock() as t_labels:
        labels = sim.counterfactual_labels()
    peak_sim_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_cands = int((labels["action"] == "SELL_CALL").sum())

    sample = sim.decision_times()[:: args.sample_every]
    t0 = time.perf_counter()
    done = sum(sketch_single_call(market, cfg, t) is not None for t in sample)
    t_sketch_sample = time.perf_counter() - t0
    t_sketch = t_sketch_sample * n_dec / len(sample)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(
        f"decisions: {n_dec}; candidates labelled: {n_cands}; trades of always_sell: {len(res.trades)}"
    )
    print(f"market load (spot bars, chain store, candidates): {load}")
    print(f"simulate_policy(always_sell): {t_policy}")
    print(f"counterfactual labels for every candidate: {t_labels}")
    print(f"peak memory after load, replay and labels (before the sketch): {peak_sim_mb:.0f} MB")
    print(
        f"original-design sketch, one nearest-delta trade per decision: {t_sketch_sample:.1f} s for "
        f"{len(sample)} decisions ({done} trades) -> {t_sketch:.1f} s for all {n_dec} (linear scaling)"
    )
    print(
        f"speed ratio, sketch (1 trade/decision) vs engine labels ({n_cands / n_dec:.1f} trades/decision): "
        f"{t_sketch / t_labels.wall:.0f}x"
    )
    print(f"speed ratio, sketch vs engine simulate_policy: {t_sketch / t_policy.wall:.0f}x")
    print(f"peak memory (max RSS of the process): {peak_mb:.0f} MB")
    print(f"end: {load_average()}")


if __name__ == "__main__":
    main()
