"""The columnar chain store: filled from any source, answered by slices."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.source import CHAIN_COLUMNS, frame_to_snapshots, snapshots_to_frame
from harness.data.store import ChainStore
from harness.data.synthetic import SyntheticMarket


class ChainOnly:
    """Only the protocol's chain method matters to the store."""

    def __init__(self, market: SyntheticMarket, leak: bool = False) -> None:
        self.market, self.leak = market, leak

    def list_option_chain(self, underlying, as_of):
        t = pd.Timestamp(as_of) + (pd.Timedelta("1h") if self.leak else pd.Timedelta(0))
        return self.market.list_option_chain(underlying, t)

    def get_spot_ohlc(self, *a):  # pragma: no cover - not used by the store
        raise NotImplementedError

    def get_option_ohlc(self, *a):  # pragma: no cover
        raise NotImplementedError


def test_generic_and_bulk_fill_agree(market: SyntheticMarket) -> None:
    times = pd.date_range("2024-04-01", periods=3, freq="6h", tz="UTC")
    bulk = ChainStore.from_source(market, "BTC", times, calls_only=True, max_dte=10)
    generic = ChainStore.from_source(ChainOnly(market), "BTC", times, calls_only=True, max_dte=10)
    assert len(bulk) == len(generic) > 0
    pd.testing.assert_frame_equal(bulk.frame, generic.frame)
    assert (bulk.frame["kind"] == "call").all() and (bulk.dte_days() <= 10).all()


def test_slices_and_latest_snapshot(market: SyntheticMarket) -> None:
    times = pd.date_range("2024-04-01", periods=3, freq="6h", tz="UTC")
    store = ChainStore.from_source(market, "ETH", times)
    for i, t in enumerate(times):
        part = store.frame.iloc[store.rows_at(i)]
        assert (part["as_of"] == t).all() and len(part) > 100
    mid = times[1] + pd.Timedelta("2h")
    assert store.frame_at(mid)["as_of"].iloc[0] == times[1]
    with pytest.raises(KeyError, match="no chain snapshot"):
        store.time_index(times[0] - pd.Timedelta("1s"))
    snaps = store.snapshots_at(times[2])
    pd.testing.assert_frame_equal(
        snapshots_to_frame(snaps), store.frame_at(times[2]).reset_index(drop=True)
    )
    assert frame_to_snapshots(store.frame_at(times[2]))[0] == snaps[0]


def test_a_source_that_returns_later_quotes_is_refused(market: SyntheticMarket) -> None:
    times = pd.date_range("2024-04-01", periods=2, freq="6h", tz="UTC")
    with pytest.raises(ValueError, match="leak the future"):
        ChainStore.from_source(ChainOnly(market, leak=True), "BTC", times)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),  # snapshot
            st.booleans(),  # call
            st.integers(1, 3),  # expiry day
            st.sampled_from([50_000.0, 60_000.0, 70_000.0]),
        ),
        min_size=0,
        max_size=30,
        unique=True,
    )
)
def test_store_rows_are_sorted_whatever_the_input_order(rows) -> None:
    t0 = pd.Timestamp("2024-04-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "as_of": [t0 + pd.Timedelta(hours=6 * s) for s, _, _, _ in rows],
            "instrument_name": [
                f"BTC-{e}APR24-{int(k)}-{'C' if c else 'P'}" for _, c, e, k in rows
            ],
            "underlying": "BTC",
            "kind": ["call" if c else "put" for _, c, _, _ in rows],
            "strike": [k for *_, k in rows],
            "expiry": [t0 + pd.Timedelta(days=e, hours=8) for _, _, e, _ in rows],
            **{c: 1.0 for c in CHAIN_COLUMNS[6:]},
        },
        columns=list(CHAIN_COLUMNS),
    )
    times = pd.date_range(t0, periods=4, freq="6h")
    store = ChainStore(frame, times)
    key = list(
        zip(store.as_of_ns, ~store.is_call, store.expiry_ns, store.columns["strike"], strict=True)
    )
    assert key == sorted(key) and len(store) == len(rows)
    # already-sorted columns are kept as they are, and give the same store
    again = ChainStore.from_columns(store.cols, times)
    assert list(again.names) == list(store.names)


class BulkWithoutFilters:
    """A bulk source whose `chain_frame` takes no `kinds`/`max_dte`: the store filters itself."""

    def __init__(self, market: SyntheticMarket) -> None:
        self.market = market

    def list_option_chain(self, underlying, as_of):  # pragma: no cover - bulk path used
        raise NotImplementedError

    def chain_frame(self, underlying, times):
        return self.market.chain_frame(underlying, times)

    def option_marks(self, names, times):  # pragma: no cover - not used by the store
        raise NotImplementedError

    def get_spot_ohlc(self, *a):  # pragma: no cover
        raise NotImplementedError

    def get_option_ohlc(self, *a):  # pragma: no cover
        raise NotImplementedError


def _direct(market: SyntheticMarket, t: pd.Timestamp, max_dte: float) -> list[str]:
    """The source's own calls at t with dte <= max_dte, by a loop over its chain."""
    return sorted(
        o.instrument_name
        for o in market.list_option_chain("BTC", t)
        if o.kind == "call" and (o.expiry - o.as_of) / pd.Timedelta(days=1) <= max_dte
    )


def test_filters_apply_when_the_bulk_source_ignores_them(market: SyntheticMarket) -> None:
    times = pd.date_range("2024-04-01", periods=2, freq="6h", tz="UTC")
    store = ChainStore.from_source(
        BulkWithoutFilters(market), "BTC", times, calls_only=True, max_dte=10
    )
    for i, t in enumerate(times):
        got = sorted(store.frame.iloc[store.rows_at(i)]["instrument_name"])
        assert got == _direct(market, t, 10)


