"""The local Parquet/CSV store and FileDataSource: layout, atomic writes, point-in-time queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data import DeribitDataSource, FileDataSource, TardisDataSource  # noqa: F401
from harness.data.errors import DataError
from harness.data.files import (
    _ohlc_frame,
    chain_partition_path,
    merge_chain,
    merge_settlements,
    merge_spot,
    normalize_ohlc,
    read_settlements,
    read_spot,
    read_table,
    spot_path,
    update_meta,
    write_table_atomic,
)
from harness.data.importers import open_market_source
from harness.data.point_in_time import ChainTable
from harness.data.source import (
    CHAIN_COLUMNS,
    BulkChainSource,
    MarketDataSource,
    SettlementSource,
    snapshots_to_frame,
)

UTC = "UTC"
T0 = pd.Timestamp("2024-03-01 00:00", tz=UTC)
H = pd.Timedelta(hours=1)


def chain_rows(specs: list[tuple[str, pd.Timestamp, pd.Timestamp, float]]) -> pd.DataFrame:
    """Store chain rows from (name, bar close, quote time, mark coin) with F = 60,000."""
    rows = []
    for name, bar, quote, mark in specs:
        u, code, k, letter = name.split("-")
        f = 60_000.0
        rows.append(
            {
                "as_of": bar,
                "instrument_name": name,
                "underlying": u,
                "kind": "call" if letter == "C" else "put",
                "strike": float(k),
                "expiry": pd.Timestamp(code, tz=UTC) + pd.Timedelta(hours=8),
                "underlying_price": f,
                "mark_price": mark * f,
                "bid_price": np.nan,
                "ask_price": (mark + 0.0005) * f,
                "mark_price_coin": mark,
                "bid_price_coin": np.nan,
                "ask_price_coin": mark + 0.0005,
                "mark_iv": 0.6,
                "bid_iv": np.nan,
                "ask_iv": 0.62,
                "delta": 0.3,
                "gamma": 1e-4,
                "vega": 20.0,
                "theta": -50.0,
                "open_interest": 10.0,
                "quote_time": quote,
            }
        )
    return pd.DataFrame(rows)


CALL = "BTC-8MAR24-65000-C"
PUT = "BTC-8MAR24-55000-P"
SHORT = "BTC-1MAR24-62000-C"  # expires 2024-03-01 08:00


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    rows = []
    for h in range(0, 12):
        bar = T0 + h * H
        rows.append((CALL, bar, bar - pd.Timedelta(minutes=3), 0.01 + h * 0.001))
        if h % 3 == 0:  # the put is quoted only every third bar
            rows.append((PUT, bar, bar - pd.Timedelta(minutes=40), 0.02))
        rows.append((SHORT, bar, bar - pd.Timedelta(minutes=1), 0.005))
    merge_chain(root, "BTC", chain_rows(rows))
    update_meta(root, "BTC", chain_timeframe="1h")
    idx = pd.date_range(T0 - 23 * H, T0 + 24 * H, freq="h", tz=UTC, name="timestamp")
    close = 60_000.0 + np.arange(len(idx))
    spot = pd.DataFrame(
        {"open": close - 1, "high": close + 5, "low": close - 5, "close": close, "volume": 1.0},
        index=idx,
    )
    merge_spot(root, "BTC", "1h", spot)
    merge_settlements(
        root, "BTC", pd.DataFrame({"expiry": [T0 + 8 * H], "price": [60_123.4], "source": ["test"]})
    )
    return root


def test_layout_on_disk(store: Path) -> None:
    assert (store / "BTC" / "meta.json").is_file()
    assert spot_path(store, "BTC", "1h").is_file()
    assert chain_partition_path(store, "BTC", T0).is_file()
    assert (store / "BTC" / "settlement.parquet").is_file()
    table = pq.read_table(chain_partition_path(store, "BTC", T0))
    # the tiered layout adds days to expiry (row-group statistics prune scans by it)
    assert table.column_names == [*CHAIN_COLUMNS, "quote_time", "days_to_expiry"]


def test_source_protocols_and_config(store: Path) -> None:
    src = open_market_source({"source": "parquet", "path": str(store)})
    assert isinstance(src, FileDataSource)
    assert (
        isinstance(src, MarketDataSource)
        and isinstance(src, BulkChainSource)
        and isinstance(src, SettlementSource)
    )
    assert src.underlyings() == ["BTC"] and src.chain_timeframe("BTC") == "1h"
    assert src.fingerprint().startswith("parquet(")
    with pytest.raises(DataError, match="unknown market source"):
        open_market_source({"source": "bloomberg"})


def test_spot_range_and_resampling(store: Path) -> None:
    src = FileDataSource(store)
    bars = src.get_spot_ohlc("BTC", T0, T0 + 3 * H, "1h")
    assert list(bars.index) == list(pd.date_range(T0, T0 + 3 * H, freq="h", tz=UTC))
    four = src.get_spot_ohlc("BTC", T0 + 4 * H, T0 + 8 * H, "4h")
    hourly = src.get_spot_ohlc("BTC", T0 + H, T0 + 8 * H, "1h")
    assert list(four.index) == [T0 + 4 * H, T0 + 8 * H]
    assert four["close"].iloc[0] == hourly.loc[T0 + 4 * H, "close"]
    assert four["open"].iloc[0] == hourly.loc[T0 + H, "open"]
    assert four["volume"].iloc[1] == 4.0
    with pytest.raises(DataError, match="no 1m spot bars for BTC") as err:
        src.get_spot_ohlc("BTC", T0, T0 + H, "1m")
    assert "1m.parquet" in str(err.value)


def test_chain_point_in_time_staleness_and_expiry(store: Path) -> None:
    src = FileDataSource(store)
    at3 = {s.instrument_name: s for s in src.list_option_chain("BTC", T0 + 3 * H)}
    assert set(at3) == {CALL, PUT, SHORT}
    assert at3[CALL].mark_price_coin == pytest.approx(0.013)
    assert at3[CALL].bid_price is None and at3[CALL].ask_price == pytest.approx(0.0135 * 60_000)
    # Between bar closes: the last closed bar, never the one still open.
    mid = {
        s.instrument_name: s
        for s in src.list_option_chain("BTC", T0 + 3 * H + pd.Timedelta(minutes=59))
    }
    assert mid[CALL].mark_price_coin == pytest.approx(0.013)
    # The put was not quoted in the bar closing 04:00: stale, left out and counted.
    before = src.gate_counts["stale"]
    at4 = {s.instrument_name for s in src.list_option_chain("BTC", T0 + 4 * H)}
    assert at4 == {CALL, SHORT} and src.gate_counts["stale"] == before + 1
    # Expired at 08:00: gone from 08:00 on.
    assert SHORT not in {s.instrument_name for s in src.list_option_chain("BTC", T0 + 8 * H)}
    # A wider staleness window keeps the put.
    lenient = FileDataSource(store, max_staleness="3h")
    assert PUT in {s.instrument_name for s in lenient.list_option_chain("BTC", T0 + 5 * H)}
    # Beyond the data: nothing is carried forward.
    assert src.list_option_chain("BTC", T0 + 30 * H) == []


def test_chain_frame_matches_single_queries(store: Path) -> None:
    src = FileDataSource(store)
    times = pd.date_range(T0 - 2 * H, T0 + 14 * H, freq="30min", tz=UTC)
    bulk = src.chain_frame("BTC", times)
    single = pd.concat(
        [snapshots_to_frame(src.list_option_chain("BTC", t)) for t in times], ignore_index=True
    )
    strings = {"instrument_name": object, "underlying": object, "kind": object}
    pd.testing.assert_frame_equal(bulk.astype(strings), single.astype(strings))
    assert list(bulk.columns) == list(CHAIN_COLUMNS)


def test_option_marks_and_bars(store: Path) -> None:
    src = FileDataSource(store)
    times = pd.DatetimeIndex([T0 + 2 * H, T0 + 3 * H, T0 + 4 * H, T0 + 9 * H], tz=UTC)
    marks = src.option_marks([CALL, PUT, SHORT, "ETH-8MAR24-3000-C"], times)
    assert marks.shape == (4, 4)
    assert marks[0].tolist() == pytest.approx([0.012 * 6e4, 0.013 * 6e4, 0.014 * 6e4, 0.019 * 6e4])
    assert (
        np.isnan(marks[1, 0]) and marks[1, 1] == pytest.approx(0.02 * 6e4) and np.isnan(marks[1, 2])
    )
    assert np.isfinite(marks[2, :3]).all() and np.isnan(marks[2, 3])  # expired at 08:00
    assert np.isnan(marks[3]).all()
    bars = src.get_option_ohlc(CALL, T0 + H, T0 + 4 * H, "1h")
    assert bars["close"].tolist() == pytest.approx([x * 6e4 for x in (0.011, 0.012, 0.013, 0.014)])
    assert (bars["high"] == bars["close"]).all() and bars["volume"].isna().all()
    with pytest.raises(DataError, match="unknown instrument name"):
        src.get_option_ohlc("BTC-PERPETUAL", T0, T0 + H, "1h")


def test_settlement(store: Path) -> None:
    src = FileDataSource(store)
    assert src.settlement_price("BTC", T0 + 8 * H) == 60_123.4
    assert src.settlement_price("BTC", T0 + 32 * H) is None
    assert src.settlement_price("ETH", T0 + 8 * H) is None


def test_settlement_from_csv_reads_expiry_and_price(store: Path, tmp_path: Path) -> None:
    # only the expiry and price columns are read, from CSV as from Parquet
    root = tmp_path / "csvsettle"
    (root / "BTC").mkdir(parents=True)
    (root / "BTC" / "meta.json").write_text((store / "BTC" / "meta.json").read_text())
    frame = pq.read_table(store / "BTC" / "settlement.parquet").to_pandas()
    frame.assign(note="hand-made")[["note", "price", "source", "expiry"]].to_csv(
        root / "BTC" / "settlement.csv", index=False
    )
    src = FileDataSource(root)
    assert src.settlement_price("BTC", T0 + 8 * H) == 60_123.4
    assert src.settlement_price("BTC", T0 + 32 * H) is None


def test_settlement_files_of_every_shape_give_the_same_prices(tmp_path: Path) -> None:
    # the Arrow fast path (UTC timestamps) and the general path (text, naive times, CSV)
    expiry = pd.to_datetime(
        ["2024-03-01 08:00", "2024-03-08 08:00", "2024-03-01 08:00", "2024-03-15 08:00"], utc=True
    )
    frame = pd.DataFrame(
        {"expiry": expiry, "price": [61_000.5, 62_000.25, 1.0, np.nan], "source": "deribit"}
    )
    want = {
        expiry[0].value: 61_000.5,  # a repeated expiry: the first row wins
        expiry[1].value: 62_000.25,
        expiry[3].value: None,  # no price: NaN
    }
    shapes = {
        "utc.parquet": frame,
        "text.parquet": frame.assign(expiry=expiry.strftime("%Y-%m-%dT%H:%M:%SZ")),
        "naive.parquet": frame.assign(expiry=expiry.tz_localize(None)),
        "ms.parquet": frame.assign(expiry=expiry.as_unit("ms")),
        "hand.csv": frame,
    }
    for name, shaped in shapes.items():
        path = tmp_path / name
        if path.suffix == ".csv":
            shaped.to_csv(path, index=False)
        else:
            shaped.to_parquet(path, index=False)
        got = read_settlements(path)
        assert {k: (None if np.isnan(v) else v) for k, v in got.items()} == want, name
    with pytest.raises(DataError, match="cannot read store file"):
        read_settlements(tmp_path / "missing.parquet")


def test_merging_keeps_the_latest_quote(store: Path) -> None:
    late = chain_rows([(CALL, T0 + 2 * H, T0 + 2 * H - pd.Timedelta(minutes=1), 0.5)])
    early = chain_rows([(CALL, T0 + 3 * H, T0 + 2 * H + pd.Timedelta(minutes=1), 0.5)])
    merge_chain(store, "BTC", pd.concat([late, early]))
    src = FileDataSource(store)
    marks = src.option_marks([CALL], pd.DatetimeIndex([T0 + 2 * H, T0 + 3 * H]))
    assert marks[0].tolist() == pytest.approx([0.5 * 6e4, 0.013 * 6e4])


def test_csv_store_is_read_like_parquet(store: Path, tmp_path: Path) -> None:
    csv_root = tmp_path / "csvstore"
    for path in store.rglob("*.parquet"):
        target = csv_root / path.relative_to(store).with_suffix(".csv")
        write_table_atomic(pq.read_table(path).to_pandas(), target)
    (csv_root / "BTC" / "meta.json").write_text((store / "BTC" / "meta.json").read_text())
    a, b = FileDataSource(store), FileDataSource(csv_root)
    times = pd.date_range(T0, T0 + 10 * H, freq="h", tz=UTC)
    pd.testing.assert_frame_equal(a.chain_frame("BTC", times), b.chain_frame("BTC", times))
    pd.testing.assert_frame_equal(
        a.get_spot_ohlc("BTC", T0, T0 + 5 * H, "1h"), b.get_spot_ohlc("BTC", T0, T0 + 5 * H, "1h")
    )
    assert b.settlement_price("BTC", T0 + 8 * H) == 60_123.4


def test_interrupted_write_leaves_the_old_file(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = spot_path(store, "BTC", "1h")
    before = path.read_bytes()

    def crash(table, where, **kwargs):  # write half a file, then die
        Path(where).write_bytes(b"PAR1 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", crash)
    new = FileDataSource(store).get_spot_ohlc("BTC", T0, T0 + H, "1h") * 2
    with pytest.raises(KeyboardInterrupt):
        merge_spot(store, "BTC", "1h", new)
    assert path.read_bytes() == before
    assert not list(store.rglob("*.tmp"))


def test_store_errors_name_the_file(tmp_path: Path, store: Path) -> None:
    with pytest.raises(DataError, match="market data store not found"):
        FileDataSource(tmp_path / "nowhere")
    (store / "ETH").mkdir()
    with pytest.raises(DataError, match="no option chain stored for ETH") as err:
        FileDataSource(store).list_option_chain("ETH", T0)
    assert "meta.json" in str(err.value)
    broken = chain_partition_path(store, "BTC", T0)
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read store file") as err:
        FileDataSource(store).list_option_chain("BTC", T0)
    assert str(broken) in str(err.value)


def _spot_bars(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    close = 60_000 + rng.normal(0, 50, n).cumsum()
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(T0, periods=n, freq="1h"),
            "open": close + 1,
            "high": close + 9,
            "low": close - 9,
            "close": close,
            "volume": rng.uniform(0, 5, n),
        }
    )


@pytest.mark.parametrize(
    "case", ["merged", "unsorted", "repeated", "naive_ms", "int_volume", "missing", "nulls", "csv"]
)
def test_read_spot_is_normalize_ohlc_of_the_file(tmp_path: Path, case: str) -> None:
    # the direct path (files in normal form) and the general one give the same frame
    bars = _spot_bars(50)
    path = tmp_path / ("1h.csv" if case == "csv" else "1h.parquet")
    if case == "nulls":
        bars.loc[[2, 7], "high"] = np.nan
    if case in ("merged", "nulls"):
        merge_spot(tmp_path, "BTC", "1h", bars)
        path = spot_path(tmp_path, "BTC", "1h")
    elif case == "unsorted":
        bars = bars.iloc[::-1]
    elif case == "repeated":
        bars = pd.concat([bars, bars.iloc[[3]].assign(close=1.0)], ignore_index=True)
    elif case == "naive_ms":
        bars["timestamp"] = bars["timestamp"].dt.tz_localize(None).dt.as_unit("ms")
    elif case == "int_volume":
        bars["volume"] = np.arange(len(bars))
    elif case == "missing":
        bars = bars.drop(columns="volume")
    if case not in ("merged", "nulls"):
        write_table_atomic(bars.reset_index(drop=True), path)
    got = read_spot(path)
    pd.testing.assert_frame_equal(got, normalize_ohlc(read_table(path)))
    if case in ("merged", "nulls"):  # what merge_spot writes takes the direct path
        assert _ohlc_frame(pq.read_table(path)) is not None
    assert got.index.is_monotonic_increasing and got.index.is_unique


def test_data_error_formats() -> None:
    assert str(DataError("bad", source="f.csv", line=3)) == "f.csv, line 3: bad"
    assert str(DataError("bad", source="f.csv")) == "f.csv: bad"
    assert str(DataError("bad")) == "bad"
    assert isinstance(DataError("x"), ValueError)


# (instrument, minutes after T0) quotes of a call, a put and a call expiring at 08:00
_QUOTES = st.lists(
    st.tuples(st.sampled_from([CALL, PUT, SHORT]), st.integers(0, 20 * 60)),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    quotes=_QUOTES,
    queries=st.lists(st.integers(-60, 24 * 60), min_size=1, max_size=10, unique=True),
    stale_bars=st.integers(1, 3),
)
def test_chain_table_never_looks_ahead(quotes, queries, stale_bars: int) -> None:
    rows = []
    for name, minute in quotes:
        quote = T0 + pd.Timedelta(minutes=minute)
        bar = quote.ceil("h")
        rows.append((name, bar, quote, 0.01 + minute * 1e-6))
    frame = (
        chain_rows(rows)
        .sort_values("quote_time")
        .drop_duplicates(["as_of", "instrument_name"], keep="last")
    )
    table = ChainTable(frame, "1h", stale_bars * H)
    times = pd.DatetimeIndex([T0 + pd.Timedelta(minutes=m) for m in queries])
    out = table.at(times)
    quote_of = frame.set_index(["instrument_name", "as_of"])["quote_time"]
    for t in times:
        got = out[out["as_of"] == t]
        assert got["instrument_name"].is_unique
        assert (got["expiry"] > t).all()
        b = t.floor("h")
        for _, r in got.iterrows():
            # It is the instrument's latest bar <= b, quoted within the staleness window.
            bars = frame[
                (frame["instrument_name"] == r["instrument_name"]) & (frame["as_of"] <= b)
            ]["as_of"]
            latest = bars.max()
            assert quote_of[(r["instrument_name"], latest)] <= t
            assert b - quote_of[(r["instrument_name"], latest)] < stale_bars * H
            assert (
                r["mark_price_coin"]
                == frame[
                    (frame["instrument_name"] == r["instrument_name"]) & (frame["as_of"] == latest)
                ]["mark_price_coin"].item()
            )
        # And every instrument that qualifies is there.
        fresh = (
            frame[(frame["as_of"] <= b) & (frame["expiry"] > t)]
            .sort_values("as_of")
            .groupby("instrument_name")
            .last()
        )
        fresh = fresh[b - fresh["quote_time"] < stale_bars * H]
        assert set(got["instrument_name"]) == set(fresh.index)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    quotes=_QUOTES,
    queries=st.lists(st.integers(-60, 24 * 60), min_size=1, max_size=10),  # repeats allowed
    stale_bars=st.integers(1, 3),
)
def test_chain_table_at_rows_match_a_per_query_scan(quotes, queries, stale_bars: int) -> None:
    # the reference walks every query's window row by row (repeated and unsorted query
    # times included): same rows, same order (query, calls first, expiry, strike), same
    # count of instruments left out as stale
    rows = []
    for name, minute in quotes:
        quote = T0 + pd.Timedelta(minutes=minute)
        rows.append((name, quote.ceil("h"), quote, 0.01 + minute * 1e-6))
    frame = (
        chain_rows(rows)
        .sort_values("quote_time")
        .drop_duplicates(["as_of", "instrument_name"], keep="last")
    )
    table = ChainTable(frame, "1h", stale_bars * H)
    times = pd.DatetimeIndex([T0 + pd.Timedelta(minutes=m) for m in queries])
    got_rows, got_which, _ = table.at_rows(times)
    c = table.cols
    bar, stale = H.value, (stale_bars * H).value
    want: list[tuple[int, int]] = []
    want_stale = 0
    for q, t in enumerate(times.as_unit("ns").asi8):
        ref = t - t % bar
        latest: dict[int, int] = {}
        for r in range(len(c)):
            if ref - stale - bar < c.as_of[r] <= ref:
                latest[int(c.code[r])] = r  # rows are in as_of order: the last one wins
        picked = []
        for r in latest.values():
            if c.expiry[r] <= t:
                continue
            if ref - c.quote_time[r] < stale:
                picked.append(r)
            else:
                want_stale += 1
        picked.sort(key=lambda r: (not c.is_call[r], c.expiry[r], c.values["strike"][r]))
        want.extend((q, r) for r in picked)
    assert list(zip(got_which.tolist(), got_rows.tolist(), strict=True)) == want
    assert table.gate_counts["stale"] == want_stale


def test_a_store_of_the_synthetic_market_replays_identically(tmp_path: Path) -> None:
    from harness.data.synthetic import SyntheticMarket
    from harness.policies import always_sell
    from harness.simulator import CoveredCallSimulator
    from harness.types import CallSimulationConfig

    market = SyntheticMarket(seed=3)
    cfg = CallSimulationConfig(
        underlying="BTC", start="2024-02-01", end="2024-02-08", timeframe="1h", target_dte=1.0
    )
    root = tmp_path / "data"
    lo, hi = pd.Timestamp("2024-01-30", tz=UTC), pd.Timestamp("2024-02-12", tz=UTC)
    times = pd.date_range(lo, hi, freq="h", tz=UTC)
    chain = market.chain_frame("BTC", times, max_dte=10.0)
    merge_chain(root, "BTC", chain.assign(quote_time=chain["as_of"]))
    update_meta(root, "BTC", chain_timeframe="1h")
    merge_spot(root, "BTC", "1h", market.get_spot_ohlc("BTC", lo, hi, "1h"))
    merge_spot(root, "BTC", "1m", market.get_spot_ohlc("BTC", lo, hi, "1m"))
    expiries = pd.DatetimeIndex(chain["expiry"].unique())
    prices = [market.settlement_price("BTC", e) for e in expiries]
    merge_settlements(
        root, "BTC", pd.DataFrame({"expiry": expiries, "price": prices, "source": "synthetic"})
    )

    a = CoveredCallSimulator(market, cfg).simulate_policy(always_sell())
    b = CoveredCallSimulator(FileDataSource(root), cfg).simulate_policy(always_sell())
    assert len(a.trades) >= 2
    assert [t.instrument_name for t in a.trades] == [t.instrument_name for t in b.trades]
    assert [t.pnl for t in a.trades] == pytest.approx([t.pnl for t in b.trades], rel=1e-9)
    np.testing.assert_allclose(a.equity_curve.to_numpy(), b.equity_curve.to_numpy(), rtol=1e-9)


def test_chain_frame_narrowing(store: Path) -> None:
    src = FileDataSource(store)
    times = pd.date_range(T0, T0 + 6 * H, freq="h", tz=UTC)
    calls = src.chain_frame("BTC", times, kinds=("call",))
    assert set(calls["kind"]) == {"call"} and set(calls["instrument_name"]) == {CALL, SHORT}
    near = src.chain_frame("BTC", times, max_dte=1.0)
    assert set(near["instrument_name"]) == {SHORT}
    full = src.chain_frame("BTC", times)
    assert len(full) == len(calls) + (full["kind"] == "put").sum()


def test_linear_options_are_found_under_their_coin(tmp_path: Path) -> None:
    name = "SOL_USDC-8MAR24-130-C"
    rows = chain_rows([(CALL, T0 + h * H, T0 + h * H, 0.01) for h in range(3)])
    rows["instrument_name"] = name
    rows["underlying"] = "SOL"
    rows["strike"] = 130.0
    rows["mark_price"] = [2.0, 2.5, 3.0]
    root = tmp_path / "data"
    merge_chain(root, "SOL", rows)
    update_meta(root, "SOL", chain_timeframe="1h")
    src = FileDataSource(root)
    marks = src.option_marks([name], pd.DatetimeIndex([T0, T0 + 2 * H]))
    assert marks[0].tolist() == [2.0, 3.0]
    assert src.get_option_ohlc(name, T0, T0 + 2 * H, "1h")["close"].tolist() == [2.0, 2.5, 3.0]


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    quotes=st.lists(
        st.tuples(
            st.sampled_from([CALL, PUT, SHORT]),
            st.integers(0, 20 * 60),
            st.integers(-90, 30),  # minutes from the quote to its as_of bar (> 0: late quote)
        ),
        min_size=1,
        max_size=40,
    ),
    queries=st.lists(st.integers(-60, 24 * 60), min_size=1, max_size=10),
    stale_minutes=st.sampled_from([30, 60, 90, 120, 180]),
    kinds=st.sampled_from([("call", "put"), ("call",), ("put",)]),
    max_dte=st.sampled_from([None, 0.2, 7.5]),
)
def test_at_rows_match_a_per_query_walk_with_kinds_dte_and_late_quotes(
    quotes, queries, stale_minutes: int, kinds, max_dte
) -> None:
    # at_rows skips the bar before the freshness window when every quote is at or before
    # its bar close (then only the instruments that went stale are looked up there); with a
    # quote after its bar close it walks the whole window. Both must equal the reference
    # walk: same rows, order and count of instruments left out as stale, for any kinds,
    # days-to-expiry limit and staleness (shorter or longer than a bar).
    rows = []
    for name, minute, late in quotes:
        bar = (T0 + pd.Timedelta(minutes=minute)).ceil("h")
        rows.append((name, bar, bar + pd.Timedelta(minutes=late), 0.01 + minute * 1e-6))
    frame = chain_rows(rows).drop_duplicates(["as_of", "instrument_name"], keep="last")
    stale = pd.Timedelta(minutes=stale_minutes)
    table = ChainTable(frame, "1h", stale)
    times = pd.DatetimeIndex([T0 + pd.Timedelta(minutes=m) for m in queries])
    got_rows, got_which, _ = table.at_rows(times, kinds=kinds, max_dte=max_dte)
    c = table.cols
    bar = H.value
    want: list[tuple[int, int]] = []
    want_stale = 0
    for q, t in enumerate(times.as_unit("ns").asi8):
        ref = t - t % bar
        latest: dict[int, int] = {}
        for r in range(len(c)):
            if ref - stale.value - bar < c.as_of[r] <= ref:
                latest[int(c.code[r])] = r  # rows are in as_of order: the last one wins
        picked = []
        for r in latest.values():
            if c.expiry[r] <= t or ("call" if c.is_call[r] else "put") not in kinds:
                continue
            if max_dte is not None and c.expiry[r] - t > max_dte * 86_400e9:
                continue
            if ref - c.quote_time[r] < stale.value:
                picked.append(r)
            else:
                want_stale += 1
        picked.sort(key=lambda r: (not c.is_call[r], c.expiry[r], c.values["strike"][r]))
        want.extend((q, r) for r in picked)
    assert table._quotes_by_bar_close() == all(late <= 0 for _, _, late in quotes)
    assert list(zip(got_which.tolist(), got_rows.tolist(), strict=True)) == want
    assert table.gate_counts["stale"] == want_stale
