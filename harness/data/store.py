"""Columnar option-chain store: chains at a set of snapshot times, held as numpy arrays.

Any `MarketDataSource` can fill it (one `list_option_chain` call per time); sources that
implement `BulkChainSource.chain_frame` fill it in one vectorized call. Queries (chain at
an instant, rows of a time) are searchsorted slices, never per-row Python objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from harness.data.source import (
    CHAIN_COLUMNS,
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
        self.times = utc_index(times).sort_values()
        order = np.lexsort(
            (
                frame["strike"].to_numpy(),
                as_ns(frame["expiry"]),
                (frame["kind"].to_numpy() == "put"),
                as_ns(frame["as_of"]),
            )
        )
        self.frame = frame.iloc[order].reset_index(drop=True)
        self.as_of_ns = as_ns(self.frame["as_of"])
        self.expiry_ns = as_ns(self.frame["expiry"])
        self.is_call = self.frame["kind"].to_numpy() == "call"
        self.names = self.frame["instrument_name"].to_numpy()
        self.columns: dict[str, np.ndarray] = {
            c: self.frame[c].to_numpy(dtype=float)
            for c in CHAIN_COLUMNS
            if c not in ("as_of", "expiry", "instrument_name", "underlying", "kind")
        }
        t = as_ns(self.times)
        self.row_start = np.searchsorted(self.as_of_ns, t, side="left")
        self.row_stop = np.searchsorted(self.as_of_ns, t, side="right")

    def __len__(self) -> int:
        return len(self.frame)

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
    ) -> ChainStore:
        """Fill a store with `source`'s chains at `times` (bulk path when the source has one)."""
        idx = utc_index(pd.DatetimeIndex([to_utc(t) for t in times]))
        kinds = ("call",) if calls_only else ("call", "put")
        if isinstance(source, BulkChainSource):
            try:
                frame = source.chain_frame(underlying, idx, kinds=kinds, max_dte=max_dte)  # type: ignore[call-arg]
            except TypeError:
                frame = source.chain_frame(underlying, idx)
            if progress:
                progress(len(idx), len(idx))
        else:
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
            frame = pd.concat(parts, ignore_index=True) if parts else empty_chain_frame()
        frame = normalize_chain_frame(frame)
        keep = np.ones(len(frame), dtype=bool)
        if calls_only:
            keep &= frame["kind"].to_numpy() == "call"
        if max_dte is not None and len(frame):
            dte = (frame["expiry"] - frame["as_of"]).dt.total_seconds().to_numpy() / 86400.0
            keep &= dte <= max_dte
        return cls(frame.loc[keep], idx)

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
