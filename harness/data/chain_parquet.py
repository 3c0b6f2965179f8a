"""The Parquet scan of chain partitions: row-group plans from statistics (`ScanWindow`,
`plan_row_groups`), the kept rows of a file in time order (`read_chain_files`, `kept_rows`),
the groups a selective scan leaves to a second pass (`split_low`, `LowGroups`), and value
columns whose decode is deferred to the rows a selection keeps (`ParquetDeferred`,
`take_deferred`). See docs/data.md "How the store is read".
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from harness.data.chain_scan import (
    VALUE_COLUMNS,
    ChainColumns,
    as_of_ns,
    columns_from_arrow,
    float_values,
    kind_in,
)
from harness.data.scan_threads import file_pool
from harness.data.store_schema import DTE_COLUMN, DTE_SLACK, STORE_SCAN_COLUMNS

# The value columns a chain selection, point-in-time rows and marks read for every scanned row;
# the others are converted only for the rows a selection keeps (`take_deferred`).
SELECTION_VALUES: tuple[str, ...] = (
    "strike",
    "underlying_price",
    "mark_price",
    "mark_iv",
    "delta",
)


DEFERRED_VALUES: tuple[str, ...] = tuple(c for c in VALUE_COLUMNS if c not in SELECTION_VALUES)


ROW_ID = "_row"


class Codes:
    """Instrument names -> integer codes shared by every block and file of one scan."""

    def __init__(self) -> None:
        self._code: dict[str, int] = {}
        self._names: np.ndarray | None = None

    @property
    def index(self) -> dict[str, int]:
        """Name -> code of every name seen so far (its length is the number of codes)."""
        return self._code

    def remap(self, cols: ChainColumns) -> ChainColumns:
        """`cols` with codes into this scan's names (a plain dict: a month holds ~4k names)."""
        if self._names is not None and cols.names is self._names:
            return cols  # already coded by this scan
        code = self._code
        if 4 * len(cols) < len(cols.names):
            # a few rows of a large dictionary (left-out tiers read for the band): map only
            # the names they use
            used, inverse = np.unique(cols.code, return_inverse=True)
            names = cols.names[used].tolist()
            mapping = np.array([code.get(n, -1) for n in names], dtype=np.int64)
            for i in np.flatnonzero(mapping < 0).tolist():
                mapping[i] = code.setdefault(names[i], len(code))
            self._names = None
            return replace(cols, code=mapping[inverse.reshape(-1)])
        names = cols.names.tolist()
        mapping = np.array([code.get(n, -1) for n in names], dtype=np.int64)
        for i in np.flatnonzero(mapping < 0).tolist():
            mapping[i] = code.setdefault(names[i], len(code))
        self._names = None
        if len(cols) == 0 or np.array_equal(mapping, np.arange(len(mapping))):
            return cols
        return replace(cols, code=mapping[cols.code])

    def names(self) -> np.ndarray:
        if self._names is None:
            self._names = np.asarray(list(self._code), dtype=object)
        return self._names


