"""The store's chain rows: the columns a partition holds and a scan decodes, the
days-to-expiry tiers of the tiered layout (docs/data.md), and chain frames normalised to them.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from harness.data.source import CHAIN_COLUMNS, empty_chain_frame, normalize_chain_frame

STORE_CHAIN_COLUMNS: tuple[str, ...] = (*CHAIN_COLUMNS, "quote_time")


# What a chain scan decodes: the underlying is the store folder's, so its column is skipped.
STORE_SCAN_COLUMNS: tuple[str, ...] = tuple(c for c in STORE_CHAIN_COLUMNS if c != "underlying")


# The tiered layout (docs/data.md): each Parquet chain partition holds one row group per
# (days-to-expiry tier, kind), rows sorted by time inside each, and a `days_to_expiry` column
# whose row-group statistics let a scan skip every group outside its DTE window undecoded.
DTE_COLUMN = "days_to_expiry"


DTE_TIERS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)


DTE_SLACK = 1e-6  # days: float rounding of the stored column never prunes a kept row


_DATETIME_CHAIN = ("as_of", "expiry", "quote_time")


_STRING_CHAIN = ("instrument_name", "underlying", "kind")


def normalize_store_chain(frame: pd.DataFrame) -> pd.DataFrame:
    """Return a store chain frame: CHAIN_COLUMNS (normalized) plus `quote_time` (UTC)."""
    quote = frame["quote_time"] if "quote_time" in frame.columns else frame["as_of"]
    out = normalize_chain_frame(frame)
    for col in _STRING_CHAIN:
        out[col] = out[col].astype("str")  # one string dtype whatever the file format
    for col in ("as_of", "expiry"):
        out[col] = out[col].dt.as_unit("ns")
    out["quote_time"] = pd.to_datetime(
        pd.Series(quote).reset_index(drop=True), utc=True
    ).dt.as_unit("ns")
    return out


def concat_chain(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate store chain frames (empty input gives an empty store frame)."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return normalize_store_chain(
            empty_chain_frame().assign(quote_time=pd.Series(dtype="datetime64[ns, UTC]"))
        )
    return pd.concat(frames, ignore_index=True)
