"""Columnar option-chain store: chains at a set of snapshot times, held as numpy arrays.

Any `MarketDataSource` can fill it (one `list_option_chain` call per time); sources that
implement `BulkChainSource.chain_frame` fill it in one vectorized call, and sources with
`ColumnarChainSource.chain_columns` (the Parquet store) without building a pandas frame. Queries (chain at
an instant, rows of a time) are searchsorted slices, never per-row Python objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from harness.data.chain_scan import (
    ChainColumns,
    ColumnarChainSource,
    columns_from_frame,
    columns_to_frame,
    rows_sorted_by,
)
from harness.data.chain_select import ChainSelection, SelectiveChainSource
from harness.data.source import (
    BulkChainSource,
    MarketDataSource,
    empty_chain_frame,
    frame_to_snapshots,
    normalize_chain_frame,
    snapshots_to_frame,
)
from harness.timestamps import TimestampLike, as_ns, to_utc, utc_index
from harness.types import OptionSnapshot

ProgressFn = Callable[[int, int], None]


class ChainStore:
    """Option chains at snapshot `times`, sorted by (time, kind, expiry, strike), as arrays."""

    def __init__(self, frame: pd.DataFrame, times: pd.DatetimeIndex) -> None:
        frame = normalize_chain_frame(frame)
        # one underlying per store (from_source fills one): mixed rows are refused, not relabelled
        self._setup(columns_from_frame(frame), times)

    @classmethod
    def from_columns(cls, cols: ChainColumns, times: pd.DatetimeIndex) -> ChainStore:
        """A store over chain columns (no pandas frame is built unless `frame` is asked for)."""
        store = cls.__new__(cls)
        store._setup(cols, times)
        return store

    def _setup(self, cols: ChainColumns, times: pd.DatetimeIndex) -> None:
        self.times = utc_index(times).sort_values()
        if not _in_store_order(cols):
            order = np.lexsort((cols.values["strike"], cols.expiry, ~cols.is_call, cols.as_of))
            cols = cols.take(order)
        self.cols = cols
        self.as_of_ns = cols.as_of
        self.expiry_ns = cols.expiry
        self.is_call = cols.is_call
        self.names = cols.names[cols.code] if len(cols) else np.empty(0, dtype=object)
        self.columns: dict[str, np.ndarray] = dict(cols.values)
        t = as_ns(self.times)
        self.row_start = np.searchsorted(self.as_of_ns, t, side="left")
        self.row_stop = np.searchsorted(self.as_of_ns, t, side="right")
        self._frame: pd.DataFrame | None = None

    @property
    def frame(self) -> pd.DataFrame:
        """Every row as a chain frame (CHAIN_COLUMNS), in store order; built on first use."""
        if self._frame is None:
            self._frame = columns_to_frame(self.cols)
        return self._frame

    def __len__(self) -> int:
        return len(self.cols)

    @classmethod
    def from_source(
        cls,
        source: MarketDataSource,
        underlying: str,
        times: Sequence[TimestampLike] | pd.DatetimeIndex,
        *,
        calls_only: bool = False,
        max_dte: float | None = None,
        progress: ProgressFn | None = None,
        select: ChainSelection | None = None,
    ) -> ChainStore:
        """Fill a store with `source`'s chains at `times` (bulk path when the source has one).

        With `select` (calls only) a `SelectiveChainSource` builds just the rows the selection
        keeps; other sources ignore it and give every row, which is always a valid superset.
        """
        if isinstance(times, pd.DatetimeIndex):
            idx = utc_index(times)
        else:  # one at a time: to_utc reads numbers as Unix milliseconds
            idx = utc_index(pd.DatetimeIndex([to_utc(t) for t in times]))
        kinds = ("call",) if calls_only else ("call", "put")
        if select is not None and not calls_only:
            raise ValueError("a chain selection keeps calls only: pass calls_only=True")
        if select is not None and isinstance(source, SelectiveChainSource):
            cols = source.selected_chain_columns(underlying, idx, select, max_dte=max_dte)
            if progress:
                progress(len(idx), len(idx))
        elif isinstance(source, ColumnarChainSource):
            cols = source.chain_columns(underlying, idx, kinds=kinds, max_dte=max_dte)
            if progress:
                progress(len(idx), len(idx))
        else:
            frame = cls._frame_from_source(source, underlying, idx, kinds, max_dte, progress)
            frame = normalize_chain_frame(frame)
            cols = columns_from_frame(frame, underlying.upper() if len(frame) else None)
        keep = np.ones(len(cols), dtype=bool)
        if calls_only:
            keep &= cols.is_call
        if max_dte is not None and len(cols):
            keep &= (cols.expiry - cols.as_of) / 86_400e9 <= max_dte
        if not keep.all():
            cols = cols.take(np.flatnonzero(keep))
        return cls.from_columns(cols, idx)

    @staticmethod
    def _frame_from_source(
        source: MarketDataSource,
        underlying: str,
        idx: pd.DatetimeIndex,
        kinds: tuple[str, ...],
        max_dte: float | None,
        progress: ProgressFn | None,
    ) -> pd.DataFrame:
        if isinstance(source, BulkChainSource):
            try:
                frame = source.chain_frame(underlying, idx, kinds=kinds, max_dte=max_dte)  # type: ignore[call-arg]
            except TypeError:
                frame = source.chain_frame(underlying, idx)
            if progress:
                progress(len(idx), len(idx))
            return frame
        parts = []
        for i, t in enumerate(idx):
            part = snapshots_to_frame(source.list_option_chain(underlying, t))
            if len(part) and (part["as_of"] > t).any():
                bad = part.loc[part["as_of"] > t, "instrument_name"].iloc[0]
                raise ValueError(
                    f"source returned a quote of {bad} stamped after the requested "
                    f"as_of {t.isoformat()}: that would leak the future"
                )
            # the store keys snapshots by the instant they were asked for
            part["as_of"] = t
            parts.append(part)
            if progress:
                progress(i + 1, len(idx))
        return pd.concat(parts, ignore_index=True) if parts else empty_chain_frame()

    def rows_at(self, i: int) -> slice:
        """Row slice of the i-th snapshot time."""
        return slice(int(self.row_start[i]), int(self.row_stop[i]))

    def time_index(self, as_of: TimestampLike) -> int:
        """Index of the latest snapshot time <= `as_of`; KeyError when there is none."""
        t = to_utc(as_of).value
        i = int(np.searchsorted(as_ns(self.times), t, side="right")) - 1
        if i < 0:
            raise KeyError(f"no chain snapshot at or before {to_utc(as_of).isoformat()}")
        return i

    def frame_at(self, as_of: TimestampLike) -> pd.DataFrame:
        """The chain of the latest snapshot at or before `as_of` as a frame."""
        return self.frame.iloc[self.rows_at(self.time_index(as_of))]

    def snapshots_at(self, as_of: TimestampLike) -> list[OptionSnapshot]:
        """The chain of the latest snapshot at or before `as_of` as OptionSnapshot objects."""
        return frame_to_snapshots(self.frame_at(as_of))

    def dte_days(self) -> np.ndarray:
        """Days to expiry of every row."""
        return (self.expiry_ns - self.as_of_ns) / (86400.0 * 1e9)


def _in_store_order(cols: ChainColumns) -> bool:
    """Whether rows are already sorted by (as_of, calls first, expiry, strike)."""
    keys = (cols.as_of, (~cols.is_call).astype(np.int8), cols.expiry, cols.values["strike"])
    return rows_sorted_by(keys)
