"""Columnar chain rows (`ChainColumns`) and their conversion from the Arrow tables the store reads.

The store (`harness/data/files.py`) reads a period's partition files with only the needed
columns and filters them (period, kinds, days to expiry) with the expression built here; each
column is then converted to numpy once for the whole table (timestamps to int64 ns, instrument
names to integer codes).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from harness.data.source import CHAIN_COLUMNS

# Float columns of CHAIN_COLUMNS (everything but times and strings), in schema order.
VALUE_COLUMNS: tuple[str, ...] = tuple(
    c
    for c in CHAIN_COLUMNS
    if c not in ("as_of", "expiry", "instrument_name", "underlying", "kind")
)
_TS = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True)
class ChainColumns:
    """Chain rows of one underlying as numpy arrays (times int64 ns UTC, prices float64)."""

    underlying: str
    as_of: np.ndarray
    expiry: np.ndarray
    quote_time: np.ndarray
    code: np.ndarray  # int64 index into `names`
    names: np.ndarray  # unique instrument names (object)
    is_call: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.as_of)

    def take(self, rows: np.ndarray) -> ChainColumns:
        """The rows `rows` (names and codes unchanged)."""
        return ChainColumns(
            underlying=self.underlying,
            as_of=self.as_of[rows],
            expiry=self.expiry[rows],
            quote_time=self.quote_time[rows],
            code=self.code[rows],
            names=self.names,
            is_call=self.is_call[rows],
            values={k: v[rows] for k, v in self.values.items()},
        )

    def nbytes(self) -> int:
        """Bytes held by the row arrays (names excluded)."""
        arrays = [self.as_of, self.expiry, self.quote_time, self.code, self.is_call]
        return sum(a.nbytes for a in arrays) + sum(v.nbytes for v in self.values.values())


@runtime_checkable
class ColumnarChainSource(Protocol):
    """Optional fastest bulk path: chains at many times as `ChainColumns` (no pandas frame)."""

    def chain_columns(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> ChainColumns:
        """Chains at each of `times` (as_of = the query time), like `chain_frame`."""
        ...


def columns_to_frame(cols: ChainColumns) -> pd.DataFrame:
    """A chain frame with CHAIN_COLUMNS (UTC datetimes, float64) from chain columns."""
    n = len(cols)
    data: dict[str, object] = {
        "as_of": pd.to_datetime(cols.as_of, utc=True),
        "instrument_name": cols.names[cols.code] if n else np.empty(0, dtype=object),
        "underlying": np.full(n, cols.underlying, dtype=object),
        "kind": np.where(cols.is_call, "call", "put").astype(object),
        "strike": cols.values["strike"],
        "expiry": pd.to_datetime(cols.expiry, utc=True),
    }
    for col in VALUE_COLUMNS:
        if col != "strike":
            data[col] = cols.values[col]
    return pd.DataFrame(data, columns=list(CHAIN_COLUMNS))


def concat_columns(
    parts: Sequence[ChainColumns], names: np.ndarray, underlying: str
) -> ChainColumns:
    """Rows of `parts` (codes already into `names`) one after the other."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return replace(empty_columns(underlying), names=names)
    if len(parts) == 1:
        return replace(parts[0], names=names)
    keys = parts[0].values.keys()
    return ChainColumns(
        underlying=underlying,
        as_of=np.concatenate([p.as_of for p in parts]),
        expiry=np.concatenate([p.expiry for p in parts]),
        quote_time=np.concatenate([p.quote_time for p in parts]),
        code=np.concatenate([p.code for p in parts]),
        names=names,
        is_call=np.concatenate([p.is_call for p in parts]),
        values={k: np.concatenate([p.values[k] for p in parts]) for k in keys},
    )


def empty_columns(underlying: str = "") -> ChainColumns:
    """Zero rows."""
    i64 = np.empty(0, dtype=np.int64)
    return ChainColumns(
        underlying=underlying,
        as_of=i64,
        expiry=i64,
        quote_time=i64,
        code=i64,
        names=np.empty(0, dtype=object),
        is_call=np.empty(0, dtype=bool),
        values={c: np.empty(0) for c in VALUE_COLUMNS},
    )


def _ns(values: pd.Series) -> np.ndarray:
    idx = pd.DatetimeIndex(values)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return idx.as_unit("ns").asi8


def columns_from_frame(frame: pd.DataFrame, underlying: str | None = None) -> ChainColumns:
    """Chain columns from a normalized chain frame (CHAIN_COLUMNS, optional quote_time)."""
    if len(frame) == 0:
        return empty_columns(underlying or "")
    codes, uniques = pd.factorize(frame["instrument_name"].astype(str), sort=False)
    if underlying is None:
        found = frame["underlying"].astype(str).unique()
        if len(found) > 1:
            raise ValueError(f"one underlying per chain table, got {', '.join(sorted(found))}")
        underlying = str(found[0])
    quote = frame["quote_time"] if "quote_time" in frame.columns else frame["as_of"]
    return ChainColumns(
        underlying=underlying,
        as_of=_ns(frame["as_of"]),
        expiry=_ns(frame["expiry"]),
        quote_time=_ns(quote),
        code=codes.astype(np.int64),
        names=np.asarray(uniques, dtype=object),
        is_call=frame["kind"].to_numpy() == "call",
        values={c: frame[c].to_numpy(dtype=np.float64) for c in VALUE_COLUMNS},
    )


