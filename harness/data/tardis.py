"""Tardis.dev `options_chain` CSV files: streamed, validated and resampled to chain bars.

A Tardis options_chain file (`.csv` or `.csv.gz`) has one row per Deribit ticker update with
the columns in `TARDIS_COLUMNS`: microsecond timestamps, prices in coin (inverse options) or in
USDC per coin (linear options such as SOL_USDC; `harness.coins` says which), IVs in
percent and empty cells where a side of the book is missing. We read it with pyarrow's streaming
CSV reader in blocks of `block_size` bytes, so memory is bounded by the block size plus the
resampled output (bars x instruments), never by the file size. Each block is reduced to the
last snapshot per instrument per bar before any per-row conversion, which is what makes the
import fast: conversions (coin -> USD at `underlying_price`, IV percent -> fraction) run on the
reduced rows only.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from harness.coins import COINS, coin_of_instrument_underlying, is_listed_style
from harness.data.errors import DataError
from harness.data.point_in_time import ChainTable, ChainTableSource
from harness.data.source import (
    OHLC_COLUMNS,
    MarketDataSource,
    empty_ohlc,
    frame_to_snapshots,
    inclusive_range,
)
from harness.data.store_schema import concat_chain, normalize_store_chain
from harness.instruments import parse_instrument_name
from harness.pricing import black76_greeks
from harness.timestamps import TimestampLike, to_utc, utc_index
from harness.types import OptionSnapshot, Timeframe, timeframe_delta

TARDIS_COLUMNS: tuple[str, ...] = (
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "type",
    "strike_price",
    "expiration",
    "open_interest",
    "last_price",
    "bid_price",
    "bid_amount",
    "bid_iv",
    "ask_price",
    "ask_amount",
    "ask_iv",
    "mark_price",
    "mark_iv",
    "underlying_index",
    "underlying_price",
    "delta",
    "gamma",
    "vega",
    "theta",
    "rho",
)
_INT_COLUMNS = ("timestamp", "expiration")
_STRING_COLUMNS = ("exchange", "symbol", "type")
_FLOAT_COLUMNS = (
    "strike_price",
    "open_interest",
    "last_price",
    "bid_price",
    "bid_amount",
    "bid_iv",
    "ask_price",
    "ask_amount",
    "ask_iv",
    "mark_price",
    "mark_iv",
    "underlying_price",
    "delta",
    "gamma",
    "vega",
    "theta",
)
# Columns we read; local_timestamp, underlying_index and rho are not needed for chain bars.
REQUIRED_COLUMNS: tuple[str, ...] = tuple(
    c for c in TARDIS_COLUMNS if c in _INT_COLUMNS + _STRING_COLUMNS + _FLOAT_COLUMNS
)
_NON_NEGATIVE = (
    "strike_price",
    "open_interest",
    "last_price",
    "bid_price",
    "bid_amount",
    "ask_price",
    "ask_amount",
    "mark_price",
    "underlying_price",
)
_GREEKS = ("delta", "gamma", "vega", "theta")
_US = 1000  # nanoseconds per microsecond
_DAY_US = 86_400_000_000
_CODE_BITS = 21  # room for 2 million instruments in a (bar, instrument) key
DEFAULT_BLOCK_SIZE = 16 << 20  # bytes of CSV per streamed block

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True, slots=True)
class _Symbol:
    keep: bool
    underlying: str  # the coin (SOL for SOL_USDC-... names)
    linear: bool  # quoted in USDC per coin (no coin -> USD conversion)
    skip_reason: str  # counter name when not kept
    kind: str
    strike: float
    expiry_us: int


def _classify(prefix: str, wanted: set[str] | None) -> tuple[str, bool, str]:
    """(coin, linear, skip reason or "") of an option name's underlying part."""
    symbol, style = coin_of_instrument_underlying(prefix)
    linear = style == "linear"
    if symbol not in COINS:
        return symbol, linear, "not_in_coin_registry"
    if not is_listed_style(symbol, prefix):
        # BTC_USDC / ETH_USDC: a linear product beside the inverse one the registry trades.
        return symbol, linear, "linear_skipped"
    if wanted is not None and symbol not in wanted:
        return symbol, linear, "other_underlying"
    return symbol, linear, ""


