"""Hindsight oracles: the per-decision bound and the schedule (portfolio) bound."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.synthetic import SyntheticMarket
from harness.experiments.config import RulePolicyEntry
from harness.policies import best_schedule, oracle, oracle_schedule
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _labels(trades: list[tuple[int, int, float]], n: int) -> pd.DataFrame:
    """Labels for decisions every hour 0..n-1; trades are (decision, hours to expiry, reward)."""
    rows = [
        {
            "decision_time": T0 + pd.Timedelta(hours=d),
            "action": "SELL_CALL",
            "instrument_name": f"C{k}",
            "expiry": T0 + pd.Timedelta(hours=d + life),
            "pnl_vs_hodl": r,
        }
        for k, (d, life, r) in enumerate(trades)
    ]
    rows += [
        {
            "decision_time": T0 + pd.Timedelta(hours=d),
            "action": "DO_NOTHING",
            "instrument_name": None,
            "expiry": pd.NaT,
            "pnl_vs_hodl": 0.0,
        }
        for d in range(n)
    ]
    return pd.DataFrame(rows)


def _brute_force(trades: list[tuple[int, int, float]]) -> float:
    best = 0.0
    for r in range(1, len(trades) + 1):
        for combo in itertools.combinations(sorted(trades), r):
            # the next sale may happen at the first decision at or after the expiry
            if all(b[0] >= a[0] + a[1] for a, b in itertools.pairwise(combo)):
                best = max(best, sum(x[2] for x in combo))
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 9), st.integers(1, 5), st.floats(-5, 10, allow_nan=False, width=32)
        ),
        min_size=0,
        max_size=7,
    )
)
def test_best_schedule_matches_brute_force(trades: list[tuple[int, int, float]]) -> None:
    sched = best_schedule(_labels(trades, 10))
    assert sched["pnl_vs_hodl"].sum() == pytest.approx(_brute_force(trades), abs=1e-9)
    times = list(sched["decision_time"])
    expiries = list(sched["expiry"])
    assert all(b >= a for a, b in zip(expiries, times[1:], strict=False))


def test_schedule_beats_greedy_where_greedy_blocks_itself() -> None:
    # greedy takes 5 at hour 0 and is blocked until hour 4; two 4s fit in the same span
    labels = _labels([(0, 4, 5.0), (1, 2, 4.0), (3, 1, 4.0)], 6)
    assert list(best_schedule(labels)["instrument_name"]) == ["C1", "C2"]


@pytest.fixture(scope="module")
def h1(market: SyntheticMarket) -> CoveredCallSimulator:
    cfg = CallSimulationConfig(
        underlying="BTC", start="2024-01-01", end="2024-03-31", decision_interval_bars=4
    )
    return CoveredCallSimulator(market, cfg)


def test_schedule_replay_is_the_portfolio_bound(h1: CoveredCallSimulator) -> None:
    labels = h1.counterfactual_labels()
    sched = best_schedule(labels)
    res = h1.simulate_policy(oracle_schedule(labels))
    assert [t.instrument_name for t in res.trades] == list(sched["instrument_name"])
    got = sum(t.pnl_vs_hodl for t in res.trades)
    assert got == pytest.approx(sched["pnl_vs_hodl"].sum())
    greedy = sum(t.pnl_vs_hodl for t in h1.simulate_policy(oracle(labels)).trades)
    assert got >= greedy - 1e-9


def test_greedy_oracle_keeps_its_call_in_roll_mode(market: SyntheticMarket) -> None:
    cfg = CallSimulationConfig(
        underlying="BTC",
        start="2024-02-01",
        end="2024-03-15",
        decision_interval_bars=4,
        hold_to_expiry=False,
    )
    roll = CoveredCallSimulator(market, cfg)
    hold = CoveredCallSimulator(market, cfg.model_copy(update={"hold_to_expiry": True}))
    labels = roll.counterfactual_labels()
    r = roll.simulate_policy(oracle(labels))
    h = hold.simulate_policy(oracle(labels))
    assert r.trades and all(t.settlement_price is not None for t in r.trades)
    assert r.metrics["pnl_vs_hodl_usd"] == pytest.approx(h.metrics["pnl_vs_hodl_usd"])
    assert r.metrics["pnl_vs_hodl_usd"] > 0


def test_oracle_schedule_is_a_config_rule() -> None:
    entry = RulePolicyEntry(name="bound", rule="oracle_schedule")
    assert entry.rule == "oracle_schedule"


def test_runner_replays_oracle_schedule_from_a_config(tmp_path) -> None:
    from harness.experiments import parse_config, run_experiment

    cfg = parse_config(
        {
            "name": "bounds",
            "market": {"source": "synthetic", "seed": 3},
            "simulation": {
                "underlying": "BTC",
                "start": "2024-02-01",
                "end": "2024-03-05",
                "decision_interval_bars": 12,
            },
            "policies": [
                {"name": "always_sell", "type": "rule", "rule": "always_sell"},
                {"name": "oracle", "type": "rule", "rule": "oracle"},
                {"name": "schedule", "type": "rule", "rule": "oracle_schedule"},
            ],
            "bootstrap_resamples": 100,
        }
    )
    s = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    m = s.metrics
    assert m["schedule"]["n_trades"] > 0
    assert m["schedule"]["pnl_vs_hodl_usd"] >= m["oracle"]["pnl_vs_hodl_usd"] - 1e-6
