"""Chains shared across trials give exactly the rows the source would give."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.experiments.config import parse_config
from harness.experiments.runner import ExperimentRunner, run_experiment
from harness.experiments.sweep_market import SharedChains, share_chains
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