def read_chain_files(
    paths: Sequence[Path],
    expr: ds.Expression,
    window: ScanWindow,
    underlying: str,
    deferred: list[DeferredValues] | None,
    stats: Counter[str],
    codes: Codes | None = None,
    floor: float | None = None,
    low: list[LowGroups] | None = None,
    opened: list[tuple[pq.ParquetFile, Path]] | None = None,
    threads: int = 1,
) -> list[ChainColumns]:
    """The kept rows of the Parquet chain files `paths` in time order, converted file by file.

    One file's decoded Arrow columns are freed before the next is read and its kept rows are
    copied into arrays sized for every row the planned row groups hold, so a year's scan
    holds about one month of temporaries at a time (one per thread), not twelve months of
    Arrow columns plus their conversion plus a concatenation (in a fresh process the pages
    first touched cost as much system time as the decode: docs/performance.md). Codes are
    into `codes` (a new `Codes` if None). With `deferred` and groups read whole or masked,
    only the selection columns are decoded now; the deferred value columns stay in the file
    (`ParquetDeferred`) and are decoded later, for the row groups holding kept rows only.
    With `floor` (and a `low` list), the groups whose `DTE_COLUMN` statistics are at most
    `floor` are not read: they go to `low`, one `LowGroups` per file. `opened` receives each
    file's reader and path. Up to `threads` files are opened and decoded at once
    (`file_pool`); codes, deferred positions and `stats` are merged in file order, so the
    result does not depend on `threads`. Returns one part (none if no row group is read).
    """
    codes = Codes() if codes is None else codes
    split = floor is not None and low is not None

    def open_file(path: Path) -> tuple[pq.ParquetFile, _Plan, _Plan]:
        reader = _chain_reader(path)
        plan = plan_row_groups(reader, window)
        left: _Plan = ([], [])
        if split:
            plan, left = split_low(reader, plan, floor)  # type: ignore[arg-type]
        return reader, plan, left

    def decode(job: tuple[pq.ParquetFile, _Plan]) -> _FileRead:
        return _decode_file(job[0], job[1], expr, window, underlying, deferred is not None)

    with file_pool(threads, len(paths)) as pool:
        files = list(pool.map(open_file, paths))
        if opened is not None:
            opened.extend((reader, path) for (reader, _, _), path in zip(files, paths, strict=True))
        if split:
            for (reader, _, left), path in zip(files, paths, strict=True):
                if left[0] or left[1]:
                    low.append(LowGroups(reader, left, expr, window, path))  # type: ignore[union-attr]
        bound = sum(
            reader.metadata.row_group(i).num_rows
            for reader, plan, _ in files
            for i in plan[0] + plan[1]
        )
        sink: _RowSink | None = None
        for got in pool.map(decode, [(reader, plan) for reader, plan, _ in files]):
            stats.update(got.stats)
            if got.cols is None:
                continue
            part = got.cols
            if got.rest is not None:
                part = with_row_ids(part, got.rest, deferred, got.rows)  # type: ignore[arg-type]
            part = codes.remap(part)
            if sink is None:
                sink = _RowSink(bound, tuple(part.values))
            sink.add(part)
    return [] if sink is None else [sink.columns(underlying, codes.names())]


_Plan = tuple[list[int], list[int]]


@dataclass
class _FileRead:
    """One chain file's kept rows, converted but not yet coded into the scan's names:
    `rest` (deferred value columns) and `rows` (the kept rows' positions in it) when the
    scan defers values, and the file's read counters."""

    cols: ChainColumns | None
    rest: DeferredValues | None
    rows: np.ndarray | None
    stats: Counter[str]


def _decode_file(
    reader: pq.ParquetFile,
    plan: _Plan,
    expr: ds.Expression,
    window: ScanWindow,
    underlying: str,
    defer: bool,
) -> _FileRead:
    """The planned row groups of one file decoded and their kept rows converted (the part of
    `read_chain_files` that touches nothing shared, so files can be decoded at once)."""
    stats: Counter[str] = Counter()
    schema = reader.schema_arrow
    lazy = defer and window.exact and all(c in schema.names for c in DEFERRED_VALUES)
    read = (
        [c for c in STORE_SCAN_COLUMNS if c not in DEFERRED_VALUES] if lazy else STORE_SCAN_COLUMNS
    )
    present = [c for c in read if c in schema.names]
    ids, pieces, whole = file_pieces(reader, expr, present, window, stats, plan)
    if not pieces:
        return _FileRead(None, None, None, stats)
    if lazy and not whole:  # a group the mask could not test: read it as before
        full = [c for c in STORE_SCAN_COLUMNS if c in schema.names]
        ids, pieces, whole = file_pieces(reader, expr, full, window, stats, plan)
        lazy = False
    # the kept rows in time order, converted once (no filtered or sorted copy)
    table, kept = kept_rows(pieces)
    if not defer:
        return _FileRead(columns_from_arrow(table, underlying, rows=kept), None, None, stats)
    if lazy:
        cols = columns_from_arrow(table, underlying, values=SELECTION_VALUES, rows=kept)
        sizes = np.array([p.num_rows for p, _ in pieces], dtype=np.int64)
        return _FileRead(cols, ParquetDeferred(reader, ids, sizes), kept, stats)
    cols, rest = selection_split(table, underlying, kept)
    return _FileRead(cols, rest, kept, stats)


