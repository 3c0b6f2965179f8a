"""The low-tier marks of a chain partition: the mark columns of its row groups of at most
`LOW_MARKS_MAX_DTE` days to expiry, sorted by instrument, written next to the partition
(`marks.arrow`, paired with it like the ATM summary: write id and the partition file's size
and mtime), so a selective load takes the band instruments' marks from a few contiguous
ranges instead of decoding every row of those tiers (docs/data.md "Low-tier marks").

A reader uses it only for row groups it lists and the scan window keeps whole; otherwise (no
file, an older writer, a rewrite by another tool) the groups are decoded as before. The rows
and values are those `low_tiers._band_marks` gives, in the same (file) order.
"""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.data.atm_summary import SUMMARY_MAX_DTE
from harness.data.chain_parquet import Codes
from harness.data.chain_scan import ChainColumns, as_of_ns, empty_columns, float_values, times_ns
from harness.data.side_files import WRITE_ID_KEY, open_paired
from harness.data.store_schema import DTE_COLUMN

MARKS_NAME = "marks.arrow"  # next to the partition's part.parquet (Arrow IPC file)
GROUPS_KEY = b"harness.mark_groups"  # the partition's row groups it holds (int32), base64
# the tiers a selective load leaves out for a band starting up to ~8 days (`tier_floor`)
LOW_MARKS_MAX_DTE = SUMMARY_MAX_DTE
_COLUMNS = ("row", "group", "as_of", "expiry", "quote_time", "is_call", "mark_price")


def marks_path(part: Path) -> Path:
    """Where the low-tier marks of the chain partition file `part` live."""
    return part.with_name(MARKS_NAME)


def marks_table(table: pa.Table, group_rows: list[int], write_id: str) -> pa.Table | None:
    """The low-tier marks of a partition `table` (in file order, `DTE_COLUMN` included) whose
    row groups hold `group_rows` rows each; None when a needed column is missing or a kind
    is null (the groups are then decoded)."""
    need = ("instrument_name", "as_of", "expiry", "kind", "mark_price", DTE_COLUMN)
    if any(c not in table.column_names for c in need) or table.column("kind").null_count:
        return None
    bounds = np.cumsum(group_rows)
    if bounds.size == 0 or bounds[-1] != table.num_rows:
        return None
    group = np.searchsorted(bounds, np.arange(table.num_rows), side="right")
    # whole row groups only: a group's rows share one tier, so its first row decides
    low_group = np.zeros(len(group_rows), dtype=bool)
    starts = np.r_[0, bounds[:-1]][np.asarray(group_rows) > 0]
    days = table.column(DTE_COLUMN).to_numpy()
    low_group[np.searchsorted(bounds, starts, side="right")] = days[starts] <= LOW_MARKS_MAX_DTE
    rows = np.flatnonzero(low_group[group])
    names = table.column("instrument_name").take(pa.array(rows)).combine_chunks()
    if pa.types.is_dictionary(names.type):
        names = names.cast(pa.string())
    # sorted by (name, file row): each instrument is one contiguous range
    by_name = pc.sort_indices(names).to_numpy()  # stable: file order inside a name
    rows = rows[by_name]
    names = names.take(pa.array(by_name)).dictionary_encode()
    # a sorted dictionary: entries and index ranges line up
    entries = names.dictionary
    order = pc.sort_indices(entries).to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    sorted_names = pa.DictionaryArray.from_arrays(
        pa.array(rank[names.indices.to_numpy()], type=pa.int32()), entries.take(pa.array(order))
    )
    as_of = as_of_ns(table)
    quote = times_ns(table.column("quote_time")) if "quote_time" in table.column_names else as_of
    kind = table.column("kind")
    if pa.types.is_dictionary(kind.type):
        kind = kind.cast(pa.string())
    out = pa.table(
        {
            "instrument_name": sorted_names,
            "row": pa.array(rows.astype(np.int64)),
            "group": pa.array(group[rows].astype(np.int32)),
            "as_of": pa.array(as_of[rows]),
            "expiry": pa.array(times_ns(table.column("expiry"))[rows]),
            "quote_time": pa.array(quote[rows]),
            "is_call": pa.array(
                pc.equal(kind, "call").to_numpy(zero_copy_only=False)[rows].astype(np.int8)
            ),
            "mark_price": pa.array(float_values(table.column("mark_price"))[rows]),
        }
    )
    groups = np.flatnonzero(low_group).astype("<i4")
    return out.replace_schema_metadata(
        {WRITE_ID_KEY: write_id.encode(), GROUPS_KEY: base64.b64encode(groups.tobytes())}
    )


