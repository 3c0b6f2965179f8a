"""Market data sources: the `MarketDataSource` protocol and its implementations."""

from harness.data.deribit import DeribitDataSource
from harness.data.errors import DataError
from harness.data.files import FileDataSource
from harness.data.source import (
    CHAIN_COLUMNS,
    OHLC_COLUMNS,
    BulkChainSource,
    MarketDataSource,
    SettlementSource,
    frame_to_snapshots,
    snapshots_to_frame,
)
from harness.data.synthetic import SyntheticMarket
from harness.data.tardis import TardisDataSource

__all__ = [
    "CHAIN_COLUMNS",
    "OHLC_COLUMNS",
    "BulkChainSource",
    "DataError",
    "DeribitDataSource",
    "FileDataSource",
    "MarketDataSource",
    "SettlementSource",
    "SyntheticMarket",
    "TardisDataSource",
    "frame_to_snapshots",
    "snapshots_to_frame",
]