def scan_filter(
    lo: pd.Timestamp,
    hi: pd.Timestamp,
    *,
    kinds: Sequence[str] = ("call", "put"),
    max_dte: float | None = None,
    names: Sequence[str] | None = None,
) -> ds.Expression:
    """Row filter of a chain scan: as_of in [lo, hi], kinds, expiry - as_of <= max_dte days."""
    expr = (ds.field("as_of") >= pa.scalar(lo.value, _TS)) & (
        ds.field("as_of") <= pa.scalar(hi.value, _TS)
    )
    if set(kinds) != {"call", "put"}:
        expr &= ds.field("kind").isin(list(kinds))
    if max_dte is not None:
        limit = pa.scalar(int(max_dte * 86_400e9), pa.duration("ns"))
        expr &= (ds.field("expiry") - ds.field("as_of")) <= limit
    if names is not None:
        expr &= ds.field("instrument_name").isin(list(names))
    return expr


def _int_ns(column: pa.ChunkedArray) -> np.ndarray:
    if not pa.types.is_timestamp(column.type):
        raise TypeError(f"expected a timestamp column, got {column.type}")
    if column.type.unit != "ns":
        column = column.cast(pa.timestamp("ns", tz=column.type.tz))
    # timestamps without a zone are stored UTC (the writers always write UTC)
    return column.cast(pa.int64()).to_numpy()


def times_ns(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column of a scanned chain table as int64 ns UTC."""
    return _int_ns(column)


def as_of_ns(table: pa.Table) -> np.ndarray:
    """The `as_of` column of a scanned chain table as int64 ns UTC."""
    return _int_ns(table.column("as_of"))


def float_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric Arrow column as float64 numpy (nulls become NaN)."""
    if not pa.types.is_float64(column.type):
        column = column.cast(pa.float64())
    if column.null_count:
        column = column.fill_null(np.nan)
    return column.to_numpy(zero_copy_only=False)


def kind_mask(kind: pa.ChunkedArray, kinds: Collection[str]) -> np.ndarray | None:
    """Per row, whether a dictionary-encoded `kind` column without nulls holds one of `kinds`,
    tested once per dictionary entry (a few) rather than per row; None for any other column
    (the caller then tests it row by row)."""
    if not pa.types.is_dictionary(kind.type) or kind.null_count:
        return None
    parts = []
    for chunk in kind.chunks:
        entries = chunk.dictionary
        if entries.null_count:
            return None
        value_set = pa.array(sorted(kinds), type=entries.type)
        hit = pc.is_in(entries, value_set=value_set).to_numpy(zero_copy_only=False)
        parts.append(hit[chunk.indices.to_numpy()])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def kind_in(kind: pa.ChunkedArray, kinds: Collection[str]) -> np.ndarray:
    """Per row, whether a `kind` column holds one of `kinds` (bool; a null kind is neither):
    `kind_mask` when the column allows it, else a row-by-row test."""
    mask = kind_mask(kind, kinds)
    if mask is not None:
        return mask
    if pa.types.is_dictionary(kind.type):
        kind = kind.cast(pa.string())
    test = pc.is_in(kind, value_set=pa.array(sorted(kinds), type=pa.string()))
    return test.to_numpy(zero_copy_only=False).astype(bool)


def columns_from_arrow(
    table: pa.Table,
    underlying: str,
    values: Sequence[str] = VALUE_COLUMNS,
    rows: np.ndarray | None = None,
) -> ChainColumns:
    """Convert a scanned chain table: one conversion per column for the whole table.

    Only the value columns `values` are converted (default: all of them); with `rows`
    (positions in `table`), only those rows, in that order: each column's full conversion
    is a temporary, so a filtered or reordered scan costs one kept copy per column rather
    than a filtered Arrow copy, a conversion and a reordering copy.
    """
    if table.num_rows == 0 or (rows is not None and len(rows) == 0):
        return empty_columns(underlying)

    def pick(array: np.ndarray) -> np.ndarray:
        return array if rows is None else array[rows]

    names = table.column("instrument_name")
    if pa.types.is_dictionary(names.type):
        encoded = names.unify_dictionaries().combine_chunks() if names.num_chunks else None
        if encoded is None:
            return empty_columns(underlying)
        code = pick(encoded.indices.to_numpy())
        dictionary = encoded.dictionary
        if len(code) < 4 * len(dictionary):
            # a few rows of a large dictionary: only the names they use become Python
            # strings (and get codes in the caller's table)
            used, code = np.unique(code, return_inverse=True)
            dictionary = dictionary.take(pa.array(used))
    else:  # plain strings: encode the kept rows only, so `names` holds only theirs
        plain = names.combine_chunks()
        encoded = pc.dictionary_encode(plain if rows is None else plain.take(pa.array(rows)))
        code = encoded.indices.to_numpy()
        dictionary = encoded.dictionary
    kind = table.column("kind")
    is_call = kind_in(kind, ("call",))
    quote = table.column("quote_time") if "quote_time" in table.column_names else None
    as_of = pick(_int_ns(table.column("as_of")))
    return ChainColumns(
        underlying=underlying,
        as_of=as_of,
        expiry=pick(_int_ns(table.column("expiry"))),
        quote_time=as_of if quote is None else pick(_int_ns(quote)),
        code=code.astype(np.int64),
        names=np.asarray(dictionary.to_pylist(), dtype=object),
        is_call=pick(is_call),
        values={c: pick(float_values(table.column(c))) for c in values},
    )


def rows_sorted_by(keys: Sequence[np.ndarray]) -> bool:
    """Whether rows are sorted by `keys` (most significant first), ties allowed."""
    if len(keys[0]) < 2:
        return True
    undecided = np.ones(len(keys[0]) - 1, dtype=bool)
    for key in keys:
        a, b = key[:-1], key[1:]
        if (undecided & (b < a)).any():
            return False
        undecided &= b == a
    return True
