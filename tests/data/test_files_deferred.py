"""A selective store read converts most value columns only for the kept rows, unchanged.

`FileDataSource.selected_chain_columns` keeps every value column of the rows it hands out in
Arrow until the selection is known (`take_deferred`); each kept row must carry exactly the
values the full point-in-time chain holds, for Parquet and CSV partitions alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.data.chain_scan import VALUE_COLUMNS, columns_to_frame
from harness.data.chain_select import ChainSelection
from harness.data.files import FileDataSource, read_table
from harness.data.importers import import_synthetic

START, END = "2024-01-29", "2024-02-04"
SELECTION = ChainSelection(
    min_dte=0.5, max_dte=3.0, min_delta=0.1, max_delta=0.4, atm_dte=2.0, follow=True
)


@pytest.fixture(scope="module", params=["parquet", "csv_february", "nulls_float32"])
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
