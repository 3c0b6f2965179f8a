"""The vectorised label steps (path coverage, sale-bar seeds, drawdowns) equal per-instrument loops.

Each reference below is the straightforward per-instrument (or per-candidate) loop the simulator
ran before it worked on all instruments at once; the tests compare both on real simulators and,
with hypothesis, on random paths with gaps, partial coverage and repeated sale bars.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from harness.data.synthetic import SyntheticMarket
from harness.engine.outcomes import covered_drawdown_pct
from harness.policies.rules import always_sell, make_rule
from harness.simulator import CoveredCallSimulator, _ffill
from harness.types import CallSimulationConfig, DecisionRecord
from tests.test_simulator import ProtocolOnly


def reference_drawdowns(
    paths: dict[str, tuple[int, np.ndarray]],
    close: np.ndarray,
    names: np.ndarray,
    open_bar: np.ndarray,
    last_bar: np.ndarray,
    cash: np.ndarray,
    final_value: np.ndarray,
) -> np.ndarray:
    """One candidate at a time: S - C + cash over its bars (NaN off its path), then the final value."""
    out = np.zeros(len(names))
    for i, name in enumerate(names):
        a, b = int(open_bar[i]), int(last_bar[i])
        start, path = paths[str(name)]
        marks = np.full(b - a + 1, np.nan)
        lo, hi = max(a, start), min(b, start + len(path) - 1)
        if hi >= lo:
            marks[lo - a : hi - a + 1] = path[lo - start : hi - start + 1]
        row = np.r_[close[a : b + 1] - marks + cash[i], final_value[i] + cash[i]]
        out[i] = covered_drawdown_pct(row)[0]
    return out


def reference_seed_paths(
    paths: dict[str, tuple[int, np.ndarray]],
    seeds: dict[str, dict[int, float]],
    names: np.ndarray,
    open_bar: np.ndarray,
    marks: np.ndarray,
) -> None:
    """One candidate at a time in the callers' order: record the seed, fill the bar if it has no mark."""
    for name, bar, mark in zip(names.tolist(), open_bar.tolist(), marks.tolist(), strict=True):
        if not np.isfinite(mark):
            continue
        seeds.setdefault(str(name), {})[bar] = mark
        start, path = paths[str(name)]
        x = bar - start
        if 0 <= x < len(path) and np.isnan(path[x]):
            path = path.copy()
            path[x] = mark
            paths[str(name)] = (start, _ffill(path))


def bare_simulator(paths: dict[str, tuple[int, np.ndarray]], close: np.ndarray) -> Any:
    """A simulator shell holding only mark paths and closes (what the label steps read)."""
    sim = object.__new__(CoveredCallSimulator)
    sim._paths = paths
    sim._seeds = {}
    sim._seed_batches = []
    sim.close = close
    return sim


@st.composite
def paths_and_candidates(draw: st.DrawFn) -> tuple[Any, ...]:
    """Random paths (gaps, leading gaps, short ranges) and candidates (repeats, partial cover)."""
    n_bars = draw(st.integers(8, 60))
    close = np.array(draw(st.lists(st.floats(50, 200), min_size=n_bars, max_size=n_bars)))
    n_names = draw(st.integers(1, 5))
    paths = {}
    for u in range(n_names):
        start = draw(st.integers(0, n_bars - 1))
        length = draw(st.integers(1, n_bars - start))
        cells = draw(
            st.lists(st.one_of(st.floats(0, 60), st.just(np.nan)), min_size=length, max_size=length)
        )
        paths[f"X-{u}"] = (start, np.array(cells, dtype=float))
    n = draw(st.integers(1, 25))
    names, a, b, cash, final, marks = [], [], [], [], [], []
    for _ in range(n):
        names.append(f"X-{draw(st.integers(0, n_names - 1))}")
        lo = draw(st.integers(0, n_bars - 1))
        a.append(lo)
        b.append(draw(st.integers(lo, n_bars - 1)))
        cash.append(draw(st.floats(-20, 40)))
        final.append(draw(st.floats(20, 250)))
        marks.append(draw(st.one_of(st.floats(0, 60), st.just(np.nan))))
    return (
        paths,
        close,
        np.array(names, dtype=object),
        np.array(a, dtype=np.int64),
        np.array(b, dtype=np.int64),
        np.array(cash),
        np.array(final),
        np.array(marks),
    )


@given(paths_and_candidates())
def test_drawdowns_of_all_instruments_at_once_equal_a_per_candidate_loop(case) -> None:
    paths, close, names, a, b, cash, final, _ = case
    got = bare_simulator(paths, close)._drawdowns(names, a, b, cash, final)
    want = reference_drawdowns(paths, close, names, a, b, cash, final)
    np.testing.assert_array_equal(got, want)  # bit for bit


