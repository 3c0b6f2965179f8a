"""UTC timestamp handling: every timestamp in the harness is timezone-aware UTC."""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd

TimestampLike = str | datetime | date | pd.Timestamp | np.datetime64 | int | float


def to_utc(value: TimestampLike) -> pd.Timestamp:
    """Return `value` as a tz-aware UTC pandas Timestamp (naive input is taken as UTC).

    Integers and floats are read as Unix milliseconds, the unit Deribit uses.
    """
    if isinstance(value, bool):
        raise TypeError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float | np.integer | np.floating):
        ts = pd.Timestamp(int(value), unit="ms")
    else:
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"unparseable timestamp: {value!r}") from exc
    if ts is pd.NaT:
        raise ValueError(f"unparseable timestamp: {value!r}")
    if ts.tzinfo is None:
        return ts.tz_localize("UTC")
    return ts.tz_convert("UTC")


def utc_index(values: pd.DatetimeIndex | pd.Series | np.ndarray | list) -> pd.DatetimeIndex:
    """Return `values` as a UTC DatetimeIndex named ``timestamp`` (naive values taken as UTC)."""
    idx = pd.DatetimeIndex(values)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return idx.as_unit("ns").rename("timestamp")


def as_ns(values: pd.DatetimeIndex | pd.Series | np.ndarray | list) -> np.ndarray:
    """Nanoseconds since the Unix epoch (int64) of UTC instants, whatever their resolution.

    pandas 3 keeps a per-index resolution (s, ms, us, ns), so `.asi8` alone is not ns.
    """
    if isinstance(values, pd.DatetimeIndex) and values.tz is not None:
        # already aware: its instants are epoch-based whatever the zone (no re-parsing)
        return values.as_unit("ns").asi8
    return utc_index(values).as_unit("ns").asi8


def iso_strings(times: pd.DatetimeIndex) -> list[str]:
    """`[t.isoformat() for t in times]` of UTC instants, vectorized when every instant is a
    whole second (decision times are); any other index takes the per-Timestamp path."""
    if times.tz is not None and str(times.tz) == "UTC" and len(times):
        ns = times.as_unit("ns").asi8
        if not (ns % 1_000_000_000).any():
            text = np.datetime_as_string(ns.astype("datetime64[ns]").astype("datetime64[s]"))
            return [t + "+00:00" for t in text.tolist()]
    return [t.isoformat() for t in times]
