"""Point-in-time market features from spot bars: returns and realized volatility.

Every feature at decision time t uses only bars labeled <= t (a bar's label is its close).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _lagged_index(
    bar_ns: np.ndarray, at_ns: np.ndarray, lag_ns: int, bar_ns_len: int
) -> np.ndarray:
    """Index of the bar labeled exactly `lag_ns` before each time, or -1 if absent."""
    want = at_ns - lag_ns
    k = np.searchsorted(bar_ns, want, side="right") - 1
    ok = (k >= 0) & (k < bar_ns_len)
    k = np.where(ok, k, 0)
    ok &= bar_ns[k] == want
    return np.where(ok, k, -1)


def spot_features(
    bar_ns: np.ndarray,
    close: np.ndarray,
    bar: pd.Timedelta,
    at_ns: np.ndarray,
    fresher_spot: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Spot, 1d/7d simple returns and 7d/30d annualized realized vol at each time (NaN if short).

    Realized vol is the root mean square of bar log returns, annualized with 365-day years;
    a window counts only when every bar in it is present. `fresher_spot` (NaN where absent)
    replaces the last bar's close as the spot, e.g. the chain's underlying after a gap in the
    bars, so returns run from the lagged bar to now rather than to the stale bar.
    """
    n = len(bar_ns)
    if n == 0:
        # no bars: only a fresher spot can be known; returns and vols need bars
        spot = np.full(len(at_ns), np.nan)
        if fresher_spot is not None:
            spot = np.where(np.isfinite(fresher_spot), fresher_spot, np.nan)
        empty = np.full(len(at_ns), np.nan)
        names = ("return_1d", "return_7d", "realized_vol_7d", "realized_vol_30d")
        return {"spot": spot} | {name: empty.copy() for name in names}
    j = np.searchsorted(bar_ns, at_ns, side="right") - 1
    has = j >= 0
    jj = np.where(has, j, 0)
    spot = np.where(has, close[jj], np.nan)
    if fresher_spot is not None:
        fresh = np.isfinite(fresher_spot)
        spot = np.where(fresh, fresher_spot, spot)
        has = has | fresh
    bar_ns_int = int(bar.value)
    logc = np.log(close)
    rets = np.diff(logc, prepend=np.nan)
    # a return only counts when the previous bar is exactly one bar earlier
    gap_ok = np.diff(bar_ns, prepend=bar_ns[0] - bar_ns_int) == bar_ns_int
    rets = np.where(gap_ok, rets, np.nan)
    sq = np.where(np.isnan(rets), 0.0, rets * rets)
    cnt = np.where(np.isnan(rets), 0, 1)
    csq = np.concatenate([[0.0], np.cumsum(sq)])
    ccnt = np.concatenate([[0], np.cumsum(cnt)])
    bars_per_year = pd.Timedelta(days=365) / bar
    out: dict[str, np.ndarray] = {"spot": spot}
    for name, days in (("return_1d", 1), ("return_7d", 7)):
        k = _lagged_index(bar_ns, at_ns, days * 86400 * 10**9, n)
        ok = has & (k >= 0)
        out[name] = np.where(ok, spot / close[np.where(ok, k, 0)] - 1.0, np.nan)
    for name, days in (("realized_vol_7d", 7), ("realized_vol_30d", 30)):
        w = round(pd.Timedelta(days=days) / bar)
        start = jj - w  # returns w bars: indices start+1 .. jj
        ok = has & (start >= 0)
        s0 = np.where(ok, start + 1, 0)
        total = csq[jj + 1] - csq[s0]
        count = ccnt[jj + 1] - ccnt[s0]
        full = ok & (count == w)
        with np.errstate(invalid="ignore", divide="ignore"):
            rv = np.sqrt(total / np.maximum(count, 1) * bars_per_year)
        out[name] = np.where(full, rv, np.nan)
    return out