class _RowSink:
    """Chain columns written part after part into arrays of `bound` rows (pages never
    written are never touched, so an over-estimate costs address space, not memory)."""

    def __init__(self, bound: int, values: tuple[str, ...]):
        self.n = 0
        times = ("as_of", "expiry", "quote_time")
        layout = [(k, np.int64) for k in (*times, "code")] + [(k, np.float64) for k in values]
        columns = _one_block(bound, [*layout, ("is_call", np.bool_)])
        self.times = {k: columns[k] for k in times}
        self.code = columns["code"]
        self.is_call = columns["is_call"]
        self.values = {k: columns[k] for k in values}

    def add(self, cols: ChainColumns) -> None:
        """Append the rows of `cols` (codes already shared, the same value columns)."""
        a, b = self.n, self.n + len(cols)
        for k, out in self.times.items():
            out[a:b] = getattr(cols, k)
        self.code[a:b] = cols.code
        self.is_call[a:b] = cols.is_call
        for k, out in self.values.items():
            out[a:b] = cols.values[k]
        self.n = b

    def columns(self, underlying: str, names: np.ndarray) -> ChainColumns:
        """The rows appended so far."""
        n = self.n
        return ChainColumns(
            underlying=underlying,
            as_of=self.times["as_of"][:n],
            expiry=self.times["expiry"][:n],
            quote_time=self.times["quote_time"][:n],
            code=self.code[:n],
            names=names,
            is_call=self.is_call[:n],
            values={k: v[:n] for k, v in self.values.items()},
        )


