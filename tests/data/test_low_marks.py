"""The low-tier marks file written next to each chain partition (`harness/data/low_marks.py`):
it gives exactly the band rows decoding the low tiers gives, and a selective load falls back
to decoding when it is missing, unpaired or rewritten by another tool (issue 18, store8b).

Reference: the rows read from the partition itself, and the same store read without marks
files and with the tier skip switched off.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harness.data.files as files
from harness.data.chain_parquet import Codes
from harness.data.chain_scan import columns_to_frame, float_values, times_ns
from harness.data.chain_select import ChainSelection
from harness.data.files import FileDataSource, compact_chain, merge_chain, write_chain_atomic
from harness.data.importers import import_synthetic
from harness.data.low_marks import (
    GROUPS_KEY,
    LOW_MARKS_MAX_DTE,
    band_marks_from_file,
    marks_path,
)
from harness.data.side_files import WRITE_ID_KEY
from harness.data.store_schema import DTE_COLUMN
from tests.store_replay_fixtures import chain_parts, copy_store

START, END = "2024-02-01", "2024-03-20"
TIMES_4H = pd.date_range("2024-02-01T04:00", "2024-03-10", freq="4h", tz="UTC")
SEL = ChainSelection(
    min_dte=5.0, max_dte=9.0, min_delta=0.1, max_delta=0.4, atm_dte=7.0, first_row_at=()
)


def _marks_id(part: Path) -> bytes:
    return pa.ipc.open_file(pa.memory_map(str(marks_path(part)))).schema.metadata[WRITE_ID_KEY]


def _low_groups(part: Path) -> list[int]:
    meta = pq.read_metadata(part)
    days = meta.schema.to_arrow_schema().get_field_index(DTE_COLUMN)
    return [
        i
        for i in range(meta.num_row_groups)
        if meta.row_group(i).num_rows
        and meta.row_group(i).column(days).statistics.max <= LOW_MARKS_MAX_DTE
    ]


def _reference(part: Path, ids: list[int], hot: list[str]) -> pd.DataFrame:
    """The rows of groups `ids` whose name is in `hot`, in file order, read from the partition."""
    reader = pq.ParquetFile(part)
    table = reader.read_row_groups(ids) if ids else reader.schema_arrow.empty_table()
    keep = pc.is_in(
        table.column("instrument_name").cast(pa.string()), value_set=pa.array(hot, type=pa.string())
    )
    table = table.filter(keep)
    return pd.DataFrame(
        {
            "name": table.column("instrument_name").cast(pa.string()).to_pylist(),
            "as_of": times_ns(table.column("as_of")),
            "expiry": times_ns(table.column("expiry")),
            "quote_time": times_ns(table.column("quote_time")),
            "is_call": pc.equal(table.column("kind").cast(pa.string()), "call").to_numpy(
                zero_copy_only=False
            ),
            "mark_price": float_values(table.column("mark_price")),
        }
    )


def _from_file(part: Path, ids: list[int], hot: list[str]) -> tuple[pd.DataFrame, Counter]:
    codes = Codes()
    for n in hot:
        codes.index.setdefault(n, len(codes.index))
    stats: Counter[str] = Counter()
    cols = band_marks_from_file(
        pq.ParquetFile(part), part, ids, pa.array(hot, type=pa.string()), "BTC", codes, stats
    )
    assert cols is not None
    frame = pd.DataFrame(
        {
            "name": cols.names[cols.code].tolist() if len(cols) else [],
            "as_of": cols.as_of,
            "expiry": cols.expiry,
            "quote_time": cols.quote_time,
            "is_call": cols.is_call,
            "mark_price": cols.values["mark_price"],
        }
    )
    return frame, stats


def _select(root: Path, mode: str) -> tuple[pd.DataFrame, np.ndarray, FileDataSource]:
    """Selected rows and band marks read as the store is ("marks") or with the tier skip
    off ("no_skip")."""
    source = FileDataSource(root)
    saved = files.tier_floor
    if mode == "no_skip":
        files.tier_floor = lambda selection: None
    try:
        cols = source.selected_chain_columns("BTC", TIMES_4H, SEL, max_dte=15.0)
    finally:
        files.tier_floor = saved
    frame = columns_to_frame(cols)
    names = sorted(set(frame["instrument_name"]))
    times = pd.date_range(TIMES_4H[0], TIMES_4H[-1] + pd.Timedelta(days=15), freq="4h")
    marks = source.option_mark_ranges(
        names, times, np.zeros(len(names), dtype=np.int64), np.full(len(names), len(times) - 1)
    )
    return frame, marks, source


@pytest.fixture(scope="module")
def reference(weekly_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """The selection and band marks of the store without marks files."""
    root = copy_store(weekly_store, tmp_path_factory.mktemp("marks_ref"))
    for part in chain_parts(root):
        marks_path(part).unlink()
    frame, marks, source = _select(root, "marks")
    assert source.scan_stats["low_rows_marks_file"] == 0
    skip_frame, skip_marks, _ = _select(root, "no_skip")
    pd.testing.assert_frame_equal(frame, skip_frame)
    np.testing.assert_array_equal(marks, skip_marks)
    return frame, marks


def _same_as_reference(root: Path, reference) -> Counter:
    frame, marks, source = _select(root, "marks")
    pd.testing.assert_frame_equal(frame, reference[0])
    np.testing.assert_array_equal(marks, reference[1])
    return source.scan_stats


# ---------------------------------------------------------------- what the file holds


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    keep=st.floats(0.05, 1.0),
    nan_marks=st.booleans(),
    puts=st.booleans(),
)
def test_marks_file_rows_equal_the_tier_rows(weekly_store, seed, keep, nan_marks, puts) -> None:
    rng = np.random.default_rng(seed)
    frame = pq.read_table(chain_parts(weekly_store)[0]).to_pandas().drop(columns=[DTE_COLUMN])
    frame = frame[rng.random(len(frame)) < keep].reset_index(drop=True)
    if nan_marks:
        frame.loc[rng.random(len(frame)) < 0.2, "mark_price"] = np.nan
    if puts:  # some rows relabelled as puts: their own groups
        frame.loc[rng.random(len(frame)) < 0.3, "kind"] = "put"
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "part.parquet"
        write_chain_atomic(frame, part)
        low = _low_groups(part)
        assert low and marks_path(part).exists()
        ids = sorted(rng.choice(low, size=rng.integers(1, len(low) + 1), replace=False).tolist())
        names = sorted(set(frame["instrument_name"]))
        hot = sorted(rng.choice(names, size=rng.integers(0, min(len(names), 200) + 1)).tolist())
        got, stats = _from_file(part, ids, list(dict.fromkeys(hot)))
        want = _reference(part, ids, hot)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        meta = pq.read_metadata(part)
        assert stats["low_rows_marks_file"] == sum(meta.row_group(i).num_rows for i in ids)
        # groups above the low tiers are not in it: the caller decodes them
        high = [i for i in range(meta.num_row_groups) if i not in low]
        if high:
            assert (
                band_marks_from_file(
                    pq.ParquetFile(part),
                    part,
                    [high[0]],
                    pa.array(hot[:1], type=pa.string()),
                    "BTC",
                    Codes(),
                    stats,
                )
                is None
            )


def test_every_partition_write_pairs_a_marks_file(weekly_store, tmp_path) -> None:
    root = copy_store(weekly_store, tmp_path)
    for part in chain_parts(root):
        assert pq.ParquetFile(part).metadata.metadata[WRITE_ID_KEY] == _marks_id(part)
        meta = pa.ipc.open_file(pa.memory_map(str(marks_path(part)))).schema.metadata
        assert np.frombuffer(base64.b64decode(meta[GROUPS_KEY]), "<i4").tolist() == (
            _low_groups(part)
        )
    part = chain_parts(root)[0]
    frame = pq.read_table(part).to_pandas().drop(columns=[DTE_COLUMN])
    merge_chain(root, "BTC", frame.iloc[:10])
    assert _marks_id(part) == pq.ParquetFile(part).metadata.metadata[WRITE_ID_KEY]


def test_compaction_writes_marks_files(tmp_path) -> None:
    root = tmp_path / "days"
    import_synthetic(
        "BTC", "2024-02-01", "2024-02-04", "4h", root, seed=3, calls_only=True, progress=False
    )
    frame = pd.concat([pq.read_table(p).to_pandas() for p in chain_parts(root)])
    shutil.rmtree(root / "BTC" / "chain")
    merge_chain(root, "BTC", frame.drop(columns=[DTE_COLUMN]))  # day partitions
    assert all(marks_path(p).exists() for p in chain_parts(root))
    compact_chain(root, "BTC")
    assert sorted(p.name for p in (root / "BTC" / "chain").iterdir()) == ["month=2024-02"]
    assert sorted(p.name for p in (root / "BTC" / "chain" / "month=2024-02").iterdir()) == [
        "atm.arrow",
        "marks.arrow",
        "part.parquet",
    ]
    part = chain_parts(root)[0]
    assert _marks_id(part) == pq.ParquetFile(part).metadata.metadata[WRITE_ID_KEY]


def test_compaction_gives_months_without_marks_files_one(weekly_store, reference, tmp_path) -> None:
    root = copy_store(weekly_store, tmp_path)
    for part in chain_parts(root):  # as store8 wrote them: a write id and a summary, no marks
        marks_path(part).unlink()
    assert _same_as_reference(root, reference)["low_rows_marks_file"] == 0
    assert compact_chain(root, "BTC").summarised == ("2024-02", "2024-03")
    assert all(marks_path(p).exists() for p in chain_parts(root))
    assert _same_as_reference(root, reference)["low_rows_marks_file"] > 0
    assert compact_chain(root, "BTC").summarised == ()  # nothing left to rewrite


# ---------------------------------------------------------------- the load reads from it


def test_load_takes_band_marks_from_the_marks_files(weekly_store, reference) -> None:
    stats = _same_as_reference(weekly_store, reference)
    assert stats["low_rows_marks_file"] > 0 and stats["low_row_groups_marks_file"] > 0


def test_missing_or_stale_marks_files_are_decoded(weekly_store, reference, tmp_path) -> None:
    root = copy_store(weekly_store, tmp_path)
    feb, mar = chain_parts(root)[:2]
    marks_path(mar).unlink()  # March: none
    # February: a marks file from another write (the partition rewritten without it)
    kept = marks_path(feb).read_bytes()
    frame = pq.read_table(feb).to_pandas().drop(columns=[DTE_COLUMN])
    write_chain_atomic(frame, feb)
    marks_path(feb).write_bytes(kept)
    stats = _same_as_reference(root, reference)
    assert stats["low_rows_marks_file"] == 0 and stats["low_row_groups_read"] > 0


def test_a_rewrite_by_another_tool_unpairs_the_marks_file(
    weekly_store, reference, tmp_path
) -> None:
    root = copy_store(weekly_store, tmp_path)
    for part in chain_parts(root):
        reader = pq.ParquetFile(part)
        groups = [reader.read_row_group(i) for i in range(reader.num_row_groups)]
        with pq.ParquetWriter(part, reader.schema_arrow) as writer:  # keeps the write id
            for group in groups:
                writer.write_table(group)
        assert pq.ParquetFile(part).metadata.metadata[WRITE_ID_KEY] == _marks_id(part)
    stats = _same_as_reference(root, reference)
    assert stats["low_rows_marks_file"] == 0
