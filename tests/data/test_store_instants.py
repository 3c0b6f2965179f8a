"""The chain store answers each instant with the snapshot taken at or before it, never later
and, at an exact snapshot time, never the one before (checked against the source's own chain)."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.data.store import ChainStore
from harness.data.synthetic import SyntheticMarket

NS = pd.Timedelta(1, "ns")


@pytest.fixture(scope="module")
def store_and_times(market: SyntheticMarket):
    times = pd.date_range("2024-04-01", periods=4, freq="6h", tz="UTC")
    return ChainStore.from_source(market, "BTC", times, calls_only=True, max_dte=10), times


def _names(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["instrument_name"])


def test_exact_snapshot_time_returns_that_snapshot(store_and_times, market) -> None:
    store, times = store_and_times
    for i, t in enumerate(times):
        assert store.time_index(t) == i
        got = store.frame_at(t)
        assert (got["as_of"] == t).all()
        direct = [o for o in market.list_option_chain("BTC", t) if o.kind == "call" and o.dte <= 10]
        assert _names(got) == sorted(o.instrument_name for o in direct)
        marks = dict(zip(got["instrument_name"], got["mark_price"], strict=True))
        for o in direct:
            assert marks[o.instrument_name] == pytest.approx(o.mark_price, rel=1e-12)
        assert [s.as_of for s in store.snapshots_at(t)] == [t] * len(direct)


def test_between_snapshots_the_earlier_one_answers(store_and_times) -> None:
    store, times = store_and_times
    for i in range(1, len(times)):
        assert store.time_index(times[i] - NS) == i - 1
        assert store.time_index(times[i - 1] + NS) == i - 1
        assert (store.frame_at(times[i] - NS)["as_of"] == times[i - 1]).all()
    assert store.time_index(times[-1] + pd.Timedelta(days=30)) == len(times) - 1
    with pytest.raises(KeyError):
        store.time_index(times[0] - NS)


def test_rows_at_and_dte_are_per_snapshot(store_and_times) -> None:
    store, times = store_and_times
    covered = 0
    for i, t in enumerate(times):
        part = store.frame.iloc[store.rows_at(i)]
        assert (part["as_of"] == t).all() and len(part) > 0
        covered += len(part)
        dte = ((part["expiry"] - part["as_of"]).dt.total_seconds() / 86400).to_numpy()
        assert list(store.dte_days()[store.rows_at(i)]) == pytest.approx(list(dte))
        keys = list(zip(part["expiry"], part["strike"], strict=True))
        assert keys == sorted(keys)
    assert covered == len(store)
