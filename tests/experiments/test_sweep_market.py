"""Chains shared across trials give exactly the rows the source would give."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.store import ChainStore
from harness.data.synthetic import SyntheticMarket
from harness.experiments.config import ExperimentConfig, parse_config
from harness.experiments.runner import ExperimentRunner, run_experiment
from harness.experiments.sweep import run_order
from harness.experiments.sweep_backends import TrialTask, market_key
from harness.experiments.sweep_market import SharedChains, builds_chains, share_chains
from tests.experiments.sweep_fixtures import BASE


def test_shared_chains_match_the_source(market: SyntheticMarket) -> None:
    shared = share_chains(market)
    assert isinstance(shared, SharedChains)
    t = pd.date_range("2024-02-01", "2024-02-20", freq="12h", tz="UTC")
    asks = [
        (t[:20], 9.0),  # first request
        (t[5:30], 9.0),  # some new times
        (t[:10], 5.0),  # a subset with nearer expiries only
        (t[3:15], 20.0),  # longer expiries than kept: rebuilt wider
        (t[::3], 12.0),
    ]
    for times, max_dte in asks:
        got = shared.chain_frame("BTC", times, kinds=("call",), max_dte=max_dte)
        want = market.chain_frame("BTC", times, kinds=("call",), max_dte=max_dte)
        cols = ["as_of", "instrument_name"]
        got = got.sort_values(cols, ignore_index=True)
        want = want.sort_values(cols, ignore_index=True)
        pd.testing.assert_frame_equal(got, want)
    clone = pickle.loads(pickle.dumps(shared))
    assert clone.fingerprint() == market.fingerprint()


def test_a_trial_on_a_shared_market_equals_a_plain_run(tmp_path) -> None:
    cfg = parse_config(dict(BASE, bootstrap_resamples=100))
    shared = share_chains(SyntheticMarket(seed=BASE["market"]["seed"]))
    other = parse_config(
        dict(BASE, bootstrap_resamples=100, simulation=dict(BASE["simulation"], target_dte=3))
    )
    # another trial first, so the second one answers from kept chains
    ExperimentRunner(other, out_dir=tmp_path / "a", quiet=True, market=shared).run()
    a = ExperimentRunner(cfg, out_dir=tmp_path / "a", quiet=True, market=shared).run()
    b = run_experiment(cfg, out_dir=tmp_path / "b", quiet=True)
    assert a.metrics.keys() == b.metrics.keys()
    for name, m in a.metrics.items():
        assert m == pytest.approx(b.metrics[name], nan_ok=True)
    la = pd.read_parquet(a.run_dir / "labels.parquet")
    lb = pd.read_parquet(b.run_dir / "labels.parquet")
    pd.testing.assert_frame_equal(la, lb)


def test_chain_columns_match_the_source(market: SyntheticMarket) -> None:
    shared = share_chains(market)
    t = pd.date_range("2024-02-01", "2024-02-20", freq="12h", tz="UTC")
    for times, max_dte in [(t[:20], 9.0), (t[5:30], 9.0), (t[:10], 5.0), (t[3:15], 20.0)]:
        got = ChainStore.from_source(shared, "BTC", times, calls_only=True, max_dte=max_dte)
        want = ChainStore.from_source(market, "BTC", times, calls_only=True, max_dte=max_dte)
        pd.testing.assert_frame_equal(got.frame, want.frame)
        assert (got.row_start == want.row_start).all() and (got.row_stop == want.row_stop).all()


def test_option_marks_are_computed_once_and_match(market: SyntheticMarket) -> None:
    shared = share_chains(market)
    chain = market.chain_frame("BTC", pd.DatetimeIndex(["2024-02-05"], tz="UTC"), kinds=("call",))
    names = list(chain["instrument_name"].iloc[:6])
    hours = pd.date_range("2024-02-05", "2024-02-09", freq="1h", tz="UTC")
    for ns, times in [(names[:4], hours[:50]), (names[2:], hours[30:]), (names, hours)]:
        np.testing.assert_array_equal(
            shared.option_marks(ns, times), market.option_marks(ns, times)
        )


def test_warmed_and_shipped_market_gives_plain_runs(tmp_path) -> None:
    bands = [(0.15, 3), (0.3, 7), (0.2, 5)]
    cfgs = [
        parse_config(
            dict(
                BASE,
                bootstrap_resamples=100,
                simulation=dict(BASE["simulation"], target_delta=d, target_dte=dte),
            )
        )
        for d, dte in bands
    ]
    shared = share_chains(SyntheticMarket(seed=BASE["market"]["seed"]))
    shared.warm([c.simulation for c in cfgs])
    shipped = pickle.loads(pickle.dumps(shared))  # what a pool or Ray worker receives
    for i, cfg in enumerate(cfgs):
        a = ExperimentRunner(cfg, out_dir=tmp_path / "a", quiet=True, market=shipped).run()
        b = run_experiment(cfg, out_dir=tmp_path / f"b{i}", quiet=True)
        for name, m in a.metrics.items():
            assert m == pytest.approx(b.metrics[name], nan_ok=True)
        for f in ("labels.parquet", "equity.parquet"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(a.run_dir / f), pd.read_parquet(b.run_dir / f)
            )
        assert (a.run_dir / "decisions.jsonl").read_text() == (
            b.run_dir / "decisions.jsonl"
        ).read_text()
    # the synthetic market builds each simulator's selected rows itself: nothing kept
    assert shipped._kept_cols == {}
    same = cfgs[0].simulation
    assert shipped.simulator(same) is shipped.simulator(same)  # same band: same candidates


def test_a_rule_trial_never_imports_matplotlib(tmp_path) -> None:
    script = (
        "import sys\n"
        "from harness.experiments.config import parse_config\n"
        "from harness.experiments.runner import ExperimentRunner\n"
        "from tests.experiments.sweep_fixtures import BASE\n"
        "cfg = parse_config(dict(BASE, bootstrap_resamples=100))\n"
        f"r = ExperimentRunner(cfg, out_dir={str(tmp_path)!r}, quiet=True, html_report=False)\n"
        "s = r.run()\n"
        "assert (s.run_dir / 'report.md').is_file()\n"
        "print('matplotlib' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.stdout.strip() == "False"


def test_warm_builds_full_chains_once_for_a_source_without_selection(
    market: SyntheticMarket,
) -> None:
    class FullChains:  # the synthetic market without its selective path
        def __init__(self, source: SyntheticMarket) -> None:
            self.chain_frame = source.chain_frame
            self.option_marks = source.option_marks
            self.get_spot_ohlc = source.get_spot_ohlc
            self.list_option_chain = source.list_option_chain
            self.get_option_ohlc = source.get_option_ohlc

    shared = share_chains(FullChains(market))  # type: ignore[arg-type]
    assert isinstance(shared, SharedChains)
    cfgs = [
        parse_config(dict(BASE, simulation=dict(BASE["simulation"], target_dte=d))).simulation
        for d in (3, 7)
    ]
    shared.warm(cfgs)
    assert len(shared._kept_cols) == 1
    kept = shared._kept_cols[("BTC", ("call",))]
    for c in cfgs:
        store = ChainStore.from_source(shared, "BTC", _decisions(c), calls_only=True, max_dte=15.0)
        want = ChainStore.from_source(market, "BTC", _decisions(c), calls_only=True, max_dte=15.0)
        pd.testing.assert_frame_equal(store.frame, want.frame)
    assert shared._kept_cols[("BTC", ("call",))] is kept  # answered from the warmed rows


def test_trials_are_handed_out_by_market_then_by_dte(market: SyntheticMarket) -> None:
    class FullChains:  # a source the driver builds full chains of
        def __init__(self, source: SyntheticMarket) -> None:
            self.chain_frame = source.chain_frame
            self.option_marks = source.option_marks
            self.get_spot_ohlc = source.get_spot_ohlc

    def config(dte: int, seed: int) -> ExperimentConfig:
        sim = dict(BASE["simulation"], target_dte=dte)
        return parse_config(
            dict(BASE, simulation=sim, market={"source": "synthetic", "seed": seed})
        )

    configs = {
        i: config(dte, seed) for i, (dte, seed) in enumerate([(7, 1), (3, 2), (14, 1), (3, 1)])
    }
    tasks = [TrialTask(i, f"t{i}", "{}", False) for i in configs]
    shared = share_chains(market)
    full = share_chains(FullChains(market))  # type: ignore[arg-type]
    assert not builds_chains(shared) and builds_chains(full) and not builds_chains(market)
    seed1_first = market_key(configs[0]) < market_key(configs[1])  # markets in key order
    # inside the seed-1 market: shortest DTE first for a source answering its own band rows,
    # longest first where the driver builds the chains; trial 1 is seed 2's only trial
    for kind, seed1 in ((shared, [3, 0, 2]), (full, [2, 0, 3])):
        markets = {market_key(c): kind for c in configs.values()}
        got = [t.index for t in run_order(tasks, configs, markets)]
        assert got == ([*seed1, 1] if seed1_first else [1, *seed1])


def _decisions(c) -> pd.DatetimeIndex:
    last = c.end_ts - pd.Timedelta(days=c.target_dte)
    return pd.date_range(c.start_ts.ceil(c.bar), last, freq=c.bar * c.decision_interval_bars)


def _report(run_dir: Path) -> str:
    """report.md without what differs between any two runs: the run id and when it ran."""
    text = (run_dir / "report.md").read_text().replace(run_dir.name, "RUN")
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", "WHEN", text)


def _decision_lines(run_dir: Path) -> list[str]:
    return (run_dir / "decisions.jsonl").read_text().splitlines()


def test_trials_of_one_dte_share_states_and_equal_plain_runs(tmp_path) -> None:
    """Two delta bands at one DTE: the second trial reuses the first one's state objects,
    and each trial's decisions.jsonl and report.md are those of a plain `harness run`."""
    cfgs = [
        parse_config(
            dict(
                BASE,
                bootstrap_resamples=100,
                simulation=dict(BASE["simulation"], target_delta=d, target_dte=7),
            )
        )
        for d in (0.15, 0.3)
    ]
    shared = share_chains(SyntheticMarket(seed=BASE["market"]["seed"]))
    assert isinstance(shared, SharedChains)
    sims = [shared.simulator(c.simulation) for c in cfgs]
    first, second = (s.flat_items() for s in sims)
    assert [c.instrument_name for _, cs in first for c in cs] != [
        c.instrument_name for _, cs in second for c in cs
    ]  # different bands: different candidates ...
    assert all(a[0] is b[0] for a, b in zip(first, second, strict=True))  # ... the same states
    for i, cfg in enumerate(cfgs):
        a = ExperimentRunner(cfg, out_dir=tmp_path / "a", quiet=True, market=shared).run()
        b = run_experiment(cfg, out_dir=tmp_path / f"b{i}", quiet=True)
        assert _decision_lines(a.run_dir) == _decision_lines(b.run_dir)
        assert _report(a.run_dir) == _report(b.run_dir)


def test_states_are_not_shared_when_a_feature_differs(market: SyntheticMarket) -> None:
    """DTE 7 and 6.8 have the same decision times (every 12 h, the last 7 days before the
    end) but not always the same expiry nearest the target, so some ATM IVs differ: each
    simulator keeps the states it builds alone."""
    shared = share_chains(market)
    sims = [
        shared.simulator(
            parse_config(dict(BASE, simulation=dict(BASE["simulation"], target_dte=dte))).simulation
        )
        for dte in (7, 6.8)
    ]
    a, b = (s.flat_items() for s in sims)
    assert [s.time for s, _ in a] == [s.time for s, _ in b]
    assert any(x.atm_iv != y.atm_iv for (x, _), (y, _) in zip(a, b, strict=True))
    for sim, items in zip(sims, (a, b), strict=True):
        assert [s for s, _ in items] == [sim._state(i, None, 0.0) for i in range(len(items))]