def test_an_expiry_exactly_max_dte_away_is_kept(market: SyntheticMarket) -> None:
    t = pd.Timestamp("2024-04-01T08:00Z")
    dtes = sorted(
        {(o.expiry - t) / pd.Timedelta(days=1) for o in market.list_option_chain("BTC", t)}
    )
    edge = next(d for d in dtes if d == int(d) and d > 0)  # an 08:00 expiry whole days away
    for source in (market, ChainOnly(market)):
        store = ChainStore.from_source(source, "BTC", [t], calls_only=True, max_dte=edge)
        assert sorted(store.frame["instrument_name"]) == _direct(market, t, edge)
        assert store.dte_days().max() == edge


def test_lowercase_underlying_fills_the_same_store(market: SyntheticMarket) -> None:
    times = pd.date_range("2024-04-01", periods=2, freq="6h", tz="UTC")
    upper = ChainStore.from_source(ChainOnly(market), "BTC", times, calls_only=True, max_dte=5)
    lower = ChainStore.from_source(ChainOnly(market), "btc", times, calls_only=True, max_dte=5)
    pd.testing.assert_frame_equal(upper.frame, lower.frame)
    assert set(lower.frame["underlying"]) == {"BTC"}


@pytest.mark.parametrize("bulk", [True, False])
def test_progress_reports_every_snapshot_and_ends_at_the_total(market, bulk: bool) -> None:
    times = pd.date_range("2024-04-01", periods=3, freq="6h", tz="UTC")
    calls: list[tuple[int, int]] = []
    source = market if bulk else ChainOnly(market)
    ChainStore.from_source(
        source, "BTC", times, calls_only=True, max_dte=3, progress=lambda *a: calls.append(a)
    )
    assert calls == ([(3, 3)] if bulk else [(1, 3), (2, 3), (3, 3)])


def test_a_chain_frame_round_trips_through_the_store(market: SyntheticMarket) -> None:
    # every column, the underlying included, comes back as it went in (in store order)
    times = pd.date_range("2024-04-01", periods=2, freq="6h", tz="UTC")
    frame = pd.concat([snapshots_to_frame(market.list_option_chain("ETH", t)) for t in times])
    store = ChainStore(frame.sample(frac=1.0, random_state=3), times)
    order = ["as_of", "kind", "expiry", "strike"]
    want = frame.sort_values(order).reset_index(drop=True)
    got = store.frame.sort_values(order).reset_index(drop=True)
    assert set(got["underlying"]) == {"ETH"}
    pd.testing.assert_frame_equal(got[list(CHAIN_COLUMNS)], want[list(CHAIN_COLUMNS)])


def test_a_frame_with_two_underlyings_is_refused_by_name(market: SyntheticMarket) -> None:
    # a store holds one underlying: mixing BTC and ETH rows used to label them all BTC
    times = pd.date_range("2024-04-01", periods=1, freq="6h", tz="UTC")
    btc = snapshots_to_frame(market.list_option_chain("BTC", times[0]))
    eth = snapshots_to_frame(market.list_option_chain("ETH", times[0]))
    with pytest.raises(ValueError, match=r"one underlying.*BTC, ETH"):
        ChainStore(pd.concat([btc, eth]), times)
    assert set(ChainStore(eth, times).frame["underlying"]) == {"ETH"}


class StaleChain(ChainOnly):
    """Answers each request with the chain of 30 minutes earlier (a source that lags)."""

    def list_option_chain(self, underlying, as_of):
        return self.market.list_option_chain(
            underlying, pd.Timestamp(as_of) - pd.Timedelta("30min")
        )


def test_snapshots_are_keyed_by_the_instant_asked_even_when_the_source_lags(
    market: SyntheticMarket,
) -> None:
    times = pd.date_range("2024-04-01", periods=3, freq="6h", tz="UTC")
    lagging = StaleChain(market)
    store = ChainStore.from_source(lagging, "BTC", times, calls_only=True, max_dte=10)
    assert sorted(set(store.frame["as_of"])) == list(times)
    for t in times:
        expected = {o.instrument_name for o in lagging.list_option_chain("BTC", t)}
        got = set(store.frame_at(t)["instrument_name"])
        assert got and got <= expected


def test_a_store_of_calls_and_puts_holds_every_put_of_the_chain(market: SyntheticMarket) -> None:
    times = pd.date_range("2024-04-01", periods=2, freq="12h", tz="UTC")
    store = ChainStore.from_source(market, "BTC", times)  # calls_only=False: both kinds
    for t in times:
        chain = market.list_option_chain("BTC", t)
        want = {k: sorted(o.instrument_name for o in chain if o.kind == k) for k in ("call", "put")}
        assert want["put"], "the synthetic chain lists puts"
        frame = store.frame_at(t)
        for kind in ("call", "put"):
            assert sorted(frame.loc[frame["kind"] == kind, "instrument_name"]) == want[kind]


def test_a_chain_selection_without_calls_only_is_refused_with_the_fix(
    market: SyntheticMarket,
) -> None:
    from harness.data.chain_select import ChainSelection

    sel = ChainSelection(min_dte=5.0, max_dte=9.0, min_delta=0.1, max_delta=0.4, atm_dte=7.0)
    times = pd.date_range("2024-04-01", periods=2, freq="12h", tz="UTC")
    with pytest.raises(ValueError, match="keeps calls only: pass calls_only=True"):
        ChainStore.from_source(market, "BTC", times, select=sel)