@given(paths_and_candidates())
def test_seeds_of_all_instruments_at_once_equal_a_per_candidate_loop(case) -> None:
    paths, close, names, a, _, _, _, marks = case
    # held paths are carried forward, so their only gaps lead; a raw gap is kept in some
    held = {n: (s, _ffill(p) if i % 2 else p) for i, (n, (s, p)) in enumerate(paths.items())}
    sim = bare_simulator(copy.deepcopy(held), close)
    changed = sim._seed_paths(names, a, marks)
    want_paths, want_seeds = copy.deepcopy(held), {}
    reference_seed_paths(want_paths, want_seeds, names, a, marks)
    assert sim._seed_dict() == want_seeds
    assert sim._paths.keys() == want_paths.keys()
    for n, (start, path) in want_paths.items():
        assert sim._paths[n][0] == start
        np.testing.assert_array_equal(sim._paths[n][1], path)
    assert changed == any(
        not np.array_equal(held[n][1], want_paths[n][1], equal_nan=True) for n in held
    )


class RecordsBars(ProtocolOnly):
    """A protocol-only source that records each option-bar request as bar indices."""

    def __init__(self, market: SyntheticMarket) -> None:
        super().__init__(market)
        self.asked: list[tuple[str, pd.Timestamp, pd.Timestamp]] = []

    def get_option_ohlc(self, instrument_name, start, end, timeframe):
        self.asked.append((instrument_name, pd.Timestamp(start), pd.Timestamp(end)))
        return super().get_option_ohlc(instrument_name, start, end, timeframe)


def reference_need(
    paths: dict[str, tuple[int, np.ndarray]],
    names: np.ndarray,
    first_bar: np.ndarray,
    last_bar: np.ndarray,
) -> dict[str, tuple[int, int]]:
    """Per instrument: the union of its requested bars, widened to what is held, if not covered."""
    lo: dict[str, int] = {}
    hi: dict[str, int] = {}
    for n, a, b in zip(names.tolist(), first_bar.tolist(), last_bar.tolist(), strict=True):
        lo[n] = min(lo.get(n, a), a)
        hi[n] = max(hi.get(n, b), b)
    need = {}
    for n in lo:
        a, b = lo[n], hi[n]
        if n in paths:
            start, end = paths[n][0], paths[n][0] + len(paths[n][1]) - 1
            if start <= a and end >= b:
                continue
            a, b = min(a, start), max(b, end)
        need[n] = (a, b)
    return need


def test_paths_are_requested_for_exactly_the_uncovered_instruments(market) -> None:
    src = RecordsBars(market)
    cfg = CallSimulationConfig(
        underlying="BTC",
        start="2024-03-01",
        end="2024-03-12",
        timeframe="1h",
        decision_interval_bars=6,
    )
    sim = CoveredCallSimulator(src, cfg)
    rows = sim.cand_row
    names = sim.store.names[rows]
    assert len(np.unique(names.astype(str))) >= 4
    a = sim._bar_at_or_before(sim.dec_ns[sim.cand_dec])
    b = np.minimum(a + 30, len(sim.bar_ns) - 1)
    rng = np.random.default_rng(3)
    for step in range(3):  # a first load, then wider and narrower ranges over held paths
        pick = rng.choice(len(rows), size=min(len(rows), 40), replace=False)
        lo = np.maximum(a[pick] - rng.integers(0, 8, len(pick)) * step, 0)
        hi = np.minimum(b[pick] + rng.integers(0, 8, len(pick)) * step, len(sim.bar_ns) - 1)
        want = reference_need(sim._paths, names[pick], lo, hi)
        src.asked.clear()
        sim._ensure_paths(names[pick], lo, hi)
        got = {
            n: (
                int(np.searchsorted(sim.bar_ns, s.value)),
                int(np.searchsorted(sim.bar_ns, e.value)),
            )
            for n, s, e in src.asked
        }
        assert got == want
        assert [n for n, _, _ in src.asked] == list(want)


class LateBars(ProtocolOnly):
    """Option bars of every other instrument start 5 hours into each request: leading gaps."""

    def get_option_ohlc(self, instrument_name, start, end, timeframe):
        bars = super().get_option_ohlc(instrument_name, start, end, timeframe)
        if int(instrument_name.split("-")[2]) % 2000 == 0:
            bars = bars[bars.index >= pd.Timestamp(start) + pd.Timedelta(hours=5)]
        return bars


