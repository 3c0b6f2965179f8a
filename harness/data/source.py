"""The market data protocol every source implements, and its columnar chain-frame schema."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from harness.timestamps import TimestampLike, to_utc
from harness.types import OptionSnapshot, Timeframe

OHLC_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")

# One row per (as_of, instrument). Prices in USD per 1 underlying (NaN where a side is missing),
# `*_coin` in the underlying coin, IVs as fractions, greeks in Deribit's units (delta per coin,
# gamma per USD, vega in USD per 1 vol point, theta in USD per calendar day).
CHAIN_COLUMNS: tuple[str, ...] = (
    "as_of",
    "instrument_name",
    "underlying",
    "kind",
    "strike",
    "expiry",
    "underlying_price",
    "mark_price",
    "bid_price",
    "ask_price",
    "mark_price_coin",
    "bid_price_coin",
    "ask_price_coin",
    "mark_iv",
    "bid_iv",
    "ask_iv",
    "delta",
    "gamma",
    "vega",
    "theta",
    "open_interest",
)
_FLOAT_COLUMNS = CHAIN_COLUMNS[4:5] + CHAIN_COLUMNS[6:]


@runtime_checkable
class MarketDataSource(Protocol):
    """What the simulator needs from a market: spot bars, chains at an instant, option bars.

    OHLC frames have a UTC `DatetimeIndex` named ``timestamp`` labeled by bar close time
    (the bar t covers (t - timeframe, t]) and columns open, high, low, close, volume.
    `start` and `end` are inclusive. Option OHLC is in USD per 1 underlying.
    """

    def get_spot_ohlc(
        self, underlying: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Spot (index) bars of `underlying` in USD, labeled by close time."""
        ...

    def list_option_chain(self, underlying: str, as_of: TimestampLike) -> list[OptionSnapshot]:
        """Every listed option of `underlying` as quoted at the instant `as_of`."""
        ...

    def get_option_ohlc(
        self, instrument_name: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Bars of one option in USD per 1 underlying, labeled by close time."""
        ...


@runtime_checkable
class BulkChainSource(Protocol):
    """Optional fast path a built-in source may offer to fill a ChainStore in one call."""

    def chain_frame(self, underlying: str, times: pd.DatetimeIndex) -> pd.DataFrame:
        """Chains at each of `times` as one frame with CHAIN_COLUMNS."""
        ...

    def option_marks(self, instrument_names: Sequence[str], times: pd.DatetimeIndex) -> np.ndarray:
        """Mark prices (USD) of instruments at times, shape (len(names), len(times)); NaN if unlisted."""
        ...


@runtime_checkable
class MarkRangeSource(Protocol):
    """Optional: mark paths of many instruments, each over its own bar range, in one request."""

    def option_mark_ranges(
        self,
        instrument_names: Sequence[str],
        times: pd.DatetimeIndex,
        first: np.ndarray,
        last: np.ndarray,
    ) -> np.ndarray:
        """Marks (USD) of name i at times[first[i]:last[i] + 1], concatenated in name order.

        Each name's values equal `option_marks([name], times[first[i]:last[i] + 1])`.
        """
        ...


def range_positions(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Positions first[i]..last[i] (inclusive) of every range, concatenated in range order."""
    first = np.asarray(first, dtype=np.int64)
    widths = np.asarray(last, dtype=np.int64) - first + 1
    if (widths < 0).any():
        raise ValueError("every range needs last >= first - 1")
    ends = np.cumsum(widths)
    total = int(ends[-1]) if len(ends) else 0
    # position = first of its range + offset inside it
    return np.repeat(first - (ends - widths), widths) + np.arange(total)


@runtime_checkable
class SettlementSource(Protocol):
    """Optional: a source that knows the exchange's official delivery (settlement) price."""

    def settlement_price(self, underlying: str, expiry: pd.Timestamp) -> float | None:
        """The delivery price of `underlying` at `expiry` in USD, or None when unknown."""
        ...


def empty_ohlc() -> pd.DataFrame:
    """An empty OHLC frame with the standard columns and a UTC `timestamp` index."""
    idx = pd.DatetimeIndex([], tz="UTC", name="timestamp")
    return pd.DataFrame({c: pd.Series(dtype=float) for c in OHLC_COLUMNS}, index=idx)


def empty_chain_frame() -> pd.DataFrame:
    """An empty chain frame with CHAIN_COLUMNS and their dtypes."""
    return normalize_chain_frame(pd.DataFrame({c: [] for c in CHAIN_COLUMNS}))


def normalize_chain_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with exactly CHAIN_COLUMNS, UTC datetimes and float64 numbers."""
    missing = [c for c in CHAIN_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"chain frame is missing columns: {', '.join(missing)}")
    out = frame.loc[:, list(CHAIN_COLUMNS)].copy()
    for col in ("as_of", "expiry"):
        out[col] = pd.to_datetime(out[col], utc=True)
    for col in _FLOAT_COLUMNS:
        out[col] = out[col].astype("float64")
    return out.reset_index(drop=True)


def _opt(value: float) -> float | None:
    return None if value != value else float(value)  # NaN -> None


def snapshots_to_frame(snapshots: Iterable[OptionSnapshot]) -> pd.DataFrame:
    """Turn OptionSnapshot objects into a chain frame (None becomes NaN)."""
    rows = [
        {c: (getattr(s, c) if getattr(s, c) is not None else np.nan) for c in CHAIN_COLUMNS}
        for s in snapshots
    ]
    if not rows:
        return empty_chain_frame()
    return normalize_chain_frame(pd.DataFrame(rows))


def frame_to_snapshots(frame: pd.DataFrame) -> list[OptionSnapshot]:
    """Turn chain-frame rows into OptionSnapshot objects (NaN sides become None)."""
    n = len(frame)
    if n == 0:
        return []
    cols = {c: frame[c].tolist() for c in CHAIN_COLUMNS if c not in ("as_of", "expiry")}
    # box each distinct instant once: a chain has one as_of and a dozen expiries
    boxed: dict[int, pd.Timestamp] = {}

    def box(ns: int) -> pd.Timestamp:
        ts = boxed.get(ns)
        if ts is None:
            ts = boxed[ns] = pd.Timestamp(ns, tz="UTC")
        return ts

    as_of = [box(v) for v in pd.DatetimeIndex(frame["as_of"]).as_unit("ns").asi8.tolist()]
    expiry = [box(v) for v in pd.DatetimeIndex(frame["expiry"]).as_unit("ns").asi8.tolist()]
    optional = (
        "bid_price",
        "ask_price",
        "mark_price_coin",
        "bid_price_coin",
        "ask_price_coin",
        "bid_iv",
        "ask_iv",
    )
    for c in optional:
        cols[c] = [_opt(v) for v in cols[c]]
    out: list[OptionSnapshot] = []
    for i in range(n):
        out.append(
            OptionSnapshot(
                instrument_name=str(cols["instrument_name"][i]),
                underlying=str(cols["underlying"][i]),
                kind=cols["kind"][i],
                strike=cols["strike"][i],
                expiry=expiry[i],
                as_of=as_of[i],
                underlying_price=cols["underlying_price"][i],
                mark_price=cols["mark_price"][i],
                bid_price=cols["bid_price"][i],
                ask_price=cols["ask_price"][i],
                mark_iv=cols["mark_iv"][i],
                delta=cols["delta"][i],
                gamma=cols["gamma"][i],
                vega=cols["vega"][i],
                theta=cols["theta"][i],
                open_interest=cols["open_interest"][i],
                mark_price_coin=cols["mark_price_coin"][i],
                bid_price_coin=cols["bid_price_coin"][i],
                ask_price_coin=cols["ask_price_coin"][i],
                bid_iv=cols["bid_iv"][i],
                ask_iv=cols["ask_iv"][i],
            )
        )
    return out


def inclusive_range(start: TimestampLike, end: TimestampLike) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Parse an inclusive [start, end] range to UTC, raising if end < start."""
    s, e = to_utc(start), to_utc(end)
    if e < s:
        raise ValueError(f"end {e.isoformat()} is before start {s.isoformat()}")
    return s, e
