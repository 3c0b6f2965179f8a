"""The low days-to-expiry tier skip: which tiers a selective scan may leave out
(`tier_floor`) and the second pass that reads, from those left-out groups, only the rows the
decisions need (`decode_low_groups` then `finish_low`, the point-in-time `windows_of`). See docs/data.md
"How the store is read".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.data.chain_parquet import (
    DEFERRED_VALUES,
    SELECTION_VALUES,
    Codes,
    DeferredValues,
    LowGroups,
    ParquetDeferred,
    as_of_unit,
    column_stats,
    file_pieces,
    selection_split,
    with_row_ids,
)
from harness.data.chain_scan import (
    VALUE_COLUMNS,
    ChainColumns,
    as_of_ns,
    columns_from_arrow,
    empty_columns,
    float_values,
    kind_in,
    times_ns,
)
from harness.data.chain_select import ChainSelection
from harness.data.store_schema import DTE_SLACK, DTE_TIERS, STORE_SCAN_COLUMNS

# what a mark row needs (the period's mark table), plus what the scan window tests
_MARK_READ = frozenset(("as_of", "expiry", "quote_time", "instrument_name", "kind", "mark_price"))


def tier_floor(selection: ChainSelection | None) -> float | None:
    """Days to expiry at or below which a selective scan may leave row groups out, or None.

    The highest tier bound (`DTE_TIERS`) under the band's lowest days to expiry: every band
    row then lies above it, so leaving those tiers out never hides a later row of a band call.
    None when nothing can be left out: no selection, `follow` (an open call's later rows run
    down to expiry), no tier bound under the band, or an ATM target inside the low tiers.
    """
    if selection is None or selection.follow:
        return None
    below = [t for t in DTE_TIERS if t < selection.min_dte - DTE_SLACK]
    if not below or selection.atm_dte <= below[-1]:
        return None
    return below[-1]


def grown(held: np.ndarray, n: int) -> np.ndarray:
    """`held` (bool per code) extended with False to `n` codes."""
    if len(held) >= n:
        return held
    return np.r_[held, np.zeros(n - len(held), dtype=bool)]


# the next tier bound down from each bound (the second pass reads one tier at a time)
TIER_BELOW: dict[float, float] = dict(zip(DTE_TIERS[1:], DTE_TIERS[:-1], strict=True))


def windows_of(times_ns: np.ndarray, bar: int, back: int) -> tuple[np.ndarray, np.ndarray]:
    """The point-in-time windows (b - back, b] of query times (b: the bar close at or
    before each), sorted and merged where they overlap."""
    ref = np.unique(times_ns - np.mod(times_ns, bar))
    lo, hi = ref - back, ref
    if len(lo) == 0:
        return lo, hi
    starts = np.flatnonzero(np.r_[True, lo[1:] >= hi[:-1]])
    ends = np.r_[starts[1:] - 1, len(lo) - 1]
    return lo[starts], hi[ends]


def in_windows(t_ns: np.ndarray, windows: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Whether each time lies in one of the merged windows (lo, hi] (`windows_of`)."""
    lo, hi = windows
    if len(hi) == 0:
        return np.zeros(len(t_ns), dtype=bool)
    i = np.minimum(np.searchsorted(hi, t_ns, side="left"), len(hi) - 1)
    return (lo[i] < t_ns) & (t_ns <= hi[i])


