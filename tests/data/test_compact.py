"""Month partitions: `compact_chain` folds day files into month files without changing a read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from harness.cli import main
from harness.data.files import (
    FileDataSource,
    chain_month_path,
    chain_partition_path,
    compact_chain,
    merge_chain,
    update_meta,
)
from tests.data.test_files import CALL, chain_rows

UTC = "UTC"
H = pd.Timedelta(hours=1)
# bars on both sides of a month end, so the store spans two month partitions
BARS = pd.date_range("2024-02-27 00:00", "2024-03-02 23:00", freq="6h", tz=UTC)
CALL2 = "BTC-29MAR24-70000-C"


def _store(root: Path) -> Path:
    rows = [(CALL, b, b - pd.Timedelta(minutes=2), 0.01 + i * 1e-4) for i, b in enumerate(BARS)]
    rows += [(CALL2, b, b - pd.Timedelta(minutes=5), 0.02) for b in BARS[::2]]
    merge_chain(root, "BTC", chain_rows(rows))
    update_meta(root, "BTC", chain_timeframe="1h", snapshot_every="6h")
    return root


def _read(root: Path) -> pd.DataFrame:
    src = FileDataSource(root)
    times = pd.DatetimeIndex(BARS + H)
    return src.chain_frame("BTC", times).sort_values(
        ["as_of", "instrument_name"], ignore_index=True
    )


def _marks(root: Path) -> list[float]:
    return FileDataSource(root).option_marks([CALL, CALL2], pd.DatetimeIndex(BARS))[0].tolist()


def test_compaction_keeps_every_row_and_every_answer(tmp_path: Path) -> None:
    root = _store(tmp_path / "data")
    before, marks = _read(root), _marks(root)
    days = list(root.glob("BTC/chain/date=*/part.parquet"))
    assert len(days) == 5  # 2024 is a leap year
    done = compact_chain(root, "BTC")
    assert done.months == ("2024-02", "2024-03") and done.day_files == 5
    assert done.rows == len(BARS) + len(BARS[::2])
    assert not list(root.glob("BTC/chain/date=*"))
    feb_file = pq.ParquetFile(chain_month_path(root, "BTC", BARS[0]))
    # tiered layout: rows sorted by time inside each (days-to-expiry tier, kind) row group
    for i in range(feb_file.num_row_groups):
        group = feb_file.read_row_group(i).to_pandas()
        assert group["as_of"].is_monotonic_increasing and group["as_of"].dt.month.eq(2).all()
    pd.testing.assert_frame_equal(_read(root), before)
    assert _marks(root) == marks
    again = compact_chain(root, "BTC")  # nothing left to fold
    assert again.day_files == 0 and again.months == ()


def test_leftover_day_files_are_ignored_and_new_rows_join_the_month(tmp_path: Path) -> None:
    root = _store(tmp_path / "data")
    keep = tmp_path / "leftover.parquet"
    day = chain_partition_path(root, "BTC", BARS[-1])
    shutil.copy(day, keep)
    before = _read(root)
    compact_chain(root, "BTC")
    # an interrupted compaction: the month file is complete, a day file is still there
    day.parent.mkdir(parents=True)
    shutil.copy(keep, day)
    src = FileDataSource(root)
    pd.testing.assert_frame_equal(_read(root), before)
    assert src._partition_files("BTC", BARS[0].value, BARS[-1].value) == [
        chain_month_path(root, "BTC", BARS[0]),
        chain_month_path(root, "BTC", BARS[-1]),
    ]
    # a later import of that month goes into the month file, a new quote wins
    late = BARS[-1]
    merge_chain(root, "BTC", chain_rows([(CALL, late, late - pd.Timedelta(minutes=1), 0.5)]))
    got = FileDataSource(root).option_marks([CALL], pd.DatetimeIndex([late]))[0, 0]
    assert got == 0.5 * 60_000.0
    compact_chain(root, "BTC")  # folds the leftover; the newer month row still wins
    assert not day.exists()
    assert FileDataSource(root).option_marks([CALL], pd.DatetimeIndex([late]))[0, 0] == got


def test_compact_command(tmp_path: Path, capsys) -> None:
    root = _store(tmp_path / "data")
    assert main(["data", "compact", "--store", str(root)]) == 0
    assert "5 day partition(s) -> 2 month partition(s)" in capsys.readouterr().out
    assert sorted(p.parent.name for p in root.glob("BTC/chain/*/part.parquet")) == [
        "month=2024-02",
        "month=2024-03",
    ]


def test_a_month_import_into_a_day_store_keeps_the_day_rows(tmp_path: Path) -> None:
    root = _store(tmp_path / "data")
    before = _read(root)
    late = pd.Timestamp("2024-03-03 00:00", tz=UTC)
    merge_chain(
        root,
        "BTC",
        chain_rows([(CALL2, late, late - pd.Timedelta(minutes=1), 0.03)]),
        by_month=True,
    )
    # March's day files were folded into the new month file; February's stay as they are
    assert not list(root.glob("BTC/chain/date=2024-03-*"))
    assert len(list(root.glob("BTC/chain/date=2024-02-*"))) == 3
    pd.testing.assert_frame_equal(_read(root), before)
    got = FileDataSource(root).option_marks([CALL2], pd.DatetimeIndex([late]))[0, 0]
    assert got == 0.03 * 60_000.0
