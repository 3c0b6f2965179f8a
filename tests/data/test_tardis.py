"""Tardis options_chain files: streaming, resampling, conversions, bad input, store import."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data.errors import DataError
from harness.data.files import FileDataSource
from harness.data.importers import import_tardis
from harness.data.source import CHAIN_COLUMNS, BulkChainSource, MarketDataSource
from harness.data.tardis import (
    TARDIS_COLUMNS,
    TardisDataSource,
    TardisResampler,
    read_tardis,
    write_tardis_csv,
)
from harness.pricing import black76_greeks, year_fraction

UTC = "UTC"
SAMPLE = Path(__file__).parent / "fixtures" / "tardis_options_chain_sample.csv"
SAMPLE_GZ = SAMPLE.with_name(SAMPLE.name + ".gz")


def _lines() -> list[str]:
    return SAMPLE.read_text().splitlines()


def _write(tmp_path: Path, lines: list[str], name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(chain: pd.DataFrame, name: str, as_of: str) -> pd.Series:
    sel = chain[
        (chain["instrument_name"] == name) & (chain["as_of"] == pd.Timestamp(as_of, tz=UTC))
    ]
    assert len(sel) == 1, f"{name} at {as_of}: {len(sel)} rows"
    return sel.iloc[0]


# ---------------------------------------------------------------- reading and resampling


def test_sample_is_resampled_to_last_snapshot_per_bar() -> None:
    chain, counts = read_tardis([SAMPLE], "1h")
    keys = set(zip(chain["instrument_name"], chain["as_of"].dt.strftime("%H:%M"), strict=True))
    assert keys == {
        ("BTC-9JUN20-9875-P", "00:00"),  # 23:59:59.413 belongs to the bar closing at 00:00
        ("BTC-9JUN20-9875-P", "01:00"),
        ("BTC-9JUN20-9875-P", "02:00"),
        ("BTC-9JUN20-10000-C", "01:00"),
        ("ETH-9JUN20-250-P", "01:00"),
        ("ETH-9JUN20-250-P", "02:00"),
    }
    assert counts["rows_read"] == 10
    assert counts["linear_skipped"] == 1  # BTC_USDC options are quoted in USD, not coin
    assert counts["greeks_computed"] == 1
    # The last snapshot wins: 00:50, not 00:10.
    put = _row(chain, "BTC-9JUN20-9875-P", "2020-06-08 01:00")
    assert put["quote_time"] == pd.Timestamp("2020-06-08 00:50", tz=UTC)
    # By exchange time: the 01:44 row arrived after the 01:45 row but is older.
    eth = _row(chain, "ETH-9JUN20-250-P", "2020-06-08 02:00")
    assert eth["quote_time"] == pd.Timestamp("2020-06-08 01:45", tz=UTC)
    assert eth["underlying_price"] == 245.40


def test_units_coin_to_usd_percent_to_fraction_and_missing_sides() -> None:
    chain, _ = read_tardis([SAMPLE], "1h")
    docs = _row(chain, "BTC-9JUN20-9875-P", "2020-06-08 00:00")
    f = 9756.36
    assert docs["mark_price_coin"] == 0.02210436
    assert docs["mark_price"] == pytest.approx(0.02210436 * f)
    assert docs["bid_price"] == pytest.approx(0.0205 * f) and docs["ask_price"] == pytest.approx(
        0.0235 * f
    )
    assert docs["mark_iv"] == pytest.approx(0.6289) and docs["bid_iv"] == pytest.approx(0.5591)
    assert docs["delta"] == -0.61752 and docs["vega"] == 2.24964 and docs["theta"] == -53.05655
    assert docs["open_interest"] == 0.1
    assert docs["expiry"] == pd.Timestamp("2020-06-09 08:00", tz=UTC)
    assert (docs["underlying"], docs["kind"], docs["strike"]) == ("BTC", "put", 9875.0)
    # The 00:20 call had no bid; its 00:40 snapshot has one but no greeks (computed).
    call = _row(chain, "BTC-9JUN20-10000-C", "2020-06-08 01:00")
    assert call["bid_price_coin"] == 0.03
    t = year_fraction(call["quote_time"], call["expiry"])
    g = black76_greeks(9762.2, 10000.0, t, 0.582, True)
    assert call["delta"] == pytest.approx(float(g.delta)) and call["gamma"] == pytest.approx(
        float(g.gamma)
    )
    assert call["mark_price_coin"] == pytest.approx(float(g.price) / 9762.2, abs=5e-8)


def test_docs_row_passes_the_black76_check() -> None:
    # The Tardis docs' example row: its mark and delta follow from mark_iv and underlying_price.
    chain, _ = read_tardis([SAMPLE], "1h")
    r = _row(chain, "BTC-9JUN20-9875-P", "2020-06-08 00:00")
    g = black76_greeks(
        r["underlying_price"],
        r["strike"],
        year_fraction(r["quote_time"], r["expiry"]),
        r["mark_iv"],
        False,
    )
    assert float(g.price) == pytest.approx(
        r["mark_price"], abs=0.05
    )  # USD, 1/2 tick of 0.00001 BTC
    assert float(g.delta) == pytest.approx(r["delta"], abs=1e-4)


def test_missing_side_is_nan_not_zero() -> None:
    chain, _ = read_tardis([SAMPLE], "1m")
    first = _row(chain, "BTC-9JUN20-10000-C", "2020-06-08 00:20")
    assert (
        np.isnan(first["bid_price"])
        and np.isnan(first["bid_iv"])
        and np.isnan(first["bid_price_coin"])
    )
    assert first["ask_price_coin"] == 0.0325


def test_gz_variant_reads_the_same() -> None:
    a, _ = read_tardis([SAMPLE], "1h")
    b, _ = read_tardis([SAMPLE_GZ], "1h")
    pd.testing.assert_frame_equal(a, b)


def test_tiny_blocks_and_split_files_give_the_same_bars(tmp_path: Path) -> None:
    whole, _ = read_tardis([SAMPLE], "1h")
    tiny, _ = read_tardis([SAMPLE], "1h", block_size=64)  # smaller than one line
    pd.testing.assert_frame_equal(whole, tiny)
    lines = _lines()
    first = _write(tmp_path, lines[:4], "a.csv")
    second = _write(tmp_path, [lines[0], *lines[4:]], "b.csv.gz")
    second.write_bytes(gzip.compress(second.read_bytes()))
    split, _ = read_tardis([first, second], "1h")
    pd.testing.assert_frame_equal(whole, split)


def test_underlying_filter(tmp_path: Path) -> None:
    chain, counts = read_tardis([SAMPLE], "1h", underlyings=["ETH"])
    assert set(chain["underlying"]) == {"ETH"}
    assert counts["other_underlying"] == 6 and counts["linear_skipped"] == 1


_names = st.sampled_from(
    ["BTC-9JUN20-9875-P", "BTC-9JUN20-10000-C", "ETH-9JUN20-250-P", "BTC-26JUN20-12000-C"]
)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.tuples(
            _names, st.integers(0, 3 * 3_600_000_000), st.floats(0.0001, 0.5), st.floats(100, 20000)
        ),
        min_size=1,
        max_size=60,
    ),
    block=st.integers(40, 4000),
    timeframe=st.sampled_from(["5m", "1h"]),
)
def test_resampling_matches_a_pandas_reference(
    tmp_path: Path, rows, block: int, timeframe: str
) -> None:
    base = 1_591_574_400_000_000  # 2020-06-08 00:00 UTC in microseconds
    frame = _tardis_frame([(n, base + dt, mark, f) for n, dt, mark, f in rows])
    path = tmp_path / "h.csv"
    write_tardis_csv(frame, path)
    chain, _ = read_tardis([path], timeframe, block_size=block)
    bar_us = pd.Timedelta(timeframe).value // 1000
    ref = frame.assign(bar=-(-frame["timestamp"] // bar_us) * bar_us, order=np.arange(len(frame)))
    ref = (
        ref.sort_values(["timestamp", "order"], kind="stable")
        .groupby(["bar", "symbol"])
        .last()
        .reset_index()
    )
    got = chain.assign(
        bar=(chain["as_of"] - pd.Timestamp(0, tz=UTC)) // pd.Timedelta(microseconds=1)
    )
    merged = ref.merge(
        got,
        left_on=["bar", "symbol"],
        right_on=["bar", "instrument_name"],
        how="outer",
        indicator=True,
    )
    assert (merged["_merge"] == "both").all()
    assert np.allclose(merged["mark_price_x"], merged["mark_price_coin"])
    assert np.allclose(
        merged["mark_price_x"] * merged["underlying_price_x"], merged["mark_price_y"]
    )


def _tardis_frame(rows: list[tuple[str, int, float, float]]) -> pd.DataFrame:
    out = []
    for name, ts, mark, f in rows:
        u, code, k, letter = name.split("-")
        expiry = pd.Timestamp(code, tz=UTC) + pd.Timedelta(hours=8)
        out.append(
            {
                "exchange": "deribit",
                "symbol": name,
                "timestamp": ts,
                "local_timestamp": ts + 100,
                "type": "call" if letter == "C" else "put",
                "strike_price": float(k),
                "expiration": expiry.value // 1000,
                "open_interest": 1.0,
                "last_price": None,
                "bid_price": None,
                "bid_amount": None,
                "bid_iv": None,
                "ask_price": mark,
                "ask_amount": 1.0,
                "ask_iv": 70.0,
                "mark_price": mark,
                "mark_iv": 65.0,
                "underlying_index": f"SYN.{u}-{code}",
                "underlying_price": f,
                "delta": 0.5,
                "gamma": 0.001,
                "vega": 1.0,
                "theta": -1.0,
                "rho": 0.0,
            }
        )
    return pd.DataFrame(out, columns=list(TARDIS_COLUMNS))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("mutate", "line", "message"),
    [
        (
            lambda ls: [ls[0].replace(",mark_price,", ",mark_px,"), *ls[1:]],
            1,
            "missing column(s) mark_price",
        ),
        (
            lambda ls: [*ls[:3], ls[3].replace("1591575600000000", "2020-06-08T00:20"), *ls[4:]],
            4,
            "column timestamp: cannot parse '2020-06-08T00:20'",
        ),
        (
            lambda ls: [*ls[:7], ls[7].replace(",0.0203,", ",-0.0203,"), *ls[8:]],
            8,
            "negative bid_price",
        ),
        (
            lambda ls: [*ls[:4], ls[4].replace("ETH-9JUN20-250-P", "ETH-9JUNE20-250-P"), *ls[5:]],
            5,
            "unknown instrument name",
        ),
        (
            lambda ls: [*ls[:1], ls[1].replace("1591574399413000", ""), *ls[2:]],
            2,
            "empty timestamp",
        ),
        (lambda ls: [*ls[:6], ls[6].rsplit(",", 2)[0], *ls[7:]], 7, "expected 24 fields, found 22"),
        (
            lambda ls: [*ls[:2], ls[2].replace(",put,9875,", ",call,9875,"), *ls[3:]],
            3,
            "does not match instrument",
        ),
        (
            lambda ls: [*ls[:2], ls[2].replace("deribit,", "okex-options,", 1), *ls[3:]],
            None,
            "exchange 'okex-options' is not supported",
        ),
    ],
)
def test_bad_input_names_file_line_and_problem(
    tmp_path: Path, mutate, line: int | None, message: str
) -> None:
    path = _write(tmp_path, mutate(_lines()))
    with pytest.raises(DataError) as err:
        read_tardis([path], "1h")
    assert str(path) in str(err.value)
    assert message in str(err.value)
    assert err.value.line == line


def test_bad_line_in_a_gz_file_deep_in_the_stream(tmp_path: Path) -> None:
    lines = _lines()
    body = [lines[0]] + lines[1:] * 40
    bad = len(body) - 2  # the ETH row at 01:45 of the last copy
    assert "0.1235,0.122," in body[bad]
    body[bad] = body[bad].replace("0.1235,0.122,", "0.1235,abc,")
    path = tmp_path / "deep.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(body) + "\n").encode()))
    with pytest.raises(DataError, match="column bid_price: cannot parse 'abc'") as err:
        read_tardis([path], "1h", block_size=256)
    assert err.value.line == bad + 1


def test_failed_import_keeps_the_store_intact(tmp_path: Path) -> None:
    out = tmp_path / "data"
    import_tardis([SAMPLE], out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    lines = _lines()
    bad = _write(tmp_path, [*lines, lines[-1].replace("ETH-9JUN20-250-P", "ETH-9JUN20-250-X")])
    with pytest.raises(DataError, match="unknown instrument name"):
        import_tardis([bad], out, progress=False)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in out.rglob("*.tmp")]


def test_mixing_chain_timeframes_in_one_store_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "data"
    import_tardis([SAMPLE], out, timeframe="1h", progress=False)
    with pytest.raises(DataError, match="holds BTC chain bars at 1h"):
        import_tardis([SAMPLE], out, timeframe="5m", progress=False)


# ---------------------------------------------------------------- sources


def test_tardis_source_chains_point_in_time_and_staleness() -> None:
    src = TardisDataSource(SAMPLE, timeframe="1h")
    assert isinstance(src, MarketDataSource) and isinstance(src, BulkChainSource)
    at1 = src.list_option_chain("BTC", "2020-06-08 01:00")
    assert {s.instrument_name for s in at1} == {"BTC-9JUN20-9875-P", "BTC-9JUN20-10000-C"}
    assert all(s.as_of == pd.Timestamp("2020-06-08 01:00", tz=UTC) for s in at1)
    # 01:59 is before the 02:00 bar closes: still the 01:00 bar, nothing from after 01:59.
    early = src.chain_frame("BTC", pd.DatetimeIndex(["2020-06-08 01:59"], tz=UTC))
    assert set(early["instrument_name"]) == {"BTC-9JUN20-9875-P", "BTC-9JUN20-10000-C"}
    assert (early["mark_price_coin"] != 0.02078134).all()
    assert (early["as_of"] == pd.Timestamp("2020-06-08 01:59", tz=UTC)).all()
    # At 02:00 the call's last quote (00:40) is more than a bar old: dropped and counted.
    stale_before = src.gate_counts["stale"]
    at2 = src.list_option_chain("BTC", "2020-06-08 02:00")
    assert {s.instrument_name for s in at2} == {"BTC-9JUN20-9875-P"}
    assert src.gate_counts["stale"] == stale_before + 1
    # Much later: everything is stale, nothing is carried forward.
    assert src.list_option_chain("BTC", "2020-06-08 05:00") == []
    assert src.list_option_chain("BTC", "2020-06-07 22:00") == []


def test_tardis_source_marks_spot_proxy_and_option_bars() -> None:
    src = TardisDataSource(SAMPLE, timeframe="1h")
    times = pd.date_range("2020-06-08 00:00", "2020-06-08 03:00", freq="h", tz=UTC)
    marks = src.option_marks(["BTC-9JUN20-9875-P", "ETH-9JUN20-250-P", "BTC-9JUN20-1-C"], times)
    assert np.isfinite(marks[0, :3]).all() and np.isnan(marks[0, 3])
    assert np.isnan(marks[1, 0]) and np.isfinite(marks[1, 1:3]).all()
    assert np.isnan(marks[2]).all()
    assert marks[0, 0] == pytest.approx(0.02210436 * 9756.36)
    spot = src.get_spot_ohlc("BTC", "2020-06-08 00:00", "2020-06-08 02:00", "1h")
    assert spot["close"].tolist() == [9756.36, 9765.5, 9770.0]  # the nearest expiry's forward
    bars = src.get_option_ohlc("BTC-9JUN20-9875-P", "2020-06-08 00:00", "2020-06-08 02:00", "1h")
    assert list(bars.columns) == ["open", "high", "low", "close", "volume"]
    assert bars["close"].iloc[-1] == pytest.approx(0.02078134 * 9770.0)
    two = src.get_option_ohlc("BTC-9JUN20-9875-P", "2020-06-08 00:00", "2020-06-08 04:00", "4h")
    assert two["close"].tolist() == pytest.approx([0.02210436 * 9756.36, 0.02078134 * 9770.0])


def test_import_then_store_serves_the_same_chains(tmp_path: Path) -> None:
    out = tmp_path / "data"
    summary = import_tardis([SAMPLE_GZ], out, timeframe="1h", progress=False)
    assert summary.underlyings == ("BTC", "ETH")
    assert summary.rows_read == 10 and summary.rows_written == 6
    assert summary.counts["linear_skipped"] == 1
    # streamed into day partitions, then folded into the month layout
    assert "BTC/chain/month=2020-06" in summary.files_written
    assert not any("date=" in f for f in summary.files_written)
    assert not list(out.glob("BTC/chain/date=*"))
    assert "linear_skipped=1" in str(summary)
    store = FileDataSource(out)
    src = TardisDataSource(SAMPLE, timeframe="1h")
    times = pd.date_range("2020-06-07 23:00", "2020-06-08 03:00", freq="30min", tz=UTC)
    for u in ("BTC", "ETH"):
        pd.testing.assert_frame_equal(store.chain_frame(u, times), src.chain_frame(u, times))
    assert list(store.chain_frame("BTC", times).columns) == list(CHAIN_COLUMNS)
    # Re-importing the same file is idempotent; the spot proxy fills only empty bars.
    import_tardis([SAMPLE], out, timeframe="1h", progress=False)
    pd.testing.assert_frame_equal(store.chain_frame("BTC", times), src.chain_frame("BTC", times))
    assert store.get_spot_ohlc("BTC", "2020-06-08", "2020-06-08 02:00", "1h")["close"].tolist() == [
        9756.36,
        9765.5,
        9770.0,
    ]


def test_progress_callback_reaches_the_file_size() -> None:
    seen: list[tuple[int, int]] = []
    resampler = TardisResampler("1h", block_size=128)
    for _ in resampler.read_file(
        SAMPLE_GZ, progress=lambda done, total: seen.append((done, total))
    ):
        pass
    resampler.finish()
    assert seen[-1] == (os.path.getsize(SAMPLE_GZ), os.path.getsize(SAMPLE_GZ))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