def _one_block(rows: int, layout: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
    """Empty columns of `rows` rows (name, dtype) carved from one allocation.

    A year's sink is ~15 MB written once: as one block, numpy asks the kernel for huge pages
    (it does for allocations of 4 MiB and more), so a fresh process takes a few faults to
    first touch it rather than one per 4 KiB page (docs/performance.md, store9).
    """
    sizes = [-(-rows * np.dtype(dtype).itemsize // 64) * 64 for _, dtype in layout]  # 64-aligned
    block = np.empty(sum(sizes), dtype=np.uint8)
    out, at = {}, 0
    for (name, dtype), size in zip(layout, sizes, strict=True):
        out[name] = block[at : at + rows * np.dtype(dtype).itemsize].view(dtype)
        at += size
    return out


@dataclass
class LowGroups:
    """Row groups of one chain file a selective scan left out (low days-to-expiry tiers):
    `plan` as `plan_row_groups` gives it, read later with the same filter and window."""

    reader: pq.ParquetFile
    plan: tuple[list[int], list[int]]
    expr: ds.Expression
    window: ScanWindow
    path: Path | None = None  # the partition file (its side files sit next to it)


def split_low(
    reader: pq.ParquetFile, plan: tuple[list[int], list[int]], floor: float
) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """`plan` split into the groups to read now and those whose `DTE_COLUMN` statistics say
    every row has at most `floor` days to expiry (no statistics: read now)."""
    dte = column_stats(reader, DTE_COLUMN)  # all None without the column: nothing is low

    def is_low(i: int) -> bool:
        stats = dte[i]
        return stats is not None and stats[1] <= floor

    now = tuple([i for i in part if not is_low(i)] for part in plan)
    later = tuple([i for i in part if is_low(i)] for part in plan)
    return (now[0], now[1]), (later[0], later[1])


@dataclass
class ParquetDeferred:
    """Deferred value columns left undecoded in a chain file: positions count the rows of
    its row groups `groups` (of `sizes` rows each) in that order, as the first pass read them."""

    reader: pq.ParquetFile
    groups: list[int]
    sizes: np.ndarray

    @property
    def num_rows(self) -> int:
        """Rows the first pass decoded from this file."""
        return int(self.sizes.sum())

    def values(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """`DEFERRED_VALUES` (float64) at `positions`, decoding only the groups holding them."""
        starts = np.r_[0, np.cumsum(self.sizes)]
        group = np.searchsorted(starts, positions, side="right") - 1
        need = np.unique(group)
        table = self.reader.read_row_groups(
            [self.groups[g] for g in need], columns=list(DEFERRED_VALUES), use_threads=False
        )
        base = np.zeros(len(self.groups), dtype=np.int64)
        base[need] = np.r_[0, np.cumsum(self.sizes[need])[:-1]]
        at = base[group] + positions - starts[group]
        return {c: float_values(table.column(c))[at] for c in DEFERRED_VALUES}


# Where a selective scan's deferred value columns wait: Arrow tables in memory, or the file.
DeferredValues = pa.Table | ParquetDeferred


def selection_split(
    table: pa.Table, underlying: str, rows: np.ndarray | None = None
) -> tuple[ChainColumns, pa.Table]:
    """Rows `rows` of `table` (default all) as chain columns holding only `SELECTION_VALUES`,
    and the table's deferred value columns (for `with_row_ids`).

    Converting 16 float columns of ~500k rows to numpy was a third of a year's load, while a
    selective replay keeps ~2% of the rows: the other columns are converted for those only.
    """
    rest = table.select(list(DEFERRED_VALUES))  # KeyError when a file lacks one: read per file
    return columns_from_arrow(table, underlying, values=SELECTION_VALUES, rows=rows), rest


def defer_values(cols: ChainColumns, deferred: list[DeferredValues]) -> ChainColumns:
    """Move the `DEFERRED_VALUES` of already-converted `cols` into `deferred` (no-op if done)."""
    if ROW_ID in cols.values:
        return cols
    rest = pa.table({c: cols.values[c] for c in DEFERRED_VALUES})
    return with_row_ids(cols, rest, deferred)


def with_row_ids(
    cols: ChainColumns,
    rest: DeferredValues,
    deferred: list[DeferredValues],
    rows: np.ndarray | None = None,
) -> ChainColumns:
    """`cols` carrying, as `ROW_ID`, the position in `deferred` of each row's `rest` values
    (`rows`: its position in `rest`; default row i of `cols` is row i of `rest`)."""
    start = sum(t.num_rows for t in deferred)
    deferred.append(rest)
    values = {c: cols.values[c] for c in SELECTION_VALUES}
    # row positions below 2**53 are exact in float64, the type every value column has
    ids = np.arange(len(cols)) if rows is None else rows
    values[ROW_ID] = (start + ids).astype(np.float64)
    return replace(cols, values=values)


def take_deferred(
    cols: ChainColumns, deferred: list[DeferredValues], threads: int = 1
) -> ChainColumns:
    """`cols` with the deferred value columns filled in for its rows (by `ROW_ID`); up to
    `threads` files decode theirs at once (each fills its own rows)."""
    if ROW_ID not in cols.values:
        return cols  # no rows: the empty columns already hold every value column
    values = {c: v for c, v in cols.values.items() if c != ROW_ID}
    ids = cols.values[ROW_ID].astype(np.int64)
    starts = np.cumsum([0] + [d.num_rows for d in deferred])
    which = np.searchsorted(starts, ids, side="right") - 1
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(deferred) + 1))
    out = {name: np.empty(len(ids), dtype=np.float64) for name in DEFERRED_VALUES}
    # (source, its rows in `cols`) for every source holding kept rows
    jobs = [
        (deferred[k], order[bounds[k] : bounds[k + 1]], starts[k])
        for k in range(len(deferred))
        if bounds[k + 1] > bounds[k]
    ]

    def fill(job: tuple[DeferredValues, np.ndarray, int]) -> None:
        source, at, start = job
        got = (
            source.values(ids[at] - start)
            if isinstance(source, ParquetDeferred)
            else _table_values(source, ids[at] - start)
        )
        for name in DEFERRED_VALUES:
            out[name][at] = got[name]

    with file_pool(threads, len(jobs)) as pool:
        for _ in pool.map(fill, jobs):
            pass
    values.update(out)
    return replace(cols, values={c: values[c] for c in VALUE_COLUMNS})


def _table_values(table: pa.Table, positions: np.ndarray) -> dict[str, np.ndarray]:
    """`DEFERRED_VALUES` of an in-memory table at `positions` (float64)."""
    # Arrow's take on a chunked column first concatenates every chunk (a copy of all ~500k
    # scanned rows per column); instead each chunk is viewed as numpy and indexed by the
    # positions that fall in it, so only the kept rows are ever copied
    chunks = table.to_batches()
    starts = np.cumsum([0] + [len(c) for c in chunks])
    which = np.searchsorted(starts, positions, side="right") - 1
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(chunks) + 1))
    out = {}
    for name in DEFERRED_VALUES:
        column = np.empty(len(positions), dtype=np.float64)
        for k, chunk in enumerate(chunks):
            a, b = bounds[k], bounds[k + 1]
            if a == b:
                continue
            at = order[a:b]
            column[at] = _float_view(chunk.column(name))[positions[at] - starts[k]]
        out[name] = column
    return out


