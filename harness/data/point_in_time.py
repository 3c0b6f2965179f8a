"""Point-in-time chain tables: `ChainTable` answers "the chain as known at t" (the last
snapshot of each instrument within the staleness window), marks and option bars over one
period of chain rows; `ChainTableSource` is the `MarketDataSource` part every chain source
builds on them; `MarkPeriod` is one period's mark table.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from harness.coins import coin_of_instrument_underlying
from harness.data.chain_scan import (
    ChainColumns,
    columns_from_frame,
    columns_to_frame,
    empty_columns,
    rows_sorted_by,
)
from harness.data.errors import DataError
from harness.data.source import OHLC_COLUMNS, empty_chain_frame, empty_ohlc
from harness.data.store_schema import normalize_store_chain
from harness.instruments import parse_instrument_name
from harness.timestamps import TimestampLike, to_utc, utc_index
from harness.types import Timeframe, timeframe_delta


class ChainTable:
    """Resampled chain bars of one underlying, held as columns and queried point-in-time.

    A query at time t reads the bar closing at b = t floored to the bar grid (b <= t, so
    nothing after t is ever used). Each instrument is quoted by its latest snapshot in a bar
    closing at or before b, if that snapshot is younger than `max_staleness` at b (b -
    quote_time < max_staleness; default one bar, i.e. quoted within the bar b itself) and the
    option has not expired (expiry > t). Otherwise it is left out; instruments left out for
    staleness are counted in `gate_counts["stale"]`. Marks (`marks`) use `mark_staleness`
    (default `max_staleness`): a store with sparser snapshots than its bars carries the last
    snapshot's mark until the next one, never an invented value.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        timeframe: Timeframe,
        max_staleness: pd.Timedelta | None = None,
        *,
        mark_staleness: pd.Timedelta | None = None,
    ):
        cols = columns_from_frame(normalize_store_chain(frame)) if len(frame) else empty_columns()
        self._setup(cols, timeframe, max_staleness, mark_staleness)

    @classmethod
    def from_columns(
        cls,
        cols: ChainColumns,
        timeframe: Timeframe,
        max_staleness: pd.Timedelta | None = None,
        *,
        mark_staleness: pd.Timedelta | None = None,
    ) -> ChainTable:
        """A table over already-converted columns (no copy when they are sorted by as_of)."""
        table = cls.__new__(cls)
        table._setup(cols, timeframe, max_staleness, mark_staleness)
        return table

    def _setup(
        self,
        cols: ChainColumns,
        timeframe: Timeframe,
        max_staleness: pd.Timedelta | None,
        mark_staleness: pd.Timedelta | None,
    ) -> None:
        self.timeframe = timeframe
        self.bar = timeframe_delta(timeframe)
        self.max_staleness = self.bar if max_staleness is None else pd.Timedelta(max_staleness)
        self.mark_staleness = (
            self.max_staleness if mark_staleness is None else pd.Timedelta(mark_staleness)
        )
        if len(cols) > 1 and (np.diff(cols.as_of) < 0).any():
            cols = cols.take(np.argsort(cols.as_of, kind="stable"))
        self.cols = cols
        self._name_codes: pd.Index | dict[str, int] | None = None
        self._by_code: np.ndarray | None = None
        self._order_by_code: np.ndarray | None = None
        self._next: np.ndarray | None = None
        self._expiry_of_code: np.ndarray | None = None
        self._quoted_by_close: bool | None = None
        self._gap_rows: np.ndarray | None = None  # rows followed by a gap > max_staleness
        self._frame: pd.DataFrame | None = None
        self.gate_counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.cols)

    @property
    def frame(self) -> pd.DataFrame:
        """All rows as a store chain frame (CHAIN_COLUMNS + quote_time), sorted by as_of."""
        if self._frame is None:
            out = columns_to_frame(self.cols)
            out["quote_time"] = pd.to_datetime(self.cols.quote_time, utc=True)
            self._frame = out
        return self._frame

    def _bar_floor(self, t_ns: np.ndarray) -> np.ndarray:
        """The latest bar close at or before each time (bars aligned to the Unix epoch)."""
        return t_ns - np.mod(t_ns, self.bar.value)

    def _window_rows(self, times_ns: np.ndarray, lookback_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (and the query index of each) of bars in (t - lookback, t] per query t."""
        lo = np.searchsorted(self.cols.as_of, times_ns - lookback_ns, side="right")
        hi = np.searchsorted(self.cols.as_of, times_ns, side="right")
        return _expand(lo, hi)

    def at(
        self,
        times: Sequence[TimestampLike] | pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> pd.DataFrame:
        """Chains at each of `times` as one frame with CHAIN_COLUMNS (`as_of` = query time).

        `kinds` and `max_dte` (days to expiry) only narrow the result.
        """
        idx = utc_index(pd.DatetimeIndex([to_utc(t) for t in times]))
        if len(self.cols) == 0 or len(idx) == 0:
            return empty_chain_frame()
        return columns_to_frame(self.at_columns(idx, kinds=kinds, max_dte=max_dte))

    def at_columns(
        self,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> ChainColumns:
        """`at` as columns (as_of = query time; quote_time = the snapshot's)."""
        rows, which, t_ns = self.at_rows(times, kinds=kinds, max_dte=max_dte)
        if rows.size == 0:
            return replace(empty_columns(self.cols.underlying), names=self.cols.names)
        return replace(self.cols.take(rows), as_of=t_ns[which])

    def at_rows(
        self,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`at_columns` as row indices: (rows, query index of each, query times in ns).

        Rows come in chain store order (query, calls first, expiry, strike).
        """
        idx = utc_index(pd.DatetimeIndex(times))
        return self.at_rows_ns(idx.as_unit("ns").asi8, kinds=kinds, max_dte=max_dte)

    def at_rows_ns(
        self,
        t_ns: np.ndarray,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`at_rows` for query times already in int64 ns UTC (no pandas index made: a bulk
        scan asks ~10 chunks of a few hundred times per block)."""
        c = self.cols
        t_ns = np.asarray(t_ns, dtype=np.int64)
        none = np.empty(0, dtype=np.int64)
        if len(c) == 0 or len(t_ns) == 0:
            return none, none, t_ns
        ref_ns = self._bar_floor(t_ns)
        stale_ns = self.max_staleness.value
        if self._quotes_by_bar_close():
            # A row at or before ref - stale has quote_time <= as_of <= ref - stale: never
            # fresh. Only the freshness window (ref - stale, ref] can give rows; the bar before
            # it is looked at only to count instruments that just went stale (`_stale_gaps`).
            rows, which = self._window_rows(ref_ns, stale_ns)
            self.gate_counts["stale"] += self._stale_gaps(t_ns, ref_ns, kinds, max_dte)
        else:
            # Look one bar further back than the freshness window so instruments that just
            # went stale are seen and counted instead of silently vanishing.
            rows, which = self._window_rows(ref_ns, stale_ns + self.bar.value)
        if rows.size == 0:
            return none, none, t_ns
        rows, which = self._live(rows, which, t_ns, ref_ns, kinds, max_dte)
        fresh = (ref_ns[which] - c.quote_time[rows]) < stale_ns
        self.gate_counts["stale"] += int((~fresh).sum())
        rows, which = rows[fresh], which[fresh]
        # ChainStore order (time, calls first, expiry, strike), so the store need not re-sort;
        # rows read from the tiered layout usually are in it already
        keys = (which, ~c.is_call[rows], c.expiry[rows], c.values["strike"][rows])
        if np.isnan(keys[-1]).any() or not rows_sorted_by(keys):  # lexsort puts NaN last
            order = np.lexsort(keys[::-1])
            rows, which = rows[order], which[order]
        return rows, which, t_ns

    def _live(
        self,
        rows: np.ndarray,
        which: np.ndarray,
        t_ns: np.ndarray,
        ref_ns: np.ndarray,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Window rows (query `which`) not expired at t, of `kinds`, within `max_dte`, and
        their instrument's latest row at or before the query's bar."""
        c = self.cols
        alive = c.expiry[rows] > t_ns[which]
        if max_dte is not None:
            alive &= c.expiry[rows] - t_ns[which] <= max_dte * 86_400e9
        if set(kinds) != {"call", "put"}:
            want_call = "call" in kinds
            alive &= c.is_call[rows] == want_call
        rows, which = rows[alive], which[alive]
        # An instrument's latest bar <= t in the window is its row whose next row (same
        # instrument, next in time) lies after the window; alive is per instrument and query.
        latest = self._next_as_of()[rows] > ref_ns[which]
        return rows[latest], which[latest]

    def _quotes_by_bar_close(self) -> bool:
        """Whether every row was quoted at or before its bar close (quote_time <= as_of).

        True of every store the importers write (a bar holds the last snapshot inside it);
        `at_rows` then never has to expand the bar before the freshness window.
        """
        if self._quoted_by_close is None:
            self._quoted_by_close = bool((self.cols.quote_time <= self.cols.as_of).all())
        return self._quoted_by_close

    def _stale_gaps(
        self,
        t_ns: np.ndarray,
        ref_ns: np.ndarray,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> int:
        """Instruments whose latest row at a query lies in the bar before its freshness window
        (ref - stale - bar, ref - stale]: stale (quote_time <= as_of), counted, never returned.

        Such a row's next row is more than `max_staleness` later, so only rows followed by a
        gap that long (about one per instrument: its last) are expanded over the queries.
        """
        c = self.cols
        stale_ns = self.max_staleness.value
        if self._gap_rows is None:
            self._gap_rows = np.flatnonzero(self._next_as_of() - stale_ns > c.as_of)  # no overflow
        gap = self._gap_rows
        if len(gap) == 0:
            return 0
        stamps = c.as_of[gap]
        lo = np.searchsorted(stamps, ref_ns - stale_ns - self.bar.value, side="right")
        hi = np.searchsorted(stamps, ref_ns - stale_ns, side="right")
        pos, which = _expand(lo, hi)
        if len(pos) == 0:
            return 0
        rows, which = self._live(gap[pos], which, t_ns, ref_ns, kinds, max_dte)
        return len(rows)

    def _next_as_of(self) -> np.ndarray:
        """Per row, the as_of (ns) of the same instrument's next row; int64 max for the last."""
        if self._next is None:
            c = self.cols
            order = self._code_order()
            stamps, codes = c.as_of[order], c.code[order]
            last = np.iinfo(np.int64).max
            nxt = np.full(len(c), last)
            nxt[order[:-1]] = np.where(codes[1:] == codes[:-1], stamps[1:], last)
            self._next = nxt
        return self._next

    def _code_order(self) -> np.ndarray:
        """Row indices sorted by (instrument code, as_of), ties in row order."""
        if self._order_by_code is None:
            c = self.cols
            # rows are sorted by as_of, so a stable sort by code alone orders by (code, as_of);
            # with fewer than 65,536 instruments numpy radix-sorts 16-bit keys (4x a lexsort)
            if len(c.names) < 2**16:
                self._order_by_code = np.argsort(c.code.astype(np.uint16), kind="stable")
            else:
                self._order_by_code = np.lexsort((c.as_of, c.code))
        return self._order_by_code

    def _code_index(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Rows sorted by (instrument, bar), their search keys and the key stride."""
        if self._by_code is None:
            c = self.cols
            bar_ns = self.bar.value
            base = int(c.as_of.min() // bar_ns) if len(c) else 0
            bar_idx = c.as_of // bar_ns - base
            stride = int(bar_idx.max()) + 2 if len(c) else 1
            order = self._code_order()
            self._by_code = order
            self._keys = c.code[order] * stride + bar_idx[order]
            self._stride = stride
            self._base = base
        return self._by_code, self._keys, self._stride

    def expiry_of_code(self) -> np.ndarray:
        """Expiry (ns) of each instrument code."""
        if self._expiry_of_code is None:
            out = np.zeros(len(self.cols.names), dtype=np.int64)
            out[self.cols.code] = self.cols.expiry
            self._expiry_of_code = out
        return self._expiry_of_code

    def codes_of(self, names: Sequence[str]) -> np.ndarray:
        """Code of each instrument name (-1 when the table has no row of it)."""
        if self._name_codes is None:
            # a hashed index built in C: a year holds tens of thousands of names, a Python
            # dict of them cost more than the mark look-ups it served
            index = pd.Index(self.cols.names, dtype=object)
            if index.is_unique:
                self._name_codes = index
            else:  # names repeat only in hand-built columns: the last one wins, as before
                self._name_codes = {str(n): i for i, n in enumerate(self.cols.names)}
        if isinstance(self._name_codes, pd.Index):
            found = self._name_codes.get_indexer(pd.Index(list(names), dtype=object))
            return found.astype(np.int64, copy=False)
        get = self._name_codes.get
        return np.fromiter((get(n, -1) for n in names), dtype=np.int64, count=len(names))

    def marks(
        self, names: Sequence[str], times: pd.DatetimeIndex, codes: np.ndarray | None = None
    ) -> np.ndarray:
        """Mark prices (USD) of `names` at `times`, shape (names, times).

        The latest snapshot at or before each time's bar, if younger than `mark_staleness`
        and the option has not expired; NaN otherwise or when the name is not in the table.
        """
        idx = utc_times(times)
        t_ns = idx.as_unit("ns").asi8
        out = np.full((len(names), len(t_ns)), np.nan)
        if len(self.cols) == 0 or len(names) == 0 or len(t_ns) == 0:
            return out
        if codes is None:
            codes = self.codes_of(names)
        known = np.flatnonzero(codes >= 0)
        if len(known) == 0:
            return out
        pair_codes = np.repeat(codes[known], len(t_ns))
        out[known] = self.marks_at(pair_codes, np.tile(t_ns, len(known))).reshape(-1, len(t_ns))
        return out

    def marks_at(self, codes: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
        """Mark price (USD) of instrument code[i] at time t_ns[i] (ns), one per pair; NaN as `marks`.

        Pairs, not a names x times grid: one request answers instruments over different
        ranges (every expiry's paths at once) without the grid's unused cells.
        """
        codes = np.asarray(codes, dtype=np.int64)
        t_ns = np.asarray(t_ns, dtype=np.int64)
        out = np.full(len(codes), np.nan)
        if len(self.cols) == 0 or len(codes) == 0:
            return out
        c = self.cols
        known = codes >= 0
        order, keys, stride = self._code_index()
        ref_ns = self._bar_floor(t_ns)
        ref_idx = np.clip(ref_ns // self.bar.value - self._base, -1, stride - 2)
        query = codes * stride + ref_idx
        pos = np.searchsorted(keys, query, side="right") - 1
        ok = known & (pos >= 0) & (ref_idx >= 0)
        pos = np.where(ok, pos, 0)
        ok &= keys[pos] // stride == codes
        rows = order[pos]
        ok &= (ref_ns - c.quote_time[rows]) < self.mark_staleness.value
        ok &= c.expiry[rows] > t_ns
        return np.where(ok, c.values["mark_price"][rows], np.nan)

    def ohlc(
        self, name: str, start: pd.Timestamp, end: pd.Timestamp, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Bars of one option from its bar-close marks (USD): open = high = low = close = mark.

        Snapshot data carries no intrabar path or traded volume, so high/low are the close and
        volume is NaN; a coarser `timeframe` takes the last mark of each bin.
        """
        c = self.cols
        code = self.codes_of([name])[0]
        if code < 0:
            return empty_ohlc()
        lo = (start - timeframe_delta(timeframe)).value
        rows = np.flatnonzero((c.code == code) & (c.as_of >= lo) & (c.as_of <= end.value))
        if len(rows) == 0:
            return empty_ohlc()
        close = pd.Series(
            c.values["mark_price"][rows], index=utc_index(pd.to_datetime(c.as_of[rows], utc=True))
        )
        if timeframe_delta(timeframe) != self.bar:
            close = (
                close.resample(
                    timeframe_delta(timeframe), label="right", closed="right", origin="epoch"
                )
                .last()
                .dropna()
            )
        close = close[(close.index >= start) & (close.index <= end)]
        out = pd.DataFrame(
            {"open": close, "high": close, "low": close, "close": close, "volume": np.nan},
            index=close.index,
        )
        return out.loc[:, list(OHLC_COLUMNS)]


class ChainTableSource:
    """`BulkChainSource` methods for sources whose chains live in `ChainTable`s.

    A subclass provides `_chain_table(underlying, start, end)` (None when it has no data for
    that underlying) and may override `_has_chains(underlying)`, which lets `option_marks`
    leave unknown underlyings as NaN rather than fail.
    """

    gate_counts: Counter[str]

    def _chain_table(
        self, underlying: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> ChainTable | None:
        raise NotImplementedError

    def _has_chains(self, underlying: str) -> bool:
        return True

    def chain_frame(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> pd.DataFrame:
        """Chains at each of `times` (CHAIN_COLUMNS), optionally narrowed to kinds / max DTE."""
        times = utc_index(pd.DatetimeIndex(times))
        if len(times) == 0:
            return empty_chain_frame()
        table = self._chain_table(underlying, times.min(), times.max())
        if table is None:
            return empty_chain_frame()
        out = table.at(times, kinds=kinds, max_dte=max_dte)
        # tables may be reused across calls: move their counts so none is counted twice
        self.gate_counts.update(table.gate_counts)
        table.gate_counts.clear()
        return out

    def option_marks(self, instrument_names: Sequence[str], times: pd.DatetimeIndex) -> np.ndarray:
        """Mark prices (USD), shape (len(names), len(times)); NaN where not listed or stale."""
        times = utc_times(times)
        out = np.full((len(instrument_names), len(times)), np.nan)
        if len(times) == 0 or len(instrument_names) == 0:
            return out
        by_underlying: dict[str, list[int]] = {}
        for i, name in enumerate(instrument_names):
            by_underlying.setdefault(underlying_of(name), []).append(i)
        for underlying, rows in by_underlying.items():
            if not self._has_chains(underlying):
                continue
            table = self._chain_table(underlying, times.min(), times.max())
            if table is not None:
                out[rows] = table.marks([instrument_names[i] for i in rows], times)
        return out


@dataclass
class MarkPeriod:
    """Mark columns of one underlying loaded by the last bulk `chain_frame` (ns bounds, inclusive)."""

    kinds: frozenset[str]
    max_dte: float | None
    lo: int
    hi: int
    table: ChainTable
    # the rows of the codes a selection put in its band (`hot_codes`, bool per code): the
    # simulator's mark paths are theirs, so they are looked up in this small table
    hot: ChainTable | None = None
    hot_codes: np.ndarray | None = None
    # rows of low days-to-expiry tiers were read for the band's codes only: other names are
    # not covered (`FileDataSource._covered` sends them to a scan)
    hot_only: bool = False

    def table_for(self, codes: np.ndarray) -> ChainTable:
        """The small table when it holds every one of `codes` (-1: unknown), else the full one."""
        if self.hot is None or self.hot_codes is None:
            return self.table
        known = codes[codes >= 0]
        return self.hot if bool(self.hot_codes[known].all()) else self.table


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions lo[q] .. hi[q] - 1 for every q, one after the other, and the q of each."""
    lengths = hi - lo
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    which = np.repeat(np.arange(len(lo)), lengths)
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return starts + np.arange(total), which


def utc_times(times: pd.DatetimeIndex | Sequence[TimestampLike]) -> pd.DatetimeIndex:
    """`times` as a UTC ns DatetimeIndex, without copies when it already is one."""
    if isinstance(times, pd.DatetimeIndex) and str(times.tz) == "UTC" and times.unit == "ns":
        return times
    return utc_index(pd.DatetimeIndex(times))


@functools.cache
def coin_of(prefix: str) -> str:
    """The store folder of an option name's underlying part (`SOL_USDC` -> `SOL`)."""
    return coin_of_instrument_underlying(prefix)[0]


def underlying_of(instrument_name: str) -> str:
    """The store folder (coin) of an option name; `DataError` if the name does not parse."""
    try:
        return coin_of(parse_instrument_name(instrument_name).underlying)
    except ValueError as exc:
        raise DataError(f"unknown instrument name {instrument_name!r}: {exc}") from exc
