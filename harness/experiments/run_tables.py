"""Parquet tables of a run folder (equity.parquet, labels.parquet), written cheaply.

pyarrow's default dictionary-encodes every column. For a run's float and timestamp columns
(almost every value distinct) that is wasted work: the dictionary grows until pyarrow falls back
to plain pages anyway, and it was about half of a sweep trial's Parquet write time. Only text
columns (policy, action, instrument names: few distinct values) keep dictionary pages. The
values, dtypes and pandas metadata are unchanged; only the page encoding of the other columns
is plain, which every Parquet reader reads (docs/run_folder.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api.types import is_object_dtype, is_string_dtype


def text_columns(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> list[str]:
    """The columns of `frame` (or of `columns` of it) that hold text (str or object dtype):
    those get dictionary pages."""
    dtypes = frame.dtypes if columns is None else frame.dtypes[list(columns)]
    return [
        str(c) for c, dtype in dtypes.items() if is_string_dtype(dtype) or is_object_dtype(dtype)
    ]


def write_parquet(frame: pd.DataFrame, path: Path, drop: Sequence[str] = ()) -> None:
    """`frame.drop(columns=drop, errors="ignore").to_parquet(path, index=False)`, with
    dictionary pages for text columns only."""
    columns = [c for c in frame.columns if c not in drop]
    if frame.attrs:  # pandas stores attrs in the file's metadata itself
        kept = frame[columns]
        kept.to_parquet(path, index=False, use_dictionary=text_columns(kept))
        return
    # what to_parquet does, converting on this thread (pyarrow's default starts a thread pool
    # per call for a frame this wide: two per trial, competing with the other sweep worker)
    # and taking the kept columns there (no dropped copy of the frame first)
    table = pa.Table.from_pandas(frame, columns=columns, preserve_index=False, nthreads=1)
    pq.write_table(table, path, compression="snappy", use_dictionary=text_columns(frame, columns))
