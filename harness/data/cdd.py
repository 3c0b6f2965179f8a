"""CryptoDataDownload (CDD) spot OHLC CSV files.

CDD files have quirks we handle explicitly rather than guess around:

- an optional banner line before the header (`https://www.CryptoDataDownload.com`, or
  `Created on ...,https://www.CryptoDataDownload.com`);
- header spellings vary (`unix` / `Unix` / `Unix Timestamp`, `Volume BTC` / `Volume`);
- rows run newest first, and the newest row is the still-open current bar;
- `unix` mixes milliseconds (newer rows) and float seconds (older rows); `date` mixes
  `2020-12-30 00:00:00` and `2017-08-18`;
- `tradecount` is `NULL` in old rows; days can be missing.

Rows are labeled by bar OPEN time in the file; we relabel them by close time (+ one bar).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.errors import DataError
from harness.data.source import OHLC_COLUMNS
from harness.timestamps import utc_index
from harness.types import TIMEFRAMES, Timeframe, timeframe_delta

_QUOTES = ("USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "GBP", "BTC", "ETH")
DUPLICATE_TOLERANCE = 0.001  # relative price difference two rows of one bar may have
_NULLS = {"", "NULL", "null", "NaN", "nan", "None"}


@dataclass(frozen=True, slots=True)
class CddFile:
    """A parsed CDD file: close-labeled OHLC bars and what was found on the way."""

    path: Path
    symbol: str
    timeframe: Timeframe
    bars: pd.DataFrame  # OHLC_COLUMNS + trade_count, UTC index labeled by bar close
    rows_read: int
    duplicates_dropped: int
    partial_dropped: int
    missing: pd.DatetimeIndex  # close times of bars absent from the file


def _find_header(lines: list[str], path: Path) -> int:
    for i, line in enumerate(lines[:5]):
        low = line.lower()
        if "open" in low and ("unix" in low or "date" in low):
            return i
    raise DataError(
        "no CDD header found (expected a line with unix/date, open, high, low, close)",
        source=path,
        line=1,
    )


def _column_map(
    columns: list[str], base: str | None, path: Path, header_line: int
) -> dict[str, str]:
    lower = {c.strip().lower(): c for c in columns}
    found: dict[str, str] = {}
    for key, names in {
        "unix": ("unix", "unix timestamp", "timestamp"),
        "date": ("date", "datetime"),
        "symbol": ("symbol",),
        "open": ("open",),
        "high": ("high",),
        "low": ("low",),
        "close": ("close",),
        "trade_count": ("tradecount", "trade_count", "trades"),
    }.items():
        for name in names:
            if name in lower:
                found[key] = lower[name]
                break
    volumes = [c for c in columns if c.strip().lower().startswith("volume")]
    if volumes:
        # The base-coin volume ("Volume BTC") is the OHLC volume; else the only one there is.
        preferred = [c for c in volumes if base and c.strip().lower() == f"volume {base.lower()}"]
        found["volume"] = (
            preferred or [c for c in volumes if c.strip().lower() == "volume"] or volumes
        )[0]
    missing = [c for c in ("open", "high", "low", "close") if c not in found]
    if "unix" not in found and "date" not in found:
        missing.append("unix or date")
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)} (header: {', '.join(columns)})",
            source=path,
            line=header_line,
        )
    return found


def base_of_symbol(symbol: str) -> str:
    """The base coin of a CDD symbol: 'BTC/USDT' -> 'BTC', 'BTCUSD' -> 'BTC'."""
    s = symbol.strip().upper()
    if "/" in s or "-" in s:
        return re.split(r"[/-]", s)[0]
    for quote in _QUOTES:
        if s.endswith(quote) and len(s) > len(quote):
            return s[: -len(quote)]
    return s


def _numbers(
    values: pd.Series, name: str, path: Path, first_line: int, *, nullable: bool
) -> np.ndarray:
    text = values.astype(str).str.strip()
    is_null = text.isin(_NULLS)
    parsed = pd.to_numeric(text.where(~is_null), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(parsed) & ~is_null.to_numpy()
    if not nullable:
        bad |= is_null.to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"column {name}: cannot parse {text.iloc[i]!r} as a number",
            source=path,
            line=first_line + i,
        )
    return parsed


def _timestamps(
    raw: pd.DataFrame, cols: dict[str, str], path: Path, first_line: int
) -> pd.DatetimeIndex:
    n = len(raw)
    from_unix = np.full(n, np.nan)
    if "unix" in cols:
        unix = _numbers(raw[cols["unix"]], cols["unix"], path, first_line, nullable="date" in cols)
        # Newer CDD rows give 13-digit milliseconds, older ones float seconds.
        from_unix = np.where(unix > 1e14, unix / 1e6, np.where(unix > 1e11, unix / 1e3, unix))
    from_date = np.full(n, np.nan)
    if "date" in cols:
        text = raw[cols["date"]].astype(str).str.strip()
        parsed = pd.to_datetime(text, format="mixed", utc=True, errors="coerce")
        from_date = (
            (parsed - pd.Timestamp(0, tz="UTC"))
            .dt.total_seconds()
            .to_numpy(dtype=np.float64, na_value=np.nan)
        )
        unparsed = np.isnan(from_date) & ~text.isin(_NULLS).to_numpy()
        if unparsed.any():
            i = int(np.flatnonzero(unparsed)[0])
            raise DataError(
                f"column {cols['date']}: unparseable date {text.iloc[i]!r}",
                source=path,
                line=first_line + i,
            )
        both = ~np.isnan(from_date) & ~np.isnan(from_unix)
        disagree = both & (np.abs(from_date - from_unix) >= 1.0)
        if disagree.any():
            i = int(np.flatnonzero(disagree)[0])
            raise DataError(
                f"unix {raw[cols['unix']].iloc[i]!r} and date {text.iloc[i]!r} disagree",
                source=path,
                line=first_line + i,
            )
    seconds = np.where(np.isnan(from_unix), from_date, from_unix)
    if np.isnan(seconds).any():
        i = int(np.flatnonzero(np.isnan(seconds))[0])
        raise DataError("row has no timestamp", source=path, line=first_line + i)
    return utc_index(pd.to_datetime(np.round(seconds * 1e3).astype(np.int64), unit="ms", utc=True))


def _infer_timeframe(opens: pd.DatetimeIndex, path: Path) -> Timeframe:
    if len(opens) < 2:
        raise DataError("need at least two rows to tell the bar length", source=path)
    step = pd.Series(np.diff(np.sort(opens.asi8))).median()
    for tf in TIMEFRAMES:
        if timeframe_delta(tf).value == step:
            return tf  # type: ignore[return-value]
    raise DataError(
        f"unsupported bar length {pd.Timedelta(int(step))} (supported: {', '.join(TIMEFRAMES)})",
        source=path,
    )


def read_cdd(
    path: str | os.PathLike[str],
    *,
    underlying: str | None = None,
    timeframe: Timeframe | None = None,
    drop_partial: bool = True,
) -> CddFile:
    """Parse a CDD spot CSV into close-labeled OHLC bars (USD), validating every row.

    `underlying` must match the file's symbol base if given. The newest row is CDD's still-open
    current bar and is dropped unless `drop_partial` is False.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            head = [fh.readline() for _ in range(5)]
    except OSError as exc:
        raise DataError(f"cannot read file: {exc}", source=path) from exc
    header_idx = _find_header(head, path)
    header_line = header_idx + 1
    first_line = header_line + 1
    raw = pd.read_csv(
        path, skiprows=header_idx, dtype=str, keep_default_na=False, encoding="utf-8-sig"
    )
    raw.columns = [str(c).strip() for c in raw.columns]
    symbol = ""
    if "symbol" in {c.lower() for c in raw.columns} and len(raw):
        sym_col = next(c for c in raw.columns if c.lower() == "symbol")
        symbols = raw[sym_col].astype(str).str.strip().unique()
        if len(symbols) > 1:
            i = int(
                np.flatnonzero(raw[sym_col].astype(str).str.strip().to_numpy() != symbols[0])[0]
            )
            raise DataError(
                f"mixed symbols {symbols[0]!r} and {symbols[1]!r} in one file",
                source=path,
                line=first_line + i,
            )
        symbol = str(symbols[0])
    base = base_of_symbol(symbol) if symbol else None
    if underlying is not None and base is not None and base != underlying.upper():
        raise DataError(
            f"file holds {symbol} but the underlying given is {underlying.upper()}", source=path
        )
    cols = _column_map(list(raw.columns), base, path, header_line)

    opens = _timestamps(raw, cols, path, first_line)
    values = {
        key: _numbers(raw[cols[key]], cols[key], path, first_line, nullable=False)
        for key in ("open", "high", "low", "close")
    }
    values["volume"] = (
        _numbers(raw[cols["volume"]], cols["volume"], path, first_line, nullable=True)
        if "volume" in cols
        else np.full(len(raw), np.nan)
    )
    values["trade_count"] = (
        _numbers(raw[cols["trade_count"]], cols["trade_count"], path, first_line, nullable=True)
        if "trade_count" in cols
        else np.full(len(raw), np.nan)
    )
    prices = np.column_stack([values[k] for k in ("open", "high", "low", "close")])
    bad = (prices <= 0).any(axis=1) | (values["volume"] < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"non-positive price or negative volume in row {raw.iloc[i].tolist()}",
            source=path,
            line=first_line + i,
        )
    inverted = (values["high"] < np.maximum(values["open"], values["close"])) | (
        values["low"] > np.minimum(values["open"], values["close"])
    )
    if inverted.any():
        i = int(np.flatnonzero(inverted)[0])
        raise DataError("high/low do not bracket open/close", source=path, line=first_line + i)

    frame = pd.DataFrame(values)
    frame["line"] = np.arange(first_line, first_line + len(raw))
    frame.index = opens
    # Rows are now oldest first; `line` keeps file order within a bar (newest section first).
    frame = frame.sort_values("line", kind="stable").sort_index(kind="stable")
    dupes = frame.index.duplicated(keep=False)
    duplicates_dropped = 0
    if dupes.any():
        # CDD repeats a bar where its newer, full-precision section meets the older rounded
        # one (e.g. Binance 2017-12-18). Prices that agree to DUPLICATE_TOLERANCE are the same
        # bar: keep the row that comes first in the file. Anything else is a real conflict.
        for ts, group in frame[dupes].groupby(level=0):
            prices = group[["open", "high", "low", "close"]].to_numpy()
            spread = (prices.max(axis=0) - prices.min(axis=0)) / prices.min(axis=0)
            if (spread > DUPLICATE_TOLERANCE).any():
                lines = ", ".join(str(v) for v in group["line"])
                raise DataError(
                    f"conflicting rows for the bar opening {ts.isoformat()} (lines {lines})",
                    source=path,
                )
        duplicates_dropped = int(frame.index.duplicated().sum())
        frame = frame[~frame.index.duplicated(keep="first")]

    tf = timeframe or _infer_timeframe(frame.index, path)
    bar = timeframe_delta(tf)
    partial_dropped = 0
    if drop_partial and len(frame):
        frame = frame.iloc[:-1]
        partial_dropped = 1
    frame.index = utc_index(frame.index + bar)  # open time -> close time
    grid = (
        pd.date_range(frame.index.min(), frame.index.max(), freq=bar) if len(frame) else frame.index
    )
    missing = utc_index(grid.difference(frame.index))
    bars = frame.loc[:, [*OHLC_COLUMNS, "trade_count"]]
    return CddFile(
        path=path,
        symbol=symbol,
        timeframe=tf,
        bars=bars,
        rows_read=len(raw),
        duplicates_dropped=duplicates_dropped,
        partial_dropped=partial_dropped,
        missing=missing,
    )