def test_labels_drawdowns_and_seeds_on_a_protocol_only_source_equal_the_loops(market) -> None:
    """Real paths with leading gaps (option bars start after the sale): the sale bars are seeded."""
    cfg = CallSimulationConfig(
        underlying="BTC",
        start="2024-03-01",
        end="2024-03-15",
        timeframe="1h",
        decision_interval_bars=4,
    )
    sim = CoveredCallSimulator(LateBars(market), cfg)
    ks = np.arange(len(sim.cand_row))
    rows = sim.cand_row[ks]
    names = sim.store.names[rows]
    open_bar = sim._bar_at_or_before(sim.dec_ns[sim.cand_dec[ks]])
    last_bar = np.maximum(
        np.searchsorted(sim.bar_ns, sim.store.expiry_ns[rows], side="left") - 1, open_bar
    )
    sim._ensure_paths(names, open_bar, last_bar)
    held = copy.deepcopy(sim._paths)
    gaps = [n for n, (_, p) in held.items() if np.isnan(p).any()]
    assert 0 < len(gaps) < len(held)  # some paths to seed, some complete
    marks = sim.store.columns["mark_price"][rows]
    assert sim._seed_paths(names, open_bar, marks)  # a path changed
    want_paths, want_seeds = copy.deepcopy(held), {}
    reference_seed_paths(want_paths, want_seeds, names, open_bar, marks)
    assert sim._seed_dict() == want_seeds
    for n, (start, path) in want_paths.items():
        assert sim._paths[n][0] == start
        np.testing.assert_array_equal(sim._paths[n][1], path)
    o = sim._outcomes(ks)
    cash = o["premium"] - o["open_fee"]
    final = o["settlement_price"] - o["payoff"] - o["delivery_fee"]
    want = reference_drawdowns(sim._paths, sim.close, names, open_bar, last_bar, cash, final)
    np.testing.assert_array_equal(o["max_drawdown_pct"], want)


def test_drawdowns_of_a_subset_of_candidates_equal_their_labels(sim) -> None:
    """Trades ask for a few candidates: their codes and table are a subset's, values the same."""
    labels = sim._outcomes(np.arange(len(sim.cand_row)))
    ks = np.arange(len(sim.cand_row))[::7][::-1]
    sub = sim._outcomes(ks)
    np.testing.assert_array_equal(sub["max_drawdown_pct"], labels["max_drawdown_pct"][ks])


def test_a_replay_settles_the_same_before_and_after_the_labels(market, small_config) -> None:
    """Settlement costs come from the labels when they exist, else per expiry: same replay."""

    plain = CoveredCallSimulator(market, small_config)
    labelled = CoveredCallSimulator(market, small_config)
    labelled.counterfactual_labels()
    for policy in (always_sell(), make_rule("iv_rich", {"threshold": 0.0})):
        a, b = plain.simulate_policy(policy), labelled.simulate_policy(policy)
        assert len(a.trades) >= 3
        np.testing.assert_array_equal(a.equity_curve.to_numpy(), b.equity_curve.to_numpy())
        assert a.equity_curve.index.equals(b.equity_curve.index)
        assert a.trades == b.trades
        assert a.decisions == b.decisions
    # the final cash of a hold-to-expiry replay: each settled call's payoff and delivery fee
    ks = np.array([k for k in range(len(plain.cand_row)) if plain._settle_known[k]])
    _, payoff, dfee = plain._settlement_flows(ks)
    np.testing.assert_array_equal(plain._settle_cost[ks], payoff + dfee)


def test_decision_records_and_their_times_equal_freshly_built_ones(sim) -> None:
    stamps = sim._record_parts()[0]
    assert stamps == [pd.Timestamp(t, tz="UTC") for t in sim.dec_ns.tolist()]
    assert all(s.tz == pd.Timestamp(0, tz="UTC").tz and s.unit == "ns" for s in stamps)
    for i in range(0, len(sim.dec_ns), 37):
        for note in ("call open", "holding", "no candidates", ""):
            rec = sim._idle_record(i, note)
            assert rec is sim._idle_record(i, note)  # shared by every replay
            assert rec == DecisionRecord(
                decision_time=pd.Timestamp(int(sim.dec_ns[i]), tz="UTC"),
                candidate_names=tuple(
                    str(n)
                    for n in sim.store.names[sim.cand_row[sim.cand_start[i] : sim.cand_stop[i]]]
                ),
                spot_stale=bool(sim.spot_stale[i]),
                chosen=None,
                asked=note != "call open",
                note=note,
            )