def _open_text_head(path: Path) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:  # type: ignore[operator]
        return fh.readline()


def check_header(path: Path) -> list[str]:
    """Read the header of a Tardis file and raise DataError if a needed column is missing."""
    try:
        head = _open_text_head(path)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read file: {exc}", source=path) from exc
    columns = next(csv.reader([head]), []) if head else []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"not a Tardis options_chain file: missing column(s) {', '.join(missing)}",
            source=path,
            line=1,
        )
    return columns


def _locate_bad_value(
    chunk: bytes | memoryview, columns: list[str], path: Path, first_line: int, reason: str
) -> DataError:
    """Scan one chunk row by row to name the line and column of a value pyarrow rejected."""
    checks = {c: int for c in _INT_COLUMNS} | {c: float for c in _FLOAT_COLUMNS}
    positions = {c: columns.index(c) for c in checks}
    rows = csv.reader(io.StringIO(bytes(chunk).decode("utf-8", errors="replace"), newline=""))
    for line, row in enumerate(rows, start=first_line):
        if len(row) != len(columns):
            return DataError(
                f"expected {len(columns)} fields, found {len(row)}", source=path, line=line
            )
        for col, pos in positions.items():
            text = row[pos]
            if text == "" and col not in _INT_COLUMNS:
                continue
            try:
                checks[col](text)
            except ValueError:
                kind = "integer (microseconds since epoch)" if col in _INT_COLUMNS else "number"
                return DataError(
                    f"column {col}: cannot parse {text!r} as {kind}", source=path, line=line
                )
    return DataError(f"unreadable CSV near line {first_line}: {reason}", source=path)


def _chunks(stream: pa.NativeFile, block_size: int) -> Iterator[memoryview]:
    """Yield the data rows in pieces of about `block_size` bytes, each ending at a newline.

    Each piece is a view into a buffer that the next iteration overwrites: parse it before
    asking for the next one. Reading into a reused buffer avoids copying every block twice.
    """
    buf = bytearray(block_size)
    view = memoryview(buf)
    filled = 0
    header = True
    while True:
        if filled == len(buf):  # a single line longer than the buffer: use a bigger one
            bigger = bytearray(2 * len(buf))
            bigger[:filled] = buf[:filled]
            buf, view = bigger, memoryview(bigger)
        n = stream.readinto(view[filled:])
        end = filled + n
        if n == 0:
            if header or not bytes(view[:end]).strip():
                return
            if buf[end - 1 : end] != b"\n":
                yield bytes(view[:end]) + b"\n"
            else:
                yield view[:end]
            return
        start = 0
        if header:
            # Drop the header line (already checked by check_header).
            eol = buf.find(b"\n", 0, end)
            if eol < 0:
                filled = end
                continue
            start, header = eol + 1, False
        cut = buf.rfind(b"\n", start, end)
        if cut < 0:
            buf[: end - start] = buf[start:end]
            filled = end - start
            continue
        yield view[start : cut + 1]
        rest = end - (cut + 1)
        buf[:rest] = buf[cut + 1 : end]
        filled = rest


