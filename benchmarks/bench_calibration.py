"""Calibration of the paired comparison on synthetic worlds with a known answer.

Placebo world (no edge): how often the paired comparison calls a random-sell policy
"significant" against always_sell (the 95% block-bootstrap interval of the mean difference
excludes 0). It must be near the nominal 5%. Rich-premium world (a known positive edge for
sellers): how often always_sell is significant against never_sell, and always_sell against
random_sell, at one year of 4-hour decisions (the power).

Rewards are what the experiment runner scores: per decision, the hold-to-expiry pnl vs HODL of
the call a policy sells (0 for doing nothing), with `fill: mark` and no fees. The block length
is the runner's: a call's life over the decision spacing; both interval methods of
`harness.stats.paired_comparison` are reported (batch means is the default).
Run: .venv/bin/python benchmarks/bench_calibration.py [--seeds 20] [--draws 5]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from harness.data.synthetic import SyntheticMarket
from harness.simulator import CoveredCallSimulator
from harness.stats import paired_comparison
from harness.types import CallSimulationConfig


def _config() -> CallSimulationConfig:
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


def always_sell_rewards(labels: pd.DataFrame, target_delta: float) -> tuple[np.ndarray, list]:
    """Per decision: reward and name of the candidate nearest `target_delta` (0 / None if none)."""
    times = pd.DatetimeIndex(labels["decision_time"].unique())
    sells = labels[labels["action"] == "SELL_CALL"].copy()
    sells["gap"] = (sells["delta"] - target_delta).abs()
    pick = sells.sort_values(["decision_time", "gap", "strike", "expiry"]).groupby(
        "decision_time", sort=True
    )
    first = pick.head(1).set_index("decision_time")
    rewards = first["pnl_vs_hodl"].reindex(times).fillna(0.0).to_numpy()
    names = first["instrument_name"].reindex(times).tolist()
    names = [n if isinstance(n, str) else None for n in names]
    return rewards, names


def _significant(c) -> bool:
    return bool(c.ci_low > 0 or c.ci_high < 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20, help="market seeds per world")
    ap.add_argument("--draws", type=int, default=5, help="random-sell policies per placebo seed")
    args = ap.parse_args()
    cfg = _config()
    spacing = pd.Timedelta(cfg.timeframe) * cfg.decision_interval_bars
    block = max(1, math.ceil(pd.Timedelta(days=cfg.target_dte + cfg.dte_tolerance) / spacing))
    t0 = time.perf_counter()
    methods = ("batch_means", "block_bootstrap")
    fp_first = dict.fromkeys(methods, 0)
    fp_all = dict.fromkeys(methods, 0)
    power_never = dict.fromkeys(methods, 0)
    power_random = dict.fromkeys(methods, 0)
    n_all = n = 0
    for world in ("placebo", "rich_premium"):
        for seed in range(args.seeds):
            sim = CoveredCallSimulator(SyntheticMarket(seed=seed, world=world), cfg)
            labels = sim.counterfactual_labels()
            base, names = always_sell_rewards(labels, cfg.target_delta)
            n = len(base)
            zeros = np.zeros(n)
            nones: list = [None] * n
            for d in range(args.draws if world == "placebo" else 1):
                rng = np.random.default_rng([seed, d])
                sell = rng.random(n) < 0.5
                rand = np.where(sell, base, 0.0)
                rand_names = [x if s else None for x, s in zip(names, sell, strict=True)]
                n_all += world == "placebo"
                for m in methods:
                    c = paired_comparison(
                        "random_sell",
                        "always_sell",
                        rand,
                        base,
                        rand_names,
                        names,
                        block_length=block,
                        seed=seed,
                        ci_method=m,
                    )
                    if world == "placebo":
                        fp_all[m] += _significant(c)
                        fp_first[m] += _significant(c) and d == 0
                    else:
                        power_random[m] += c.ci_high < 0
            if world == "rich_premium":
                for m in methods:
                    c = paired_comparison(
                        "always_sell",
                        "never_sell",
                        base,
                        zeros,
                        names,
                        nones,
                        block_length=block,
                        seed=seed,
                        ci_method=m,
                    )
                    power_never[m] += c.ci_low > 0
            print(
                f"{world} seed {seed}: {n} decisions, {time.perf_counter() - t0:.0f} s", flush=True
            )
    s = args.seeds
    print(f"decisions per seed: {n}; block length: {block} decisions")
    for m in methods:
        print(
            f"[{m}] placebo false-positive rate, random_sell vs always_sell: "
            f"{fp_first[m]}/{s} seeds ({fp_first[m] / s:.0%}); over {n_all} seed x draw pairs: "
            f"{fp_all[m]}/{n_all} ({fp_all[m] / n_all:.0%}); nominal 5%"
        )
        print(
            f"[{m}] rich_premium power, always_sell > never_sell: {power_never[m]}/{s} "
            f"({power_never[m] / s:.0%}); always_sell > random_sell: {power_random[m]}/{s} "
            f"({power_random[m] / s:.0%})"
        )
    print(f"total time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
