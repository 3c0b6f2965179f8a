"""A selective store read converts most value columns only for the kept rows, unchanged.

`FileDataSource.selected_chain_columns` keeps every value column of the rows it hands out in
Arrow until the selection is known (`take_deferred`); each kept row must carry exactly the
values the full point-in-time chain holds, for Parquet and CSV partitions alike.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from harness.data.chain_parquet import (
    ROW_ID,
    ParquetDeferred,
    ScanWindow,
    kept_rows,
    read_chain_files,
    read_parquet_files,
    read_parquet_pieces,
    take_deferred,
)
from harness.data.chain_scan import (
    VALUE_COLUMNS,
    ChainColumns,
    columns_from_arrow,
    columns_to_frame,
    kind_in,
    kind_mask,
    scan_filter,
)
from harness.data.chain_select import ChainSelection
from harness.data.files import FileDataSource, read_table
from harness.data.importers import import_synthetic
from harness.data.store_schema import STORE_SCAN_COLUMNS

START, END = "2024-01-29", "2024-02-04"
SELECTION = ChainSelection(
    min_dte=0.5, max_dte=3.0, min_delta=0.1, max_delta=0.4, atm_dte=2.0, follow=True
)


@pytest.fixture(scope="module", params=["parquet", "csv_february", "nulls_float32", "us_times"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deferred")
    import_synthetic(
        "BTC", START, END, "4h", root, seed=7, calls_only=True, progress=False, max_dte=4.0
    )
    if request.param == "csv_february":
        part = next((root / "BTC" / "chain").glob("*=2024-02*/part.parquet"))
        read_table(part).to_csv(part.with_suffix(".csv"), index=False)
        part.unlink()
    if request.param == "nulls_float32":
        # deferred columns with nulls and another float type, in several row groups (chunks)
        for part in (root / "BTC" / "chain").glob("*/part.parquet"):
            table = pq.read_table(part)
            n = table.num_rows
            oi = table.column("open_interest").to_numpy()
            nulls = pa.array(oi, mask=np.arange(n) % 3 == 0)
            table = table.set_column(
                table.schema.get_field_index("open_interest"), "open_interest", nulls
            )
            i = table.schema.get_field_index("vega")
            table = table.set_column(i, "vega", table.column("vega").cast(pa.float32()))
            pq.write_table(table, part, row_group_size=2_000)
    if request.param == "us_times":
        # microsecond times: partly kept row groups cannot be masked in numpy, so those
        # files are read whole-width and filtered by the scan expression instead
        for part in (root / "BTC" / "chain").glob("*/part.parquet"):
            table = pq.read_table(part)
            for name in ("as_of", "expiry", "quote_time"):
                i = table.schema.get_field_index(name)
                table = table.set_column(
                    i, name, table.column(name).cast(pa.timestamp("us", tz="UTC"))
                )
            pq.write_table(table, part, row_group_size=2_000)
    return root


def test_selected_rows_carry_the_full_chain_values(store: Path) -> None:
    times = pd.date_range(START, END, freq="4h", tz="UTC")
    source = FileDataSource(store)
    picked = columns_to_frame(source.selected_chain_columns("BTC", times, SELECTION, max_dte=4.0))
    full = columns_to_frame(
        FileDataSource(store).chain_columns("BTC", times, kinds=("call",), max_dte=4.0)
    )
    assert 0 < len(picked) < len(full)
    assert picked["as_of"].dt.month.nunique() == 2  # both the January and February partitions
    key = ["as_of", "instrument_name"]
    both = picked.merge(full, on=key, how="left", suffixes=("", "_full"), indicator=True)
    assert (both["_merge"] == "both").all()
    for column in VALUE_COLUMNS:
        np.testing.assert_array_equal(both[column], both[f"{column}_full"], err_msg=column)
    assert list(picked.columns) == list(full.columns)


def _same_columns(got: ChainColumns, want: ChainColumns) -> None:
    assert got.names[got.code].tolist() == want.names[want.code].tolist()
    for key in ("as_of", "expiry", "quote_time", "is_call"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key))
    assert got.values.keys() == want.values.keys()
    for key, value in want.values.items():
        np.testing.assert_array_equal(got.values[key], value)


@pytest.mark.parametrize("max_dte", [None, 1.5, 3.0])
def test_kept_rows_convert_like_a_filtered_sorted_table(store: Path, max_dte) -> None:
    # the scan converts the kept rows of the decoded row groups straight into time order:
    # the same columns as filtering the groups, converting, then sorting by as_of (stable)
    parts = sorted((store / "BTC" / "chain").glob("*/part.parquet"))
    lo, hi = pd.Timestamp(START, tz="UTC"), pd.Timestamp("2024-02-02T12:00", tz="UTC")
    expr = scan_filter(lo, hi, kinds=("call",), max_dte=max_dte)
    window = ScanWindow(lo=lo.value, hi=hi.value, kinds=frozenset(["call"]), max_dte=max_dte)
    pieces = read_parquet_pieces(parts, expr, STORE_SCAN_COLUMNS, window)
    table, rows = kept_rows(pieces)
    filtered = read_parquet_files(parts, expr, STORE_SCAN_COLUMNS, window)
    want = columns_from_arrow(filtered, "BTC")
    want = want.take(np.argsort(want.as_of, kind="stable"))
    assert 0 < len(rows) == len(want) <= table.num_rows
    if max_dte == 1.5 and table.schema.field("as_of").type.unit == "ns":
        assert len(rows) < table.num_rows  # decoded groups partly dropped by the mask
    _same_columns(columns_from_arrow(table, "BTC", rows=rows), want)


def test_plain_string_names_are_encoded_from_the_kept_rows_only() -> None:
    # a table whose names are not dictionary-encoded: codes and names come from the kept
    # rows (a name whose rows were all dropped is not listed), as converting a taken copy
    frame = pd.DataFrame(
        {
            "as_of": pd.to_datetime([3, 1, 2, 1], unit="h", utc=True),
            "instrument_name": ["BTC-A-1-C", "BTC-B-1-C", "BTC-C-1-C", "BTC-A-1-C"],
            "kind": ["call", "call", "call", "call"],
            "expiry": pd.to_datetime([9, 9, 9, 9], unit="h", utc=True),
            **{c: np.arange(4, dtype=np.float64) + i for i, c in enumerate(VALUE_COLUMNS)},
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    rows = np.array([3, 0])
    got = columns_from_arrow(table, "BTC", rows=rows)
    want = columns_from_arrow(table.take(pa.array(rows)), "BTC")
    _same_columns(got, want)
    assert got.names.tolist() == ["BTC-A-1-C"]


def test_deferred_columns_wait_in_the_file_until_rows_are_kept(store: Path) -> None:
    # a selective scan of Parquet partitions decodes only the selection columns; the other
    # value columns are decoded later, for the row groups holding kept rows, with the values
    # a whole-width read gives (files whose groups cannot be masked keep them in memory)
    parts = sorted((store / "BTC" / "chain").glob("*/part.parquet"))
    lo, hi = pd.Timestamp(START, tz="UTC"), pd.Timestamp("2024-02-02T12:00", tz="UTC")
    expr = scan_filter(lo, hi, kinds=("call",), max_dte=3.0)
    window = ScanWindow(lo=lo.value, hi=hi.value, kinds=frozenset(["call"]), max_dte=3.0)
    deferred: list = []
    got = read_chain_files(parts, expr, window, "BTC", deferred, Counter())
    whole = read_chain_files(parts, expr, window, "BTC", None, Counter())
    lazy = [isinstance(d, ParquetDeferred) for d in deferred]
    microseconds = pq.read_schema(parts[0]).field("as_of").type.unit == "us"
    assert len(deferred) == len(parts) and all(lazy) != microseconds
    (part,), (full,) = got, whole  # one part: every file's rows in one set of arrays
    assert ROW_ID in part.values and len(part) == len(full) > 0
    np.testing.assert_array_equal(part.as_of, np.sort(part.as_of))
    pick = np.sort(np.random.default_rng(5).choice(len(part), size=80, replace=False))
    _same_columns(take_deferred(part.take(pick), deferred), full.take(pick))


def test_kind_mask_matches_a_row_by_row_test() -> None:
    # dictionary chunks, sliced (offsets), different dictionaries per chunk; other columns: None
    kinds = ["call", "put", "put", "call", "call", "put", "call"]
    first = pa.array(kinds).dictionary_encode()
    second = pa.DictionaryArray.from_arrays(
        pa.array([1, 0, 0, 1], pa.int32()), pa.array(["put", "call"])
    )
    column = pa.chunked_array([first.slice(2, 4), second.slice(1), first[:0]])
    plain = column.cast(pa.string())
    for want in (("call",), ("put",), ("call", "put"), ("future",)):
        rows = pc.is_in(plain, value_set=pa.array(sorted(want))).to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(kind_mask(column, want), rows)
    assert kind_mask(plain, ("call",)) is None
    with_null = pa.chunked_array([pa.array(["call", None]).dictionary_encode()])
    assert kind_mask(with_null, ("call",)) is None
    table = pa.table({"kind": column})
    assert kind_mask(table.column("kind"), ("call",)).dtype == np.bool_
    # kind_in: the same answer for every column, a null kind being neither
    for col in (column, plain, with_null, with_null.cast(pa.string())):
        rows = [k in ("call",) for k in col.to_pylist()]
        got = kind_in(col, ("call",))
        assert got.dtype == np.bool_ and got.tolist() == rows