def _float_view(column: pa.Array) -> np.ndarray:
    """A float64 numpy view of an Arrow column (nulls become NaN, which copies that chunk)."""
    if not pa.types.is_float64(column.type):
        column = column.cast(pa.float64())
    return column.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class ScanWindow:
    """What a scan keeps, for row-group pruning: as_of in [lo, hi] (ns), `kinds`, days to
    expiry <= `max_dte`; `exact` when the scan filter has no other condition."""

    lo: int
    hi: int
    kinds: frozenset[str] = frozenset(("call", "put"))
    max_dte: float | None = None
    exact: bool = True


UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def plan_row_groups(reader: pq.ParquetFile, window: ScanWindow) -> tuple[list[int], list[int]]:
    """Row groups of a chain file to read whole and to read then filter; the rest is skipped.

    Decided from row-group statistics (as_of, kind and, in the tiered layout, `DTE_COLUMN`);
    a group without usable statistics is read and filtered, so pruning never drops a row.
    """
    meta = reader.metadata
    whole: list[int] = []
    partial: list[int] = []
    if meta.num_row_groups == 0:
        return whole, partial
    as_of_stats = column_stats(reader, "as_of")
    dte_stats = column_stats(reader, DTE_COLUMN)
    kind_stats = column_stats(reader, "kind")
    unit = as_of_unit(reader)
    for i in range(meta.num_row_groups):
        if meta.row_group(i).num_rows == 0:
            continue
        inside = window.exact
        stats = as_of_stats[i]
        if stats is not None and unit:
            # raw timestamp statistics are integers in the column's unit
            lo_t, hi_t = stats[0] * unit, stats[1] * unit
            if hi_t < window.lo or lo_t > window.hi:
                continue
            inside &= window.lo <= lo_t and hi_t <= window.hi
        else:
            inside = False
        if window.max_dte is not None:
            stats = dte_stats[i]
            if stats is not None and stats[0] > window.max_dte + DTE_SLACK:
                continue
            inside &= stats is not None and stats[1] < window.max_dte - DTE_SLACK
        if window.kinds != {"call", "put"}:
            stats = kind_stats[i]
            if stats is not None and stats[0] == stats[1] and stats[0] not in window.kinds:
                continue
            inside &= stats is not None and stats[0] == stats[1] and stats[0] in window.kinds
        (whole if inside else partial).append(i)
    return whole, partial


# per open chain file: its row groups' (min, max) by column, and its as_of unit (statistics
# are asked for by the scan plan, the tier split and the second pass, several times a file)
_STATS: weakref.WeakKeyDictionary[pq.ParquetFile, dict[str, Any]] = weakref.WeakKeyDictionary()


def column_stats(reader: pq.ParquetFile, column: str) -> list[tuple[Any, Any] | None]:
    """`min_max` of `column` in every row group of `reader` (all None when it lacks it)."""
    known = _STATS.setdefault(reader, {})
    if column not in known:
        meta = reader.metadata
        out: list[tuple[Any, Any] | None] = [None] * meta.num_row_groups
        if meta.num_row_groups:
            first = meta.row_group(0)
            where = {first.column(j).path_in_schema: j for j in range(first.num_columns)}
            if column in where:
                out = [min_max(meta.row_group(i), where[column]) for i in range(len(out))]
        known[column] = out
    return known[column]


def as_of_unit(reader: pq.ParquetFile) -> int:
    """Nanoseconds per unit of the file's `as_of` column (0 when it has none)."""
    known = _STATS.setdefault(reader, {})
    if "_unit" not in known:
        names = reader.schema_arrow.names
        as_of_type = reader.schema_arrow.field("as_of").type if "as_of" in names else None
        known["_unit"] = UNIT_NS.get(getattr(as_of_type, "unit", ""), 0)
    return known["_unit"]


