"""metrics.json of a real run against a plain loop over the run's own labels and decisions.

Every policy's mean reward and mean regret is recomputed here from `labels.parquet` (the
counterfactual reward of every candidate, DO_NOTHING = 0) and the choices in
`decisions.jsonl`, so a sign or an aggregation error in the runner is caught for every
policy, not only for the oracle whose regret is 0.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pandas as pd
import pytest

from harness.experiments.config import parse_config
from harness.experiments.runner import run_experiment

POLICIES = ("always_sell", "iv_rich", "never_sell", "oracle")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics_run")
    cfg = parse_config(
        {
            "name": "metrics",
            "market": {"source": "synthetic", "seed": 3},
            "simulation": {
                "underlying": "BTC",
                "start": "2024-02-01",
                "end": "2024-03-01",
                "timeframe": "1h",
                "decision_interval_bars": 12,
            },
            "policies": [
                {"name": "always_sell", "type": "rule", "rule": "always_sell"},
                {
                    "name": "iv_rich",
                    "type": "rule",
                    "rule": "iv_rich",
                    "params": {"threshold": 0.05},
                },
                {"name": "never_sell", "type": "rule", "rule": "never_sell"},
                {"name": "oracle", "type": "rule", "rule": "oracle"},
            ],
            "baseline": "always_sell",
            "cache": {"dir": str(tmp / "cache"), "mode": "off"},
            "bootstrap_resamples": 200,
        }
    )
    return run_experiment(cfg, out_dir=tmp / "runs", quiet=True).run_dir


def _by_hand(run_dir) -> dict[str, dict[str, float]]:
    labels = pd.read_parquet(run_dir / "labels.parquet")
    reward: dict[tuple[str, str | None], float] = {}
    best: dict[str, float] = defaultdict(lambda: 0.0)  # DO_NOTHING earns 0
    for row in labels.itertuples():
        t = pd.Timestamp(row.decision_time).isoformat()
        if row.action == "SELL_CALL":
            reward[(t, row.instrument_name)] = float(row.pnl_vs_hodl)
            best[t] = max(best[t], float(row.pnl_vs_hodl))
    rows = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    out: dict[str, dict[str, float]] = {}
    for policy in POLICIES:
        mine = [r for r in rows if r["policy"] == policy]
        rewards, regrets = [], []
        for r in mine:
            t = pd.Timestamp(r["decision_time"]).isoformat()
            got = reward[(t, r["instrument_name"])] if r["instrument_name"] else 0.0
            rewards.append(got)
            regrets.append(best[t] - got)
        n = len(mine)
        out[policy] = {
            "n": n,
            "mean_reward": sum(rewards) / n,
            "total_reward": sum(rewards),
            "mean_regret": sum(regrets) / n,
            "sell_rate": sum(r["instrument_name"] is not None for r in mine) / n,
        }
    return out


def test_mean_reward_and_regret_match_a_plain_loop(run_dir) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    hand = _by_hand(run_dir)
    for policy, h in hand.items():
        m = metrics[policy]
        assert m["n_decisions"] == h["n"] > 20
        assert m["mean_reward"] == pytest.approx(h["mean_reward"], rel=1e-9, abs=1e-9), policy
        assert m["total_reward"] == pytest.approx(h["total_reward"], rel=1e-9, abs=1e-9), policy
        assert m["mean_regret"] == pytest.approx(h["mean_regret"], rel=1e-9, abs=1e-9), policy
        assert m["sell_rate"] == pytest.approx(h["sell_rate"]), policy
        # regret is a shortfall from the best choice: never negative
        assert m["mean_regret"] >= -1e-9, policy
    assert metrics["oracle"]["mean_regret"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["never_sell"]["mean_reward"] == 0.0
    # non-oracle policies do leave something on the table in this market
    assert metrics["always_sell"]["mean_regret"] > 1.0
    assert metrics["never_sell"]["mean_regret"] > 1.0


def test_comparison_mean_diff_is_the_mean_paired_reward_gap(run_dir) -> None:
    hand = _by_hand(run_dir)
    comparison = json.loads((run_dir / "comparison.json").read_text())
    pairs = comparison["pairs"] if isinstance(comparison, dict) else comparison
    seen = 0
    for p in pairs:
        if p["baseline"] == "always_sell" and p["policy"] in hand:
            gap = hand[p["policy"]]["mean_reward"] - hand["always_sell"]["mean_reward"]
            assert p["mean_diff"] == pytest.approx(gap, rel=1e-9, abs=1e-9)
            assert p["ci_low"] <= p["mean_diff"] <= p["ci_high"]
            seen += 1
    assert seen == 3
