"""run_tables.write_parquet: the same values and dtypes as `to_parquet`, plain pages for numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.experiments.run_tables import text_columns, write_parquet


def _encodings(path: Path) -> dict[str, tuple[str, ...]]:
    meta = pq.ParquetFile(path).metadata
    group = meta.row_group(0)
    return {
        group.column(i).path_in_schema: group.column(i).encodings for i in range(meta.num_columns)
    }


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from(["always_sell", "iv_rich", "x\u00e9"]),
            st.booleans(),
            st.integers(0, 10**12),
        ),
        max_size=40,
    )
)
def test_written_frame_reads_back_as_to_parquet_writes_it(tmp_path_factory, rows) -> None:
    d = tmp_path_factory.mktemp("t")
    frame = pd.DataFrame(rows, columns=["equity", "policy", "itm", "ns"])
    frame["timestamp"] = pd.to_datetime(frame["ns"], utc=True)
    frame.to_parquet(d / "old.parquet", index=False)
    write_parquet(frame, d / "new.parquet")
    old, new = pd.read_parquet(d / "old.parquet"), pd.read_parquet(d / "new.parquet")
    pd.testing.assert_frame_equal(new, old)
    assert pq.read_schema(d / "new.parquet").metadata == pq.read_schema(d / "old.parquet").metadata


def test_only_text_columns_get_dictionary_pages(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=500, freq="h", tz="UTC"),
            "policy": ["always_sell", "iv_rich"] * 250,
            "equity": np.linspace(1.0, 2.0, 500),
        }
    )
    assert text_columns(frame) == ["policy"]
    write_parquet(frame, tmp_path / "e.parquet")
    enc = _encodings(tmp_path / "e.parquet")
    assert "RLE_DICTIONARY" in enc["policy"]
    assert "RLE_DICTIONARY" not in enc["equity"] and "RLE_DICTIONARY" not in enc["timestamp"]
    empty = pd.DataFrame(columns=["timestamp", "policy", "equity"])
    write_parquet(empty, tmp_path / "empty.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "empty.parquet"), empty)


def test_dropped_columns_are_left_out_as_by_drop(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"decision_time": pd.date_range("2024-01-01", periods=3, tz="UTC"), "name": list("abc")}
    )
    frame["reward"] = [1.0, np.nan, 3.0]
    frame["best_reward"] = frame["reward"]
    write_parquet(frame, tmp_path / "new.parquet", drop=("best_reward", "not_there"))
    kept = frame.drop(columns=["best_reward", "not_there"], errors="ignore")
    kept.to_parquet(tmp_path / "old.parquet", index=False)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "new.parquet"), kept)
    assert pq.read_schema(tmp_path / "new.parquet").metadata == (
        pq.read_schema(tmp_path / "old.parquet").metadata
    )
