"""Calibration of the paired comparison on synthetic worlds with a known answer.

Placebo world (no edge): first, is every policy's expected reward really zero? The mean reward
per seed of always_sell and random_sell, averaged over independent seeds, with a t interval
across seeds. Then how often the paired comparison calls a random-sell policy "significant"
against always_sell (the 95% interval of the mean difference excludes 0): the false-positive
rate, which must be near the nominal 5%, with its Clopper-Pearson interval over seeds (one
random-sell draw per seed, so seeds are independent trials). Rich-premium world (a known
positive edge for sellers): how often always_sell is significant against never_sell, and
always_sell against random_sell, at one year of 4-hour decisions (the power).

Rewards are what the experiment runner scores: per decision, the hold-to-expiry pnl vs HODL of
the call a policy sells (0 for doing nothing), with `fill: mark` and no fees. The block length
is the runner's: a call's life over the decision spacing. Every interval method of
`harness.stats.paired_comparison` is reported (`bootstrap_t` is the default).
Run: nice .venv/bin/python benchmarks/bench_calibration.py [--placebo-seeds 300]
     [--rich-seeds 40] [--draws 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.data.placebo_fixtures (the same placebo config)

from harness.data.synthetic import SyntheticMarket  # noqa: E402
from harness.simulator import CoveredCallSimulator  # noqa: E402
from harness.stats import CI_METHODS, paired_comparison  # noqa: E402
from harness.types import CallSimulationConfig  # noqa: E402
from tests.data.placebo_fixtures import placebo_config  # noqa: E402


def block_length(cfg: CallSimulationConfig) -> int:
    """The runner's block length: a call's life over the decision spacing, in decisions."""
    spacing = pd.Timedelta(cfg.timeframe) * cfg.decision_interval_bars
    return max(1, math.ceil(pd.Timedelta(days=cfg.target_dte + cfg.dte_tolerance) / spacing))


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


def random_sell(base: np.ndarray, names: list, seed: int, draw: int) -> tuple[np.ndarray, list]:
    """always_sell's call with probability 1/2 at each decision, else nothing."""
    sell = np.random.default_rng([seed, draw]).random(len(base)) < 0.5
    return np.where(sell, base, 0.0), [x if s else None for x, s in zip(names, sell, strict=True)]


def evaluate_seed(
    world: str, seed: int, base: np.ndarray, names: list, block: int, draws: int
) -> dict[str, object]:
    """Interval outcomes of one market seed for every `ci_method`, plus its mean rewards."""
    out: dict[str, object] = {"always_sell_mean": float(base.mean())}
    n = len(base)
    zeros, nones = np.zeros(n), [None] * n
    for m in CI_METHODS:
        sig = []
        for d in range(draws if world == "placebo" else 1):
            rand, rand_names = random_sell(base, names, seed, d)
            if d == 0:
                out["random_sell_mean"] = float(rand.mean())
            c = paired_comparison(
                "random_sell", "always_sell", rand, base, rand_names, names,
                block_length=block, seed=seed, ci_method=m,
            )  # fmt: skip
            sig.append(c.ci_low > 0 or c.ci_high < 0 if world == "placebo" else c.ci_high < 0)
        out[f"{m}:random"] = sig
        if world == "rich_premium":
            c = paired_comparison(
                "always_sell", "never_sell", base, zeros, names, nones,
                block_length=block, seed=seed, ci_method=m,
            )  # fmt: skip
            out[f"{m}:never"] = c.ci_low > 0
    return out


def seed_rewards(world: str, seed: int, cfg: CallSimulationConfig) -> tuple[np.ndarray, list]:
    """always_sell's per-decision rewards and calls on one market seed of `world`."""
    sim = CoveredCallSimulator(SyntheticMarket(seed=seed, world=world), cfg)
    return always_sell_rewards(sim.counterfactual_labels(), cfg.target_delta)


def rate(hits: int, trials: int) -> str:
    """hits/trials (share) [95% Clopper-Pearson interval]."""
    ci = sps.binomtest(hits, trials).proportion_ci(confidence_level=0.95, method="exact")
    return f"{hits}/{trials} ({hits / trials:.1%}) [95% CI {ci.low:.1%}, {ci.high:.1%}]"


def mean_ci(x: Sequence[float]) -> str:
    """Mean across independent seeds with a t interval (seeds are i.i.d.)."""
    a = np.asarray(x, dtype=float)
    se = a.std(ddof=1) / np.sqrt(len(a))
    t = sps.t.ppf(0.975, len(a) - 1)
    return f"{a.mean():+.2f} USD [95% CI {a.mean() - t * se:+.2f}, {a.mean() + t * se:+.2f}]"


def summarize(results: dict[str, list[dict]], block: int, n: int) -> None:
    """Print the edge check, false-positive rates and power of every method."""
    print(f"decisions per seed: {n}; block length (trade life): {block} decisions")
    for world, rows in results.items():
        for pol in ("always_sell", "random_sell"):
            print(
                f"{world}: {pol} mean reward per decision over {len(rows)} seeds: "
                f"{mean_ci([r[f'{pol}_mean'] for r in rows])}"
            )
    placebo, rich = results.get("placebo", []), results.get("rich_premium", [])
    for m in CI_METHODS:
        if placebo:
            first = sum(bool(r[f"{m}:random"][0]) for r in placebo)
            every = [bool(s) for r in placebo for s in r[f"{m}:random"]]
            print(
                f"[{m}] placebo false-positive rate, random_sell vs always_sell, first draw per "
                f"seed: {rate(first, len(placebo))}; nominal 5%"
            )
            if len(every) > len(placebo):
                print(
                    f"[{m}]   all {len(every)} seed x draw pairs (not independent): "
                    f"{sum(every)}/{len(every)} ({np.mean(every):.1%})"
                )
        if rich:
            never = sum(bool(r[f"{m}:never"]) for r in rich)
            rnd = sum(bool(r[f"{m}:random"][0]) for r in rich)
            print(
                f"[{m}] rich_premium power, always_sell > never_sell: {rate(never, len(rich))}; "
                f"always_sell > random_sell: {rate(rnd, len(rich))}"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--placebo-seeds", type=int, default=300, help="placebo market seeds")
    ap.add_argument("--rich-seeds", type=int, default=40, help="rich_premium market seeds")
    ap.add_argument("--draws", type=int, default=1, help="random-sell policies per placebo seed")
    args = ap.parse_args()
    cfg = placebo_config()
    block = block_length(cfg)
    t0 = time.perf_counter()
    results: dict[str, list[dict]] = {"placebo": [], "rich_premium": []}
    n = 0
    for world, seeds in (("placebo", args.placebo_seeds), ("rich_premium", args.rich_seeds)):
        for seed in range(seeds):
            base, names = seed_rewards(world, seed, cfg)
            n = len(base)
            results[world].append(evaluate_seed(world, seed, base, names, block, args.draws))
            print(f"{world} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    summarize(results, block, n)
    print(f"total time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