def _open_marks(reader: pq.ParquetFile, part: Path) -> tuple[pa.Table, np.ndarray] | None:
    """The paired low-tier marks of the open partition `part` and the groups they hold."""
    table = open_paired(reader, part, marks_path(part))
    if table is None or not {"instrument_name", *_COLUMNS} <= set(table.column_names):
        return None
    try:
        encoded = base64.b64decode((table.schema.metadata or {}).get(GROUPS_KEY, b""))
    except ValueError:
        return None  # unreadable: as if there were none
    return table, np.frombuffer(encoded, dtype="<i4")


def _values(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column of the (memory-mapped) marks file as numpy, without a copy when it
    is one chunk."""
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy()
    return column.combine_chunks().to_numpy()


def band_marks_from_file(
    reader: pq.ParquetFile,
    part: Path,
    ids: list[int],
    hot_names: pa.Array,
    underlying: str,
    codes: Codes,
    stats: Counter[str],
) -> ChainColumns | None:
    """The rows of the row groups `ids` (which the scan window keeps whole) of partition
    `part` whose name is in `hot_names`, in file order, as mark columns coded into `codes`
    (which holds every band name): what `low_tiers._band_marks` gives for them. None when
    the partition has no paired marks file holding every one of `ids`."""
    opened = _open_marks(reader, part)
    if opened is None:
        return None
    table, groups = opened
    if not np.isin(ids, groups).all():
        return None
    stats["low_row_groups_marks_file"] += len(ids)
    meta = reader.metadata
    stats["low_rows_marks_file"] += sum(meta.row_group(i).num_rows for i in ids)
    names = table.column("instrument_name")
    names = names.chunk(0) if names.num_chunks == 1 else names.combine_chunks()
    hot_entry = pc.is_in(names.dictionary, value_set=hot_names).to_numpy(zero_copy_only=False)
    hot = np.flatnonzero(hot_entry)
    index = names.indices.to_numpy()
    lo = np.searchsorted(index, hot, side="left")
    hi = np.searchsorted(index, hot, side="right")
    size = hi - lo
    rows = np.arange(int(size.sum())) + np.repeat(lo - np.r_[0, np.cumsum(size)[:-1]], size)
    col = {c: _values(table.column(c)) for c in _COLUMNS}
    wanted = np.zeros(int(max(ids)) + 1, dtype=bool)
    wanted[ids] = True
    group = col["group"][rows]
    rows = rows[wanted[np.minimum(group, len(wanted) - 1)] & (group < len(wanted))]
    rows = rows[np.argsort(col["row"][rows], kind="stable")]  # file order
    stats["low_rows_kept"] += len(rows)
    if len(rows) == 0:
        return empty_columns(underlying)
    known = codes.index
    code_of = np.full(len(hot_entry), -1, dtype=np.int64)
    code_of[hot] = [known[n] for n in names.dictionary.take(pa.array(hot)).to_pylist()]
    return ChainColumns(
        underlying=underlying,
        as_of=col["as_of"][rows],
        expiry=col["expiry"][rows],
        quote_time=col["quote_time"][rows],
        code=code_of[index[rows]],
        names=codes.names(),
        is_call=col["is_call"][rows].astype(bool),
        values={"mark_price": col["mark_price"][rows]},
    )
