"""Scan blocks end at month starts, so a period longer than one block reads each month once."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pandas as pd
import pytest

from harness.data.files import FileDataSource
from harness.data.importers import import_synthetic
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

CFG = CallSimulationConfig(
    underlying="BTC",
    start="2024-01-26",
    end="2024-03-03",
    timeframe="1h",
    decision_interval_bars=24,
    target_dte=7.0,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("months")
    import_synthetic(
        "BTC", "2024-01-24", "2024-03-12", "1d", root, seed=5, calls_only=True, progress=False
    )
    return root


def _ns(text: str) -> int:
    return pd.Timestamp(text, tz="UTC").value


def test_blocks_end_at_month_starts_within_block_days(store: Path) -> None:
    src = FileDataSource(store, block_days=31)
    blocks = src._blocks(_ns("2024-01-24 12:00"), _ns("2024-03-10"))
    starts = [pd.Timestamp(a, tz="UTC") for a, _ in blocks]
    assert starts == [
        pd.Timestamp("2024-01-24 12:00", tz="UTC"),
        pd.Timestamp("2024-02-01", tz="UTC"),
        pd.Timestamp("2024-03-01", tz="UTC"),
    ]
    # contiguous, covering [lo, hi], none longer than block_days
    assert all(b + 1 == a for (_, b), (a, _) in pairwise(blocks))
    assert blocks[-1][1] == _ns("2024-03-10")
    assert all(b - a < 31 * 86_400 * 10**9 for a, b in blocks)
    # short blocks: a month start within reach still ends a block, else a midnight does
    days = FileDataSource(store, block_days=3)._blocks(_ns("2024-01-30 06:00"), _ns("2024-02-05"))
    assert [pd.Timestamp(a, tz="UTC").day for a, _ in days] == [30, 1, 4]


def test_a_period_longer_than_a_block_reads_each_month_file_once(store: Path) -> None:
    files = len(list(store.glob("BTC/chain/*/part.parquet")))
    assert files == 3  # January, February, March
    one = FileDataSource(store)  # one block
    blocked = FileDataSource(store, block_days=31)  # the period spans 47 days
    a = CoveredCallSimulator(one, CFG)
    b = CoveredCallSimulator(blocked, CFG)
    assert blocked.scan_stats["scans"] == 3
    assert blocked.scan_stats["files"] == files == one.scan_stats["files"]
    pd.testing.assert_frame_equal(b.candidates_frame(), a.candidates_frame())
    pd.testing.assert_frame_equal(b.counterfactual_labels(), a.counterfactual_labels())
    assert blocked.scan_stats["scans"] == 3  # labels read no file again


@pytest.mark.parametrize("follow", [False, True])
def test_decision_times_in_chunks_select_the_same_rows(
    store: Path, monkeypatch: pytest.MonkeyPatch, follow: bool
) -> None:
    # the point-in-time pass and the selection run a few hundred decision times at a time;
    # any chunk size gives the same rows, order, stale counts and band marks as one pass
    # (follow: a call's later rows are kept across chunks through the shared band codes)
    import harness.data.files as files
    from harness.data.chain_scan import columns_to_frame
    from harness.data.chain_select import ChainSelection

    times = pd.date_range("2024-01-26", "2024-03-03", freq="4h", tz="UTC")
    selection = ChainSelection(
        min_dte=4.0, max_dte=10.0, min_delta=0.1, max_delta=0.4, atm_dte=7.0, follow=follow
    )

    def run(chunk: int) -> tuple[pd.DataFrame, int, pd.DataFrame]:
        monkeypatch.setattr(files, "_QUERY_CHUNK", chunk)
        src = FileDataSource(store, max_staleness="24h")
        cols = src.selected_chain_columns("BTC", times, selection, max_dte=15.0)
        hot = src._mark_periods["BTC"].hot.cols
        marks = pd.DataFrame(
            {"name": hot.names[hot.code], "as_of": hot.as_of, "mark": hot.values["mark_price"]}
        )
        return columns_to_frame(cols), src.gate_counts["stale"], marks

    whole, stale, hot = run(10_000)
    assert len(whole) > 0
    for chunk in (1, 7):
        got, got_stale, got_hot = run(chunk)
        pd.testing.assert_frame_equal(got, whole)
        assert got_stale == stale
        pd.testing.assert_frame_equal(got_hot, hot)