def reference_label_frame(sim: CoveredCallSimulator, o: dict[str, np.ndarray]) -> pd.DataFrame:
    """The label frame as two frames (sells, doing nothing) concatenated, then sorted."""
    size, st, rows = sim.size, sim.store, sim.cand_row
    sell = pd.DataFrame(
        {
            "decision_time": pd.to_datetime(sim.dec_ns[sim.cand_dec], utc=True),
            "action": "SELL_CALL",
            "instrument_name": st.names[rows],
            "strike": o["strike"],
            "expiry": pd.to_datetime(o["expiry"], utc=True),
            "dte_days": sim.cand_dte,
            "delta": st.columns["delta"][rows],
            "mark_iv": st.columns["mark_iv"][rows],
            "underlying_price": o["underlying_price"],
            "mark_price": st.columns["mark_price"][rows],
            "bid_price": st.columns["bid_price"][rows],
            "ask_price": st.columns["ask_price"][rows],
            "premium": size * o["premium"],
            "premium_per_coin": o["premium"],
            "fees": size * (o["open_fee"] + o["delivery_fee"]),
            "settlement_price": o["settlement_price"],
            "payoff": size * o["payoff"],
            "in_the_money": o["payoff"] > 0,
            "pnl_vs_hodl": size * o["pnl_vs_hodl"],
            "pnl_coin": size * o["pnl_coin"],
            "return_bps": o["pnl_vs_hodl"] / o["underlying_price"] * 1e4,
            "max_drawdown_pct": o["max_drawdown_pct"],
        }
    )
    nothing = pd.DataFrame(
        {
            "decision_time": pd.to_datetime(sim.dec_ns, utc=True),
            "action": "DO_NOTHING",
            "instrument_name": None,
            "underlying_price": sim._features["spot"],
            "premium": 0.0,
            "premium_per_coin": 0.0,
            "fees": 0.0,
            "payoff": 0.0,
            "in_the_money": False,
            "pnl_vs_hodl": 0.0,
            "pnl_coin": 0.0,
            "return_bps": 0.0,
            "max_drawdown_pct": np.nan,
        }
    )
    labels = pd.concat([sell, nothing], ignore_index=True)
    labels["_sell_first"] = labels["action"] == "DO_NOTHING"
    labels = labels.sort_values(
        ["decision_time", "_sell_first", "expiry", "strike"], kind="stable", na_position="first"
    )
    labels = labels.drop(columns="_sell_first").reset_index(drop=True)
    best = labels.groupby("decision_time")["pnl_vs_hodl"].transform("max")
    labels["best_pnl_vs_hodl"] = best
    labels["regret"] = best - labels["pnl_vs_hodl"]
    return labels


def test_the_label_frame_equals_concatenated_sorted_frames(market) -> None:
    """Every column, value, dtype and row of the labels, built in order at once."""
    for cfg in (
        CallSimulationConfig(
            underlying="BTC", start="2024-03-01", end="2024-04-10", timeframe="1h", target_dte=3
        ),
        CallSimulationConfig(
            underlying="BTC", start="2024-03-01", end="2024-03-12", timeframe="4h", target_dte=7
        ),
    ):
        sim = CoveredCallSimulator(market, cfg)
        got = sim.counterfactual_labels()
        want = reference_label_frame(sim, sim._outcomes(np.arange(len(sim.cand_row))))
        assert (got["action"] == "DO_NOTHING").sum() == len(sim.dec_ns)
        assert list(got.columns) == list(want.columns)
        assert list(got.dtypes) == list(want.dtypes)
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_seeds_kept_as_batches_fill_a_path_reloaded_over_a_wider_range(market) -> None:
    """Seeds reach the per-instrument dicts only when a loaded path has a gap: the same paths
    as adding them at once, and they do fill the reloaded gaps."""
    cfg = CallSimulationConfig(
        underlying="BTC", start="2024-03-01", end="2024-03-12", timeframe="1h"
    )

    def reloaded(seeds: str) -> CoveredCallSimulator:
        sim = CoveredCallSimulator(LateBars(market), cfg)
        rows = sim.cand_row
        names = sim.store.names[rows]
        open_bar = sim._bar_at_or_before(sim.dec_ns[sim.cand_dec])
        last_bar = np.searchsorted(sim.bar_ns, sim.store.expiry_ns[rows], side="left") - 1
        sim._ensure_paths(names, open_bar, last_bar)
        sim._seed_paths(names, open_bar, sim.store.columns["mark_price"][rows])
        if seeds == "added":
            sim._seed_dict()
        elif seeds == "dropped":
            sim._seed_batches.clear()
        # two bars earlier: every path loads again, its first 5 bars without marks again
        sim._ensure_paths(names, np.maximum(open_bar - 2, 0), last_bar)
        return sim

    lazy, eager, none = reloaded("batched"), reloaded("added"), reloaded("dropped")
    assert lazy._seed_dict() == eager._seed_dict()
    assert lazy._paths.keys() == eager._paths.keys() == none._paths.keys()
    seeded = 0
    for n, (start, path) in eager._paths.items():
        assert lazy._paths[n][0] == start
        np.testing.assert_array_equal(lazy._paths[n][1], path)
        seeded += not np.array_equal(none._paths[n][1], path, equal_nan=True)
    assert seeded > 0
