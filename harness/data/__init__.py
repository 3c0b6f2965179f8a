"""Market data sources: the `MarketDataSource` protocol and its implementations."""

from harness.data.source import (
    CHAIN_COLUMNS,
    OHLC_COLUMNS,
    BulkChainSource,
    MarketDataSource,
    SettlementSource,
    frame_to_snapshots,
    snapshots_to_frame,
)

__all__ = [
    "CHAIN_COLUMNS",
    "OHLC_COLUMNS",
    "BulkChainSource",
    "MarketDataSource",
    "SettlementSource",
    "frame_to_snapshots",
    "snapshots_to_frame",
]
