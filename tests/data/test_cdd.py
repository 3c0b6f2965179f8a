"""CryptoDataDownload spot CSVs: banner, newest-first rows, mixed formats, NULLs, gaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.cdd import base_of_symbol, read_cdd
from harness.data.errors import DataError
from harness.data.files import FileDataSource
from harness.data.importers import import_cdd

UTC = "UTC"
FIX = Path(__file__).parent / "fixtures"
BINANCE = FIX / "cdd_Binance_BTCUSDT_d.csv"
GEMINI = FIX / "cdd_gemini_BTCUSD_1h.csv"
NO_BANNER = FIX / "cdd_Binance_ETHUSDT_d_nobanner.csv"


def _days(*dates: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(d, tz=UTC) for d in dates]


def test_binance_daily_quirks() -> None:
    parsed = read_cdd(BINANCE, underlying="BTC")
    assert parsed.symbol == "BTC/USDT" and parsed.timeframe == "1d"
    bars = parsed.bars
    # Oldest first, labeled by close (open + 1 day); the still-open newest bar is dropped.
    assert bars.index.is_monotonic_increasing
    assert bars.index[0] == pd.Timestamp("2023-12-29", tz=UTC)
    assert bars.index[-1] == pd.Timestamp("2024-01-04", tz=UTC)
    assert parsed.partial_dropped == 1 and parsed.rows_read == 8
    # Float-second unix and date-only rows parse like the millisecond ones.
    first = bars.iloc[0]
    assert (first["open"], first["close"], first["volume"]) == (43428.86, 42614.16, 28000.4)
    assert np.isnan(first["trade_count"])  # NULL
    # The bar repeated where CDD's two sections meet: the first (full-precision) row wins.
    assert parsed.duplicates_dropped == 1
    assert bars.loc["2023-12-31", "open"].item() == 42080.48
    assert bars.loc["2023-12-31", "trade_count"].item() == 850000
    # The missing day (opening 2024-01-01) is a gap, reported by its close time.
    assert list(parsed.missing) == _days("2024-01-02")
    assert list(bars.columns) == ["open", "high", "low", "close", "volume", "trade_count"]


def test_gemini_hourly_banner_and_header_spelling() -> None:
    parsed = read_cdd(GEMINI, underlying="BTC")
    assert parsed.timeframe == "1h" and parsed.symbol == "BTCUSD"
    assert len(parsed.bars) == 4 and len(parsed.missing) == 0
    assert parsed.bars.index[-1] == pd.Timestamp("2024-01-04 00:00", tz=UTC)
    assert parsed.bars["volume"].iloc[-1] == 12.25


def test_file_without_banner_and_capitalized_header() -> None:
    parsed = read_cdd(NO_BANNER, underlying="ETH")
    assert parsed.symbol == "ETHUSDT" and parsed.timeframe == "1d"
    assert parsed.bars["volume"].tolist() == [300000.0, 400000.0, 500000.0]  # Volume ETH, not USDT
    kept = read_cdd(NO_BANNER, drop_partial=False)
    assert len(kept.bars) == 4 and kept.partial_dropped == 0


@pytest.mark.parametrize(
    ("symbol", "base"),
    [
        ("BTC/USDT", "BTC"),
        ("BTCUSDT", "BTC"),
        ("BTCUSD", "BTC"),
        ("ETH-USD", "ETH"),
        ("ETHBTC", "ETH"),
    ],
)
def test_base_of_symbol(symbol: str, base: str) -> None:
    assert base_of_symbol(symbol) == base


def _mutated(tmp_path: Path, source: Path, line: int, old: str, new: str) -> Path:
    lines = source.read_text().splitlines()
    assert old in lines[line - 1], lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new)
    path = tmp_path / source.name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("line", "old", "new", "message"),
    [
        (4, "45000.00000000,45500", "-45000.00000000,45500", "non-positive price"),
        (10, "1703721600.0,2023-12-28", "1703721600.0,2023-12-38", "unparseable date '2023-12-38'"),
        (5, "1704153600000,2024-01-02", "17041536x0000,2024-01-02", "column unix: cannot parse"),
        (6, "1703980800000,2023-12-31", "1703980800000,2023-12-30", "disagree"),
        (
            7,
            "42080.48000000,42543.64000000",
            "42080.48000000,42043.64000000",
            "high/low do not bracket",
        ),
        (2, "close,", "closing,", "missing column(s) close"),
    ],
)
def test_bad_rows_name_file_and_line(
    tmp_path: Path, line: int, old: str, new: str, message: str | None
) -> None:
    path = _mutated(tmp_path, BINANCE, line, old, new)
    with pytest.raises(DataError) as err:
        read_cdd(path, underlying="BTC")
    assert str(path) in str(err.value)
    assert err.value.line == line
    if message:
        assert message in str(err.value)


def test_unparseable_date_without_unix(tmp_path: Path) -> None:
    lines = GEMINI.read_text().splitlines()
    rows = [line.split(",", 1)[1] for line in lines[2:]]
    rows[2] = rows[2].replace("2024-01-03 22:00:00", "yesterday")
    path = tmp_path / "dates_only.csv"
    path.write_text("\n".join(["Date,Symbol,Open,High,Low,Close,Volume", *rows]) + "\n")
    with pytest.raises(DataError, match="unparseable date 'yesterday'") as err:
        read_cdd(path)
    assert err.value.line == 4


def test_conflicting_duplicate_is_an_error(tmp_path: Path) -> None:
    path = _mutated(tmp_path, BINANCE, 8, "42080.47,42543.64", "42480.47,42543.64")
    with pytest.raises(DataError, match=r"conflicting rows .* \(lines 7, 8\)"):
        read_cdd(path)


def test_wrong_underlying_is_refused() -> None:
    with pytest.raises(DataError, match="holds BTC/USDT but the underlying given is ETH"):
        read_cdd(BINANCE, underlying="ETH")


def test_import_writes_spot_and_reports_gaps(tmp_path: Path) -> None:
    out = tmp_path / "data"
    summary = import_cdd(BINANCE, "BTC", out, progress=False)
    assert summary.rows_read == 8 and summary.rows_written == 6
    assert summary.counts["duplicates_dropped"] == 1 and summary.counts["partial_dropped"] == 1
    assert len(summary.gaps) == 1 and summary.gaps[0].missing_bars == 1
    assert summary.gaps[0].start == pd.Timestamp("2024-01-02", tz=UTC)
    assert "gaps: 1 (1 missing bars)" in str(summary)
    store = FileDataSource(out)
    spot = store.get_spot_ohlc("BTC", "2023-12-29", "2024-01-03", "1d")
    assert len(spot) == 5 and spot.index.name == "timestamp"
    assert spot["close"].iloc[-1] == 45000.0  # the bar that opened 2024-01-02
    # Hourly data imported later sits next to the daily bars.
    import_cdd(GEMINI, "BTC", out, progress=False)
    assert FileDataSource(out).spot_timeframes("BTC") == ["1d", "1h"]


def test_real_shaped_minute_gap_runs_are_grouped(tmp_path: Path) -> None:
    lines = GEMINI.read_text().splitlines()
    base = pd.Timestamp("2024-01-04 00:00", tz=UTC)
    rows = []
    for i in range(30):
        if 10 <= i < 14 or i == 20:
            continue
        ts = base - pd.Timedelta(hours=i)
        rows.append(f"{ts.value // 10**6},{ts:%Y-%m-%d %H:%M:%S},BTCUSD,100.0,101.0,99.0,100.5,1.0")
    path = tmp_path / "gappy.csv"
    path.write_text("\n".join([lines[0], lines[1], *rows]) + "\n")
    summary = import_cdd(path, "BTC", tmp_path / "data", progress=False)
    assert [g.missing_bars for g in summary.gaps] == [1, 4]
