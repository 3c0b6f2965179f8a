"""The tiered chain layout: scans skip row groups outside their window, and never change a value.

Month files hold one row group per (days-to-expiry tier, kind) with a `days_to_expiry` column;
a scan with a DTE limit or one kind decodes only the row groups that can hold its rows. Stores
written before (one untiered row group per file) read the same values, and `harness data
compact` rewrites them into the tiered layout.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.chain_parquet import ScanWindow, read_parquet_files
from harness.data.chain_scan import columns_to_frame, scan_filter
from harness.data.files import (
    FileDataSource,
    compact_chain,
    is_tiered,
    read_table,
    write_chain_atomic,
)
from harness.data.importers import import_synthetic
from harness.data.store_schema import DTE_COLUMN, STORE_SCAN_COLUMNS, normalize_store_chain
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

UTC = "UTC"
START, END = "2024-02-25", "2024-03-06"
CFG = CallSimulationConfig(
    underlying="BTC",
    start=START,
    end=END,
    timeframe="1h",
    decision_interval_bars=6,
    target_dte=2.0,
    dte_tolerance=1.0,
    hold_to_expiry=False,
)


def _untiered(root: Path) -> None:
    """Rewrite every chain file of `root` as the older layout wrote it (one row group)."""
    for path in root.glob("BTC/chain/*/part.parquet"):
        frame = normalize_store_chain(read_table(path))
        frame = frame.sort_values(["as_of", "instrument_name", "quote_time"], kind="stable")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tiered = tmp_path_factory.mktemp("tiered")
    # calls and puts, every listed expiry: tiers and kinds both have something to skip
    import_synthetic("BTC", START, END, "6h", tiered, seed=3, progress=False)
    old = tmp_path_factory.mktemp("untiered")
    shutil.copytree(tiered, old, dirs_exist_ok=True)
    _untiered(old)
    return {"tiered": tiered, "untiered": old}


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("BTC/chain/*/part.parquet"))


def test_tiered_files_group_rows_by_dte_tier_and_kind(stores) -> None:
    files = _files(stores["tiered"])
    assert len(files) == 2 and all(is_tiered(f) for f in files)  # February and March
    assert not any(is_tiered(f) for f in _files(stores["untiered"]))
    for path in files:
        reader = pq.ParquetFile(path)
        assert reader.metadata.num_row_groups > 2
        for i in range(reader.metadata.num_row_groups):
            group = reader.read_row_group(i).to_pandas()
            dte = (group["expiry"] - group["as_of"]).dt.total_seconds() / 86_400.0
            np.testing.assert_array_equal(group[DTE_COLUMN].to_numpy(), dte.to_numpy())
            assert group["kind"].nunique() == 1
            key = group[["as_of", "expiry", "strike"]]
            assert key.equals(key.sort_values(["as_of", "expiry", "strike"], kind="stable"))


def test_a_dte_window_skips_row_groups_and_reads_the_same_rows(stores) -> None:
    times = pd.date_range("2024-02-27", "2024-03-04", freq="6h", tz=UTC)
    got = {}
    for name, root in stores.items():
        src = FileDataSource(root)
        cols = src.chain_columns("BTC", times, kinds=("call",), max_dte=3.0)
        frame = columns_to_frame(cols).sort_values(["as_of", "instrument_name"])
        got[name] = (frame.reset_index(drop=True), src.scan_stats)
    (new, new_stats), (old, old_stats) = got["tiered"], got["untiered"]
    assert len(new) > 100
    pd.testing.assert_frame_equal(new, old)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in _files(stores["tiered"]))
    # the untiered files are decoded whole; the tiered ones only where calls of <= 3 days live
    assert old_stats["rows_decoded"] == total and old_stats["row_groups_read"] == 2
    assert new_stats["row_groups_read"] < new_stats["row_groups"] / 3
    assert new_stats["rows_decoded"] < total / 4
    assert new_stats["rows"] == old_stats["rows"]


def test_replays_and_labels_are_the_same_in_both_layouts(stores) -> None:
    out = []
    for root in stores.values():
        sim = CoveredCallSimulator(FileDataSource(root), CFG)
        labels = sim.counterfactual_labels()
        out.append((sim.store.frame, labels))
    assert len(out[0][1]) > 20
    pd.testing.assert_frame_equal(out[0][0], out[1][0])
    pd.testing.assert_frame_equal(out[0][1], out[1][1])


def test_compact_rewrites_untiered_months(tmp_path: Path, stores) -> None:
    root = tmp_path / "store"
    shutil.copytree(stores["untiered"], root)
    times = pd.date_range("2024-02-26", "2024-03-05", freq="12h", tz=UTC)
    before = FileDataSource(root).chain_frame("BTC", times)
    done = compact_chain(root, "BTC")
    assert done.relaid == ("2024-02", "2024-03") and "rewritten in the tiered layout" in str(done)
    assert all(is_tiered(f) for f in _files(root))
    pd.testing.assert_frame_equal(FileDataSource(root).chain_frame("BTC", times), before)
    assert compact_chain(root, "BTC").relaid == ()  # nothing left to rewrite


T0 = pd.Timestamp("2024-05-01", tz=UTC)
H = pd.Timedelta(hours=1)


@st.composite
def chains(draw):
    n = draw(st.integers(1, 40))
    bars = draw(st.lists(st.integers(0, 48), min_size=n, max_size=n))
    lives = draw(st.lists(st.integers(1, 24 * 70), min_size=n, max_size=n))
    calls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rows = []
    for i, (b, life, call) in enumerate(zip(bars, lives, calls, strict=True)):
        as_of = T0 + b * H
        rows.append(
            {
                "as_of": as_of,
                "instrument_name": f"BTC-X{i}-{50_000 + i}-{'C' if call else 'P'}",
                "underlying": "BTC",
                "kind": "call" if call else "put",
                "strike": 50_000.0 + i,
                "expiry": as_of + life * H,
                **{c: float(i) for c in ("underlying_price", "mark_price", "delta")},
                "quote_time": as_of,
            }
        )
    return pd.DataFrame(rows)


@settings(max_examples=25, deadline=None)
@given(
    frame=chains(),
    lo=st.integers(-2, 50),
    span=st.integers(0, 50),
    max_dte=st.one_of(st.none(), st.floats(0.0, 80.0)),
    kinds=st.sampled_from([("call", "put"), ("call",), ("put",)]),
)
def test_pruned_reads_equal_a_full_filter(tmp_path_factory, frame, lo, span, max_dte, kinds):
    """Whatever the window, pruning row groups keeps exactly the rows the plain filter keeps."""
    from harness.data.source import CHAIN_COLUMNS

    for c in CHAIN_COLUMNS:
        if c not in frame.columns:
            frame[c] = np.nan
    frame = normalize_store_chain(frame).sort_values("as_of", kind="stable")
    path = tmp_path_factory.mktemp("prop") / "part.parquet"
    write_chain_atomic(frame.reset_index(drop=True), path)
    a, b = T0 + lo * H, T0 + (lo + span) * H
    expr = scan_filter(a, b, kinds=kinds, max_dte=max_dte)
    window = ScanWindow(lo=a.value, hi=b.value, kinds=frozenset(kinds), max_dte=max_dte)
    stats: Counter[str] = Counter()
    pruned = read_parquet_files([path], expr, STORE_SCAN_COLUMNS, window, stats)
    full = pq.read_table(path, columns=list(STORE_SCAN_COLUMNS)).filter(expr)
    key = ["as_of", "instrument_name"]
    want = full.to_pandas().sort_values(key, ignore_index=True)
    if pruned.num_rows == 0:
        assert len(want) == 0
        return
    got = pruned.to_pandas()
    got["instrument_name"] = got["instrument_name"].astype(str)
    got["kind"] = got["kind"].astype(str)
    pd.testing.assert_frame_equal(got.sort_values(key, ignore_index=True), want)
    assert stats["rows_decoded"] <= len(frame)