def _col(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


class TardisResampler:
    """Streams Tardis options_chain files and keeps the last snapshot per instrument per bar.

    Feed files with `read_file`, which yields completed store chain frames (CHAIN_COLUMNS +
    `quote_time`) as days complete; call `finish` for the rest. Rows are gated and counted in
    `counts`, never repaired: `linear_skipped` (BTC_USDC/ETH_USDC: linear options of coins the
    registry trades inverse), `not_in_coin_registry`, `other_underlying`,
    `after_expiry`, `no_mark` (no mark price or underlying price), `greeks_computed` (greeks
    missing in the file, computed from mark_iv with Black-76).
    """

    def __init__(
        self,
        timeframe: Timeframe = "1h",
        *,
        underlyings: Iterable[str] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ):
        self.timeframe = timeframe
        self._bar_us = int(timeframe_delta(timeframe).value // _US)
        self._underlyings = None if underlyings is None else {u.upper() for u in underlyings}
        self._block_size = int(block_size)
        self._codes: dict[str, int] = {}
        self._symbols: list[_Symbol] = []
        self._pending: list[pa.Table] = []
        self._arrays: dict[str, np.ndarray] | None = None
        self._day_checked = -1
        self.counts: Counter[str] = Counter()

    # ---- public

    def read_file(
        self, path: str | os.PathLike[str], progress: ProgressCallback | None = None
    ) -> Iterator[pd.DataFrame]:
        """Stream one file; yield store chain frames for the days that are complete."""
        path = Path(path)
        columns = check_header(path)
        size = path.stat().st_size
        raw = pa.OSFile(str(path), "rb")
        try:
            stream = pa.CompressedInputStream(raw, "gzip") if path.name.endswith(".gz") else raw
            first_row = 0
            # We cut the stream into newline-aligned chunks ourselves and parse each with a
            # multi-threaded read_csv: pyarrow's own streaming reader reads far ahead of the
            # consumer, which made memory grow with the file.
            for chunk in _chunks(stream, self._block_size):
                batch = self._parse(chunk, columns, path, first_row)
                if batch.num_rows:
                    min_bar = self._consume(batch, path, first_row)
                    first_row += batch.num_rows
                    # Days can only complete when the stream enters a new day.
                    if min_bar is not None and min_bar // _DAY_US > self._day_checked:
                        self._day_checked = min_bar // _DAY_US
                        done = self._flush(before_us=min_bar)
                        if len(done):
                            yield done
                if progress is not None:
                    progress(raw.tell(), size)
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot read file: {exc}", source=path) from exc
        finally:
            raw.close()
        self.counts["rows_read"] += first_row
        self.counts["files"] += 1

    def finish(self) -> pd.DataFrame:
        """Return every bar still pending (store chain frame)."""
        return self._flush(before_us=None)

    # ---- streaming

    def _parse(
        self, chunk: bytes | memoryview, columns: list[str], path: Path, first_row: int
    ) -> pa.Table:
        types = {c: pa.int64() for c in _INT_COLUMNS}
        types |= {c: pa.float64() for c in _FLOAT_COLUMNS}
        # Plain strings parse faster than pyarrow's dictionary type; we encode symbols after.
        types |= {c: pa.string() for c in _STRING_COLUMNS}
        try:
            table = pacsv.read_csv(
                pa.py_buffer(chunk),
                read_options=pacsv.ReadOptions(column_names=columns, block_size=1 << 20),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    include_columns=list(REQUIRED_COLUMNS),
                    null_values=[""],
                    strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            raise _locate_bad_value(chunk, columns, path, first_row + 2, str(exc)) from exc
        return table.combine_chunks() if table.num_rows else table

    def _register(
        self, names: list[str], first_rows: np.ndarray, path: Path, first_row: int
    ) -> None:
        for name, row in zip(names, first_rows, strict=True):
            try:
                spec = parse_instrument_name(name)
            except ValueError as exc:
                line = first_row + int(row) + 2
                raise DataError(f"unknown instrument name: {exc}", source=path, line=line) from None
            symbol, linear, skip = _classify(spec.underlying, self._underlyings)
            self._codes[name] = len(self._symbols)
            self._symbols.append(
                _Symbol(
                    keep=not skip,
                    underlying=symbol,
                    linear=linear,
                    skip_reason=skip,
                    kind=spec.kind,
                    strike=spec.strike,
                    expiry_us=int(spec.expiry.value // _US),
                )
            )
        self._arrays = None

    def _symbol_arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {
                "keep": np.array([s.keep for s in self._symbols], dtype=bool),
                "linear": np.array([s.linear for s in self._symbols], dtype=bool),
                "expiry_us": np.array([s.expiry_us for s in self._symbols], dtype=np.int64),
                "strike": np.array([s.strike for s in self._symbols], dtype=np.float64),
                "call": np.array([s.kind == "call" for s in self._symbols], dtype=np.int8),
            }
        return self._arrays

    def _check_rows_match_names(
        self, batch: pa.Table, codes: np.ndarray, path: Path, first_row: int
    ) -> None:
        """Every row's type, strike and expiration must agree with its instrument name."""
        sym = self._symbol_arrays()
        kind = pc.dictionary_encode(_col(batch, "type"))
        kind_map = np.array(
            [{"call": 1, "put": 0}.get(k, -1) for k in kind.dictionary.to_pylist()], dtype=np.int8
        )
        row_call = kind_map[kind.indices.to_numpy(zero_copy_only=False)]
        strike = _col(batch, "strike_price").to_numpy()
        expiration = _col(batch, "expiration").to_numpy()
        bad = (row_call != sym["call"][codes]) | (expiration != sym["expiry_us"][codes])
        bad |= ~(np.abs(strike - sym["strike"][codes]) <= 1e-9 * sym["strike"][codes])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            spec = self._symbols[codes[i]]
            name = list(self._codes)[codes[i]]
            raise DataError(
                f"row does not match instrument {name} ({spec.kind}, strike {spec.strike:g}, "
                f"expiry {pd.Timestamp(spec.expiry_us, unit='us', tz='UTC').isoformat()}): "
                f"type={kind[i].as_py()!r}, strike_price={strike[i]!r}, expiration={expiration[i]!r}",
                source=path,
                line=first_row + i + 2,
            )

    def _consume(self, batch: pa.Table, path: Path, first_row: int) -> int | None:
        """Validate one block, reduce it to the last row per (bar, instrument); min bar (us)."""
        n = batch.num_rows
        for col in ("timestamp", "symbol", "type", "expiration", "strike_price"):
            arr = _col(batch, col)
            if arr.null_count:
                bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"empty {col}", source=path, line=first_row + bad + 2)
        exchange = pc.unique(_col(batch, "exchange")).to_pylist()
        if any(e != "deribit" for e in exchange):
            other = next(e for e in exchange if e != "deribit")
            raise DataError(f"exchange {other!r} is not supported (only deribit)", source=path)
        for col in _NON_NEGATIVE:
            values = _col(batch, col).to_numpy(zero_copy_only=False)
            negative = values < 0
            if negative.any():
                bad = int(np.flatnonzero(negative)[0])
                raise DataError(
                    f"negative {col} {values[bad]!r}", source=path, line=first_row + bad + 2
                )

        sym = pc.dictionary_encode(_col(batch, "symbol"))
        local_names = sym.dictionary.to_pylist()
        local_idx = sym.indices.to_numpy(zero_copy_only=False)
        new = [i for i, name in enumerate(local_names) if name not in self._codes]
        if new:
            present, first = np.unique(local_idx, return_index=True)
            first_of = dict(zip(present.tolist(), first.tolist(), strict=True))
            new = [i for i in new if i in first_of]
            self._register(
                [local_names[i] for i in new],
                np.array([first_of[i] for i in new], dtype=np.int64),
                path,
                first_row,
            )
        to_global = np.array([self._codes.get(name, -1) for name in local_names], dtype=np.int64)
        codes = to_global[local_idx]
        self._check_rows_match_names(batch, codes, path, first_row)
        keep_code = self._symbol_arrays()["keep"]

        ts = _col(batch, "timestamp").to_numpy()
        expiration = _col(batch, "expiration").to_numpy()
        keep = keep_code[codes]
        self._count_skips(codes, keep)
        live = ts < expiration
        self.counts["after_expiry"] += int((keep & ~live).sum())
        keep &= live
        if not keep.any():
            return int(-(-ts.min() // self._bar_us) * self._bar_us) if n else None
        rows = np.flatnonzero(keep)
        bar = -(-ts[rows] // self._bar_us)  # ceil: bar t covers (t - tf, t]
        key = (bar << _CODE_BITS) | codes[rows]
        order = np.lexsort((ts[rows], key))  # stable: equal times keep file order
        key_sorted = key[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = key_sorted[1:] != key_sorted[:-1]
        picked = rows[order[last]]
        # Drop the string columns before the take: codes carry the instrument identity.
        reduced = batch.select([c for c in REQUIRED_COLUMNS if c not in _STRING_COLUMNS]).take(
            pa.array(picked)
        )
        reduced = reduced.append_column("_code", pa.array(codes[picked]))
        self._pending.append(reduced)
        return int(-(-ts.min() // self._bar_us) * self._bar_us)

    def _count_skips(self, codes: np.ndarray, keep: np.ndarray) -> None:
        if keep.all():
            return
        per_code = np.bincount(codes[~keep], minlength=len(self._symbols))
        for code in np.flatnonzero(per_code).tolist():
            self.counts[self._symbols[code].skip_reason] += int(per_code[code])

    def _flush(self, before_us: int | None) -> pd.DataFrame:
        """Convert and return pending bars of days ending at or before `before_us` (all if None)."""
        if not self._pending:
            return concat_chain([])
        table = pa.concat_tables(self._pending)
        ts = table.column("timestamp").to_numpy()
        bar = -(-ts // self._bar_us)
        day_us = _DAY_US
        if before_us is not None:
            # A day's partition is complete once the stream has moved past its last bar.
            done = ((bar * self._bar_us) // day_us + 1) * day_us <= before_us
            if not done.any():
                return concat_chain([])
            self._pending = [table.filter(pa.array(~done))] if not done.all() else []
            table = table.filter(pa.array(done))
            ts, bar = ts[done], bar[done]
        else:
            self._pending = []
        codes = table.column("_code").to_numpy()
        key = (bar << _CODE_BITS) | codes
        order = np.lexsort((ts, key))
        key_sorted = key[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = key_sorted[1:] != key_sorted[:-1]
        pick = order[last]
        return self._to_chain(table.take(pa.array(pick)), bar[pick], codes[pick])

    def _to_chain(self, table: pa.Table, bar: np.ndarray, codes: np.ndarray) -> pd.DataFrame:
        col = {c: table.column(c).to_numpy() for c in table.column_names if c != "_code"}
        f = col["underlying_price"]
        ok = np.isfinite(col["mark_price"]) & np.isfinite(f) & (f > 0)
        self.counts["no_mark"] += int((~ok).sum())
        if not ok.all():
            col = {k: v[ok] for k, v in col.items()}
            bar, codes, f = bar[ok], codes[ok], f[ok]
        symbols = self._symbols
        names = np.array(list(self._codes), dtype=object)[codes]
        # Inverse options are quoted in coin, linear ones in USDC per coin: bring both to
        # (USD, coin) = (price x F, price) or (price, price / F).
        linear = self._symbol_arrays()["linear"][codes]
        to_usd = np.where(linear, 1.0, f)
        to_coin = np.where(linear, 1.0 / f, 1.0)
        mark_quote = col["mark_price"]
        bid_quote = np.where(col["bid_price"] > 0, col["bid_price"], np.nan)
        ask_quote = np.where(col["ask_price"] > 0, col["ask_price"], np.nan)
        mark_coin, bid_coin, ask_coin = (q * to_coin for q in (mark_quote, bid_quote, ask_quote))
        # Deribit reports IV 0 for an empty side; a missing quote has no IV, not a zero IV.
        bid_iv = np.where(
            np.isfinite(bid_coin) & (col["bid_iv"] > 0), col["bid_iv"] / 100.0, np.nan
        )
        ask_iv = np.where(
            np.isfinite(ask_coin) & (col["ask_iv"] > 0), col["ask_iv"] / 100.0, np.nan
        )
        mark_iv = np.where(col["mark_iv"] > 0, col["mark_iv"] / 100.0, np.nan)
        is_call = np.array([symbols[c].kind == "call" for c in codes], dtype=bool)
        strike = col["strike_price"]
        expiry_us = col["expiration"]
        greeks = {g: col[g].copy() for g in _GREEKS}
        missing = ~np.all([np.isfinite(greeks[g]) for g in _GREEKS], axis=0) & np.isfinite(mark_iv)
        if missing.any():
            t_years = (expiry_us[missing] - col["timestamp"][missing]) / 1e6 / (365.0 * 86400.0)
            computed = black76_greeks(
                f[missing], strike[missing], t_years, mark_iv[missing], is_call[missing]
            )
            for g in _GREEKS:
                greeks[g][missing] = getattr(computed, g)
            self.counts["greeks_computed"] += int(missing.sum())
        frame = pd.DataFrame(
            {
                "as_of": pd.to_datetime(bar * self._bar_us, unit="us", utc=True),
                "instrument_name": names,
                "underlying": np.array([symbols[c].underlying for c in codes], dtype=object),
                "kind": np.where(is_call, "call", "put").astype(object),
                "strike": strike,
                "expiry": pd.to_datetime(expiry_us, unit="us", utc=True),
                "underlying_price": f,
                "mark_price": mark_quote * to_usd,
                "bid_price": bid_quote * to_usd,
                "ask_price": ask_quote * to_usd,
                "mark_price_coin": mark_coin,
                "bid_price_coin": bid_coin,
                "ask_price_coin": ask_coin,
                "mark_iv": mark_iv,
                "bid_iv": bid_iv,
                "ask_iv": ask_iv,
                **greeks,
                "open_interest": np.nan_to_num(col["open_interest"], nan=0.0),
                "quote_time": pd.to_datetime(col["timestamp"], unit="us", utc=True),
            }
        )
        self.counts["bars_written"] += len(frame)
        return normalize_store_chain(frame)


def read_tardis(
    files: Sequence[str | os.PathLike[str]],
    timeframe: Timeframe = "1h",
    *,
    underlyings: Iterable[str] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[pd.DataFrame, Counter[str]]:
    """Read Tardis files fully into one store chain frame (for small inputs) plus gate counts."""
    resampler = TardisResampler(timeframe, underlyings=underlyings, block_size=block_size)
    frames: list[pd.DataFrame] = []
    for path in files:
        frames.extend(resampler.read_file(path))
    frames.append(resampler.finish())
    chain = concat_chain(frames)
    if len(chain):
        # Files may overlap at day boundaries: keep the latest quote per bar and instrument.
        chain = chain.sort_values(["as_of", "instrument_name", "quote_time"], kind="stable")
        chain = chain.drop_duplicates(["as_of", "instrument_name"], keep="last").reset_index(
            drop=True
        )
    return chain, resampler.counts


def front_underlying_bars(chain: pd.DataFrame) -> pd.DataFrame:
    """Close-only spot proxy per bar: `underlying_price` of the nearest-expiry option (USD).

    Deribit prices each expiry off its own synthetic future; the nearest one is closest to the
    index. Only bar closes are known, so open = high = low = close and volume is NaN.
    """
    if chain.empty:
        return empty_ohlc()
    live = chain[chain["expiry"] > chain["as_of"]]
    live = live.sort_values(["as_of", "expiry", "quote_time"], kind="stable")
    nearest = live.groupby("as_of", sort=True)["expiry"].transform("min")
    front = live[live["expiry"] == nearest].groupby("as_of", sort=True)["underlying_price"].last()
    idx = utc_index(front.index)
    values = front.to_numpy(dtype=np.float64)
    out = pd.DataFrame({c: values for c in ("open", "high", "low", "close")}, index=idx)
    out["volume"] = np.nan
    return out.loc[:, list(OHLC_COLUMNS)]


class TardisDataSource(ChainTableSource):
    """MarketDataSource reading Tardis options_chain files directly (resampled in memory).

    Good for a few days of data; for more, import into the store (`harness data import
    tardis`) and use FileDataSource. Spot bars come from `spot_source` if given, else from the
    nearest-expiry `underlying_price` (a close-only proxy, see `front_underlying_bars`).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        timeframe: Timeframe = "1h",
        underlyings: Iterable[str] | None = None,
        spot_source: MarketDataSource | None = None,
        max_staleness: str | pd.Timedelta | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ):
        if isinstance(files, str | os.PathLike):
            files = [files]
        self.files = [Path(f) for f in files]
        missing = [str(f) for f in self.files if not f.exists()]
        if missing:
            raise DataError(f"Tardis file(s) not found: {', '.join(missing)}")
        self.timeframe = timeframe
        self._underlyings = underlyings
        self._spot_source = spot_source
        self._max_staleness = None if max_staleness is None else pd.Timedelta(max_staleness)
        self._block_size = block_size
        self._tables: dict[str, ChainTable] | None = None
        self.gate_counts: Counter[str] = Counter()

    def fingerprint(self) -> str:
        """A short description of these files for run records."""
        return f"tardis({','.join(f.name for f in self.files)}; {self.timeframe})"

    def _load(self) -> dict[str, ChainTable]:
        if self._tables is None:
            chain, counts = read_tardis(
                self.files,
                self.timeframe,
                underlyings=self._underlyings,
                block_size=self._block_size,
            )
            self.gate_counts.update(counts)
            self._tables = {
                str(u): ChainTable(part, self.timeframe, self._max_staleness)
                for u, part in chain.groupby("underlying", sort=True)
            }
        return self._tables

    def _table(self, underlying: str) -> ChainTable | None:
        return self._load().get(underlying.upper())

    def _chain_table(
        self, underlying: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> ChainTable | None:
        return self._table(underlying)

    def _has_chains(self, underlying: str) -> bool:
        return underlying.upper() in self._load()

    def get_spot_ohlc(
        self, underlying: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Spot bars from `spot_source`, or the nearest-expiry underlying proxy (USD)."""
        if self._spot_source is not None:
            return self._spot_source.get_spot_ohlc(underlying, start, end, timeframe)
        s, e = inclusive_range(start, end)
        table = self._table(underlying)
        if table is None:
            return empty_ohlc()
        bars = front_underlying_bars(table.frame)
        if timeframe_delta(timeframe) != table.bar:
            close = (
                bars["close"]
                .resample(timeframe_delta(timeframe), label="right", closed="right", origin="epoch")
                .last()
                .dropna()
            )
            bars = pd.DataFrame({c: close for c in ("open", "high", "low", "close")}).assign(
                volume=np.nan
            )
        return bars[(bars.index >= s) & (bars.index <= e)]

    def list_option_chain(self, underlying: str, as_of: TimestampLike) -> list[OptionSnapshot]:
        """Options of `underlying` with a fresh snapshot at `as_of`."""
        return frame_to_snapshots(self.chain_frame(underlying, pd.DatetimeIndex([to_utc(as_of)])))

    def get_option_ohlc(
        self, instrument_name: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Bars of one option from its bar-close marks (USD)."""
        s, e = inclusive_range(start, end)
        try:
            underlying = parse_instrument_name(instrument_name).underlying
        except ValueError as exc:
            raise DataError(f"unknown instrument name: {exc}") from None
        table = self._table(underlying)
        return empty_ohlc() if table is None else table.ohlc(instrument_name, s, e, timeframe)


def write_tardis_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write raw Tardis-format rows (columns TARDIS_COLUMNS) to `.csv` or `.csv.gz` (tests, benchmarks)."""
    path = Path(path)
    buffer = io.StringIO()
    frame.loc[:, list(TARDIS_COLUMNS)].to_csv(buffer, index=False, na_rep="")
    data = buffer.getvalue().encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)