def min_max(rg: pq.RowGroupMetaData, j: int | None) -> tuple[Any, Any] | None:
    """(min, max) of column `j` of a row group (raw integers for timestamps); None if unknown."""
    if j is None:
        return None
    stats = rg.column(j).statistics
    if stats is None or not stats.has_min_max or stats.null_count:
        return None
    if stats.physical_type in ("INT64", "INT32"):
        return stats.min_raw, stats.max_raw
    lo, hi = stats.min, stats.max
    if isinstance(lo, bytes):
        lo, hi = lo.decode(), hi.decode()
    if isinstance(lo, float) and (lo != lo or hi != hi):
        return None  # NaN bounds prove nothing
    return lo, hi


def read_parquet_files(
    paths: Sequence[Path],
    expr: ds.Expression,
    columns: Sequence[str],
    window: ScanWindow | None = None,
    stats: Counter[str] | None = None,
) -> pa.Table:
    """Rows of the Parquet files `paths` matching `expr`, `columns` projected, in file order.

    The decoded row groups of `read_parquet_pieces`, filtered by their keep masks.
    """
    pieces = read_parquet_pieces(paths, expr, columns, window, stats)
    if not pieces:
        names = set(pq.read_schema(paths[0]).names) if paths else set()
        present = [c for c in columns if c in names]
        return pq.read_schema(paths[0]).empty_table().select(present) if paths else pa.table({})
    return pa.concat_tables(
        [piece if keep is None else piece.filter(pa.array(keep)) for piece, keep in pieces]
    )


def read_parquet_pieces(
    paths: Sequence[Path],
    expr: ds.Expression,
    columns: Sequence[str],
    window: ScanWindow | None = None,
    stats: Counter[str] | None = None,
) -> list[tuple[pa.Table, np.ndarray | None]]:
    """Decoded row groups of the Parquet files `paths` (`columns` projected), in file order,
    each with the rows of it matching `expr` as a boolean mask (None: every row matches).

    One `ParquetFile` read per file (memory-mapped, whole row groups), not a
    `pyarrow.dataset` scan: the scan's start-up (thread pool, fragment discovery, per-batch
    filter) cost more than the reads themselves on a year of month files (docs/performance.md).
    With `window` (the same conditions as `expr`), row groups outside it are never decoded and
    groups wholly inside it need no test (`plan_row_groups`). The others are tested with a
    numpy mask when the window is exact, else filtered by `expr` (their mask is then None).
    Returning masks instead of filtered copies lets the caller convert only the kept rows,
    in its own order, with one copy per column (`columns_from_arrow(rows=...)`). `stats`
    counts row groups read and skipped and rows decoded. The first file's schema decides
    which of `columns` are read; a later file lacking one, or with other types, raises (the
    caller then reads file by file and names the bad file).
    """
    stats = Counter() if stats is None else stats
    pieces: list[tuple[pa.Table, np.ndarray | None]] = []
    present: list[str] | None = None
    for path in paths:
        reader = _chain_reader(path)
        if present is None:
            names = set(reader.schema_arrow.names)
            present = [c for c in columns if c in names]
        pieces.extend(file_pieces(reader, expr, present, window, stats)[1])
    return pieces


def _chain_reader(path: Path) -> pq.ParquetFile:
    """A chain partition opened for reading (memory-mapped)."""
    # names and kinds stay dictionary-encoded: one hash of the few unique names, not of every row.
    # Memory-mapped rather than pre-buffered: the column chunks are decoded straight from the
    # page cache instead of being copied into freshly allocated buffers first, which cost a
    # fresh process ~0.02-0.1 s of system time over a year of month files (docs/performance.md,
    # store8). Writers replace partitions by rename, so a mapped file never changes under a read.
    return pq.ParquetFile(
        path, memory_map=True, pre_buffer=False, read_dictionary=["instrument_name", "kind"]
    )


