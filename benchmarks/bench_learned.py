"""Learned policy vs rules, out of sample, on two years of synthetic BTC.

Year 1 (2022): run the rules, export every candidate's labels, `harness train` a model.
Year 2 (2023): run the rules and the model (`type: model`) on the same decisions; every figure
for year 2 is out of sample for the model (its labels settled before 2023 began).

    PYTHONPATH=. python benchmarks/bench_learned.py [--seed 7] [--out /tmp/bench_learned]

Prints mean reward and mean regret per decision (USD, pnl_vs_hodl for 1 BTC) per policy, and the
model's own walk-forward figures from year 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from harness.experiments.config import parse_config
from harness.experiments.runner import run_experiment
from harness.training.export import export_run
from harness.training.learn import train_model

RULES = [
    {"name": "always_sell", "type": "rule", "rule": "always_sell"},
    {"name": "iv_rich", "type": "rule", "rule": "iv_rich", "params": {"threshold": 0.05}},
    {"name": "trend_pause", "type": "rule", "rule": "trend_pause"},
    {"name": "never_sell", "type": "rule", "rule": "never_sell"},
]


def config(name: str, start: str, end: str, seed: int, extra: list[dict]) -> object:
    return parse_config(
        {
            "name": name,
            "market": {"source": "synthetic", "seed": seed},
            "simulation": {
                "underlying": "BTC",
                "start": start,
                "end": end,
                "timeframe": "1h",
                "decision_interval_bars": 24,
            },
            "policies": [*RULES, *extra, {"name": "oracle", "type": "rule", "rule": "oracle"}],
            "reward": {"kind": "pnl_vs_hodl"},
            "cache": {"mode": "off"},
            "baseline": "always_sell",
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="/tmp/bench_learned")
    args = ap.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    year1 = run_experiment(
        config("learned_train", "2022-01-01", "2022-12-31", args.seed, []),
        out_dir=root / "runs",
        quiet=True,
    )
    export_run(
        year1.run_dir, fmt="parquet", out=root / "export", policy="always_sell", split="none"
    )
    trained = train_model(root / "export", root / "models" / "gbm")
    print(trained)
    t1 = time.perf_counter()
    model = {"name": "learned", "type": "model", "path": str(root / "models" / "gbm")}
    year2 = run_experiment(
        config("learned_test", "2023-01-01", "2023-12-31", args.seed, [model]),
        out_dir=root / "runs",
        quiet=True,
    )
    t2 = time.perf_counter()
    metrics = json.loads((year2.run_dir / "metrics.json").read_text())
    print(f"\nout of sample, 2023 synthetic BTC (seed {args.seed}), per decision, USD for 1 BTC:")
    print(f"{'policy':<14}{'mean reward':>14}{'mean regret':>14}{'sell rate':>12}")
    for name in year2.policies:
        m = metrics[name]
        print(
            f"{name:<14}{m['mean_reward']:>14,.2f}{m['mean_regret']:>14,.2f}{m['sell_rate']:>12.0%}"
        )
    print(f"\ntrain year + export + fit: {t1 - t0:.1f}s; test-year run: {t2 - t1:.1f}s")


if __name__ == "__main__":
    main()