def rows_in_windows(t_ns: np.ndarray, windows: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`np.flatnonzero(in_windows(t_ns, windows))`; for times sorted ascending (a scan's rows),
    two binary searches per window instead of one per row."""
    if len(t_ns) > 1 and (t_ns[1:] < t_ns[:-1]).any():
        return np.flatnonzero(in_windows(t_ns, windows))
    lo, hi = windows
    # the windows are merged and sorted: their row ranges are disjoint and in order
    start = np.searchsorted(t_ns, lo, side="right")
    stop = np.searchsorted(t_ns, hi, side="right")
    size = np.maximum(stop - start, 0)
    if not size.any():
        return np.empty(0, dtype=np.int64)
    return np.arange(int(size.sum())) + np.repeat(start - np.r_[0, np.cumsum(size)[:-1]], size)


def first_of_each(cols: ChainColumns) -> ChainColumns:
    """`cols` without repeats of an (instrument, as_of) row (the first copy stays)."""
    if len(cols) < 2:
        return cols
    order = np.lexsort((cols.as_of, cols.code))
    same = (np.diff(cols.code[order]) == 0) & (np.diff(cols.as_of[order]) == 0)
    if not same.any():
        return cols
    drop = np.zeros(len(cols), dtype=bool)
    drop[order[1:][same]] = True
    return cols.take(np.flatnonzero(~drop))


@dataclass
class SecondPass:
    """What `FileDataSource._second_pass` gives back for one block."""

    marks: list[ChainColumns]  # left-out rows for the mark table (`mark_price` only)
    found: list[ChainColumns]  # selected chains of the decisions that needed them
    held: np.ndarray  # band codes (grown to the codes seen)
    tail: ChainColumns | None  # left-out rows the next block's first windows read


def as_of_spans(reader: pq.ParquetFile) -> list[tuple[int, int] | None]:
    """Per row group of a chain file: (min, max) `as_of` in ns from its statistics, or None."""
    unit = as_of_unit(reader)
    return [
        None if stats is None or not unit else (stats[0] * unit, stats[1] * unit)
        for stats in column_stats(reader, "as_of")
    ]


def band_only(as_of: np.ndarray, is_hot: np.ndarray) -> np.ndarray:
    """The `wanted` of a band-marks read: the band's rows, at any time."""
    return is_hot


@dataclass
class LowRead:
    """Rows `decode_low_groups` kept from one file's left-out groups, not yet merged into the
    scan: `cols` coded into their own names (`coded`: already into the scan's codes), and,
    when values are deferred, `rest` with the rows' positions `rows` in it."""

    cols: ChainColumns
    rest: DeferredValues | None = None
    rows: np.ndarray | None = None
    coded: bool = False
    stats: Counter[str] = field(default_factory=Counter)


def finish_low(
    got: LowRead, stats: Counter[str], codes: Codes, deferred: list[DeferredValues] | None
) -> ChainColumns:
    """A `decode_low_groups` result merged into the scan: counters, deferred values, codes
    (called in file order, so positions and codes do not depend on the thread count)."""
    stats.update(got.stats)
    part = got.cols
    if got.rest is not None:
        part = with_row_ids(part, got.rest, deferred, got.rows)  # type: ignore[arg-type]
    if got.coded:
        return replace(part, names=codes.names())  # band codes: already the scan's
    return codes.remap(part)


def decode_low_groups(
    low: LowGroups,
    underlying: str,
    defer: bool,
    hot_names: pa.Array,
    hot_codes: dict[str, int],
    wanted: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    marks_only: bool = False,
) -> LowRead:
    """The rows of left-out groups that `wanted(as_of, is_hot)` keeps (`is_hot`: the row's
    name is in `hot_names`), converted as `read_chain_files` converts, not yet merged into the
    scan (`finish_low` does that, in file order): this part touches nothing shared, so files
    can be read at once. `hot_codes` maps every name of `hot_names` to its code in the scan;
    `defer` says whether the scan defers value columns; with `marks_only`, only the columns of
    a mark row are read and converted."""
    reader = low.reader
    schema = reader.schema_arrow
    lazy = defer and low.window.exact and all(c in schema.names for c in DEFERRED_VALUES)
    narrow = [c for c in STORE_SCAN_COLUMNS if c not in DEFERRED_VALUES]
    every = [c for c in STORE_SCAN_COLUMNS if c in schema.names]
    read = [c for c in narrow if c in schema.names] if lazy else every
    if marks_only:
        read = [c for c in every if c in _MARK_READ]
        lazy = False
    local: Counter[str] = Counter()
    ids, pieces, whole = file_pieces(reader, low.expr, read, low.window, local, low.plan)
    if pieces and lazy and not whole:  # a group the mask could not test: read it whole-width
        ids, pieces, whole = file_pieces(reader, low.expr, every, low.window, local, low.plan)
        lazy = False
    stats: Counter[str] = Counter()
    stats["low_row_groups_read"] += local["row_groups_read"]
    stats["low_rows_decoded"] += local["rows_decoded"]
    if not pieces:
        return LowRead(empty_columns(underlying), stats=stats)
    # the rows the window keeps, in file order; only the few this pass wants are sorted
    # by as_of (the order `kept_rows` gives), and not at all for the mark table
    table = pa.concat_tables([piece for piece, _ in pieces])
    names = table.column("instrument_name")
    if marks_only and pa.types.is_dictionary(names.type) and all(k is None for _, k in pieces):
        # band marks of groups the window keeps whole (the usual case)
        cols = _band_marks(table, hot_names, underlying, hot_codes, stats)
        return LowRead(cols, coded=True, stats=stats)
    starts = np.cumsum([0] + [piece.num_rows for piece, _ in pieces])
    kept = np.concatenate(
        [
            np.arange(a, b) if keep is None else a + np.flatnonzero(keep)
            for (_, keep), a, b in zip(pieces, starts[:-1], starts[1:], strict=True)
        ]
    )
    if pa.types.is_dictionary(names.type):
        encoded = names.unify_dictionaries().combine_chunks()
        hot_entry = pc.is_in(encoded.dictionary, value_set=hot_names).to_numpy(zero_copy_only=False)
        is_hot = hot_entry[encoded.indices.to_numpy()[kept]]
    else:
        taken = names.combine_chunks().take(pa.array(kept))
        is_hot = pc.is_in(taken, value_set=hot_names).to_numpy(zero_copy_only=False)
    as_of = as_of_ns(table)
    rows = kept[wanted(as_of[kept], np.asarray(is_hot, dtype=bool))]
    stats["low_rows_kept"] += len(rows)
    if len(rows) == 0:
        return LowRead(empty_columns(underlying), stats=stats)
    if not marks_only:
        rows = rows[np.argsort(as_of[rows], kind="stable")]
    # a few % of the decoded rows: Arrow gathers them first, so only they are converted
    small = table.take(pa.array(rows)) if len(rows) * 4 < table.num_rows else None
    if marks_only:
        return LowRead(_convert(table, small, rows, underlying, ("mark_price",)), stats=stats)
    if not defer:
        return LowRead(_convert(table, small, rows, underlying, VALUE_COLUMNS), stats=stats)
    if lazy:
        cols = _convert(table, small, rows, underlying, SELECTION_VALUES)
        sizes = np.array([p.num_rows for p, _ in pieces], dtype=np.int64)
        return LowRead(cols, ParquetDeferred(reader, ids, sizes), rows, stats=stats)
    cols, rest = selection_split(table, underlying, rows)
    return LowRead(cols, rest, rows, stats=stats)


def _band_marks(
    table: pa.Table,
    hot_names: pa.Array,
    underlying: str,
    hot_codes: dict[str, int],
    stats: Counter[str],
) -> ChainColumns:
    """The rows of `table` (every row kept by the scan window; dictionary-encoded names) whose
    name is in `hot_names`, in file order, as mark columns coded by `hot_codes` (the scan's
    codes of the band names), with no Arrow gather and no per-part name table: what
    `decode_low_groups(marks_only=True)` gives, with less work."""
    parts: list[np.ndarray] = []
    row_codes: list[np.ndarray] = []
    at = 0
    # chunk by chunk (a row group each): no dictionary unification over the file
    for chunk in table.column("instrument_name").chunks:
        hot_entry = pc.is_in(chunk.dictionary, value_set=hot_names).to_numpy(zero_copy_only=False)
        entries = chunk.indices.to_numpy()
        local = np.flatnonzero(hot_entry[entries])
        if len(local):
            code_of = np.full(len(hot_entry), -1, dtype=np.int64)
            hot = np.flatnonzero(hot_entry)
            code_of[hot] = [hot_codes[n] for n in chunk.dictionary.take(pa.array(hot)).to_pylist()]
            parts.append(at + local)
            row_codes.append(code_of[entries[local]])
        at += len(chunk)
    rows = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    stats["low_rows_kept"] += len(rows)
    if len(rows) == 0:
        return empty_columns(underlying)
    as_of = as_of_ns(table)[rows]
    quote = table.column("quote_time") if "quote_time" in table.column_names else None
    return ChainColumns(
        underlying=underlying,
        as_of=as_of,
        expiry=times_ns(table.column("expiry"))[rows],
        quote_time=as_of if quote is None else times_ns(quote)[rows],
        code=np.concatenate(row_codes),
        names=np.empty(0, dtype=object),  # `finish_low` gives the scan's names
        is_call=kind_in(table.column("kind"), ("call",))[rows],
        values={"mark_price": float_values(table.column("mark_price"))[rows]},
    )


def _convert(
    table: pa.Table,
    small: pa.Table | None,
    rows: np.ndarray,
    underlying: str,
    values: Sequence[str],
) -> ChainColumns:
    """Rows `rows` of `table` as chain columns, from `small` (those rows, gathered) if given."""
    if small is not None:
        return columns_from_arrow(small, underlying, values=values)
    return columns_from_arrow(table, underlying, values=values, rows=rows)