def file_pieces(
    reader: pq.ParquetFile,
    expr: ds.Expression,
    columns: Sequence[str],
    window: ScanWindow | None,
    stats: Counter[str],
    plan: tuple[list[int], list[int]] | None = None,
) -> tuple[list[int], list[tuple[pa.Table, np.ndarray | None]], bool]:
    """The row groups of one file a scan decodes, the pieces of `read_parquet_pieces`, and
    whether the pieces are the whole groups (no piece filtered by `expr`). `plan`: the
    file's `plan_row_groups` when already made."""
    groups = reader.metadata.num_row_groups
    if plan is not None:
        whole, partial = plan
    elif window is None:
        whole, partial = [], list(range(groups))
    else:
        whole, partial = plan_row_groups(reader, window)
    stats["row_groups"] += groups
    stats["row_groups_read"] += len(whole) + len(partial)
    ids = sorted(whole + partial)  # file order: (tier, kind) groups, time-sorted inside
    if not ids:
        return ids, [], True
    if len(ids) == groups:
        table = reader.read(columns=list(columns), use_threads=False)
    else:
        table = reader.read_row_groups(ids, columns=list(columns), use_threads=False)
    stats["rows_decoded"] += table.num_rows
    # in file order: whole groups as zero-copy slices, only partial ones tested
    meta, at, cut = reader.metadata, 0, set(partial)
    pieces: list[tuple[pa.Table, np.ndarray | None]] = []
    whole_groups = True
    for i in ids:
        n = meta.row_group(i).num_rows
        piece = table.slice(at, n)
        at += n
        if i not in cut:
            pieces.append((piece, None))
            continue
        keep = _row_mask(piece, window)
        if keep is None:
            whole_groups = False
            pieces.append((piece.filter(expr), None))
        else:
            pieces.append((piece, keep))
    return ids, pieces, whole_groups


def kept_rows(pieces: Sequence[tuple[pa.Table, np.ndarray | None]]) -> tuple[pa.Table, np.ndarray]:
    """The pieces as one table (no copy) and the positions of their kept rows, by as_of.

    Positions are in file order among equal `as_of` (a stable sort), which is the order the
    filtered rows had before (`columns_from_arrow(table, rows=...)` converts them).
    """
    table = pa.concat_tables([piece for piece, _ in pieces])
    ids = []
    at = 0
    for piece, keep in pieces:
        n = piece.num_rows
        ids.append(np.arange(at, at + n) if keep is None else at + np.flatnonzero(keep))
        at += n
    rows = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
    if len(rows) > 1:
        as_of = as_of_ns(table)[rows]
        if (as_of[1:] < as_of[:-1]).any():
            rows = rows[np.argsort(as_of, kind="stable")]
    return table, rows


@contextlib.contextmanager
def scan_pool() -> Iterator[None]:
    """Arrow allocations inside go to the system allocator (restored after).

    pyarrow's default mimalloc pool spends ~0.5 s of system time committing its first
    arenas in a fresh process: half the CPU of loading a year of 4-hour chains (measured in
    docs/performance.md); glibc malloc reads the same tables without it. Buffers remember
    their pool, so anything allocated here is freed correctly whatever the default is later.
    """
    previous = pa.default_memory_pool()
    if previous.backend_name != "mimalloc":
        yield
        return
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _row_mask(table: pa.Table, window: ScanWindow | None) -> np.ndarray | None:
    """Which rows of `table` pass an exact window's test, as a numpy mask; None when the mask
    cannot answer (no window or not exact: name lists; other time units, nulls), and the scan
    filter expression must decide. The mask skips Acero's per-call plan (a tenth of a year's load).
    """
    if window is None or not window.exact:
        return None
    ts = pa.timestamp("ns", tz="UTC")
    cols = [table.column(c) for c in ("as_of", "expiry")]
    if any(c.type != ts or c.null_count for c in cols):
        return None
    as_of, expiry = (c.cast(pa.int64()).to_numpy() for c in cols)
    keep = (as_of >= window.lo) & (as_of <= window.hi)
    if window.max_dte is not None:
        keep &= (expiry - as_of) <= int(window.max_dte * 86_400e9)
    if window.kinds != {"call", "put"}:
        keep &= kind_in(table.column("kind"), window.kinds)
    return keep
