"""Store scans spread over threads (`harness/data/scan_threads.py`): one thread and several
read the same rows, codes, deferred values, band marks and counters (issue 18, store9)."""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.chain_parquet import ParquetDeferred, ScanWindow, read_chain_files, take_deferred
from harness.data.chain_scan import columns_to_frame, scan_filter
from harness.data.chain_select import ChainSelection
from harness.data.errors import DataError
from harness.data.files import FileDataSource
from harness.data.importers import import_synthetic
from harness.data.scan_threads import MAX_SCAN_THREADS, THREADS_ENV, file_pool, scan_threads
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig
from tests.store_replay_fixtures import band_marks, selected_rows

START, END = "2024-01-20", "2024-04-10"
TIMES_4H = pd.date_range("2024-01-21T04:00", "2024-03-25", freq="4h", tz="UTC")
SEL = ChainSelection(
    min_dte=5.0, max_dte=9.0, min_delta=0.1, max_delta=0.4, atm_dte=7.0, first_row_at=()
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four month partitions of 4-hour snapshots, with ATM summaries and without (the
    second pass then reads the left-out tiers' windows)."""
    root = tmp_path_factory.mktemp("threads")
    import_synthetic(
        "BTC", START, END, "4h", root, seed=13, calls_only=True, progress=False, max_dte=20.0
    )
    bare = tmp_path_factory.mktemp("threads_bare") / "store"
    shutil.copytree(root, bare)
    for path in (bare / "BTC" / "chain").glob("*/atm.arrow"):
        path.unlink()
    return {"summary": root, "bare": bare}


def _parts(root: Path) -> list[Path]:
    return sorted((root / "BTC" / "chain").glob("*/part.parquet"))


# ---------------------------------------------------------------- the thread count and pool


def test_threads_default_to_one_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert scan_threads() == 1
    assert scan_threads(3) == 3
    monkeypatch.setenv(THREADS_ENV, "2")
    assert scan_threads() == 2
    assert scan_threads(1) == 1  # explicit wins over the environment
    monkeypatch.setenv(THREADS_ENV, "auto")
    assert scan_threads() == max(1, min(MAX_SCAN_THREADS, os.cpu_count() or 1))
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(ValueError, match=THREADS_ENV):
        scan_threads()
    with pytest.raises(ValueError, match="at least 1"):
        scan_threads(0)


def test_file_pool_keeps_item_order_and_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: set[str] = set()

    def work(i: int) -> int:
        seen.add(threading.current_thread().name)
        if i == 7:
            raise KeyError(i)
        return i * i

    with file_pool(3, 6) as pool:
        assert list(pool.map(work, range(6))) == [i * i for i in range(6)]
    assert any(name.startswith("harness-scan") for name in seen)
    seen.clear()
    with file_pool(1, 6) as pool:  # one thread: inline, in the caller
        assert list(pool.map(work, range(6))) == [i * i for i in range(6)]
    assert seen == {threading.current_thread().name}
    with pytest.raises(KeyError), file_pool(2, 9) as pool:
        list(pool.map(work, range(9)))


# ---------------------------------------------------------------- same reads, any thread count


@pytest.mark.parametrize("deferred", [True, False])
def test_read_chain_files_same_for_any_thread_count(stores, deferred: bool) -> None:
    parts = _parts(stores["summary"])
    lo, hi = pd.Timestamp("2024-01-25", tz="UTC"), pd.Timestamp("2024-04-02", tz="UTC")
    expr = scan_filter(lo, hi, kinds=("call",), max_dte=12.0)
    window = ScanWindow(lo=lo.value, hi=hi.value, kinds=frozenset({"call"}), max_dte=12.0)
    got = {}
    for threads in (1, 3):
        store: list | None = [] if deferred else None
        stats: Counter[str] = Counter()
        low: list = []
        opened: list = []
        (cols,) = read_chain_files(
            parts,
            expr,
            window,
            "BTC",
            store,
            stats,
            floor=4.0,
            low=low,
            opened=opened,
            threads=threads,
        )
        if store is not None:
            assert all(isinstance(d, ParquetDeferred) for d in store)
            cols = take_deferred(cols, store, threads)
        got[threads] = (cols, stats, [g.plan for g in low], [p for _, p in opened])
    (one, stats_one, low_one, files_one), (many, stats_many, low_many, files_many) = got.values()
    assert stats_one == stats_many and low_one == low_many and files_one == files_many
    assert low_one  # the tier split left groups out
    np.testing.assert_array_equal(one.names, many.names)
    np.testing.assert_array_equal(one.code, many.code)
    pd.testing.assert_frame_equal(columns_to_frame(one), columns_to_frame(many))


@pytest.mark.parametrize("store", ["summary", "bare"])
def test_selective_load_same_for_any_thread_count(stores, store: str) -> None:
    root = stores[store]
    marks = pd.date_range(TIMES_4H[0], TIMES_4H[-1] + pd.Timedelta(days=15), freq="4h")
    one, src_one = selected_rows(root, TIMES_4H, SEL, 15.0, threads=1)
    many, src_many = selected_rows(root, TIMES_4H, SEL, 15.0, threads=4)
    pd.testing.assert_frame_equal(one, many)
    assert src_one.scan_stats == src_many.scan_stats
    assert src_one.scan_stats["low_row_groups_read"] > 0  # the second pass ran
    np.testing.assert_array_equal(
        band_marks(src_one, one, marks), band_marks(src_many, many, marks)
    )
    full_one = src_one.chain_frame("BTC", TIMES_4H[::5], max_dte=30.0)
    full_many = src_many.chain_frame("BTC", TIMES_4H[::5], max_dte=30.0)
    pd.testing.assert_frame_equal(full_one, full_many)


def test_replay_labels_same_for_any_thread_count(stores) -> None:
    cfg = CallSimulationConfig(
        underlying="BTC",
        start="2024-01-21",
        end="2024-03-31",
        timeframe="1h",
        decision_interval_bars=4,
        target_dte=7,
        target_delta=0.25,
    )
    labels = [
        CoveredCallSimulator(FileDataSource(stores["bare"], threads=t), cfg).counterfactual_labels()
        for t in (1, 2)
    ]
    assert len(labels[0]) > 0
    pd.testing.assert_frame_equal(labels[0], labels[1])


@pytest.mark.parametrize("threads", [1, 3])
def test_a_broken_partition_is_named_with_any_thread_count(
    stores, tmp_path: Path, threads: int
) -> None:
    root = tmp_path / "broken"
    shutil.copytree(stores["summary"], root)
    broken = _parts(root)[2]
    broken.write_bytes(b"not parquet")
    source = FileDataSource(root, threads=threads)
    with pytest.raises(DataError, match="cannot read store file") as err:
        source.chain_frame("BTC", TIMES_4H[::7], max_dte=30.0)
    assert str(broken) in str(err.value)
