"""History hints: how similar calls sold in the past turned out, strictly point in time.

For every candidate, `hist_reward` is the mean realised reward of the past candidates of the same
underlying in the same (delta bucket, DTE bucket) whose trades had *settled* (expiry strictly
before the decision time), and `hist_count` how many there were. A candidate offered at t never
sees a label that settles at or after t, so the hint is knowable at t.

The realised reward is the hold-to-expiry result per coin in basis points of the underlying at
the sale (the labels' `return_bps` without a drawdown penalty): scale-free, so a hint built in a
BTC bull market still means something at another price level.
"""

from __future__ import annotations

import numpy as np

# Bucket edges (left-closed): delta by 0.05 up to 0.5, days to expiry in trading-desk tenors.
DELTA_EDGES: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)
DTE_EDGES: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 11.0, 15.0, 22.0, 31.0, 45.0, 60.0)


def bucket(delta: np.ndarray, dte_days: np.ndarray) -> np.ndarray:
    """Bucket id per candidate: delta bucket x DTE bucket (ints, comparable across calls)."""
    d = np.searchsorted(np.asarray(DELTA_EDGES), np.asarray(delta, dtype=float), side="right")
    t = np.searchsorted(np.asarray(DTE_EDGES), np.asarray(dte_days, dtype=float), side="right")
    return d * (len(DTE_EDGES) + 1) + t


def history_hints(
    decision_ns: np.ndarray,
    settle_ns: np.ndarray,
    delta: np.ndarray,
    dte_days: np.ndarray,
    realised: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: (mean realised reward of settled similar past candidates or NaN, their count).

    All arrays are per candidate of one underlying: decision time and settlement time (ns UTC),
    delta, days to expiry, and the candidate's own realised reward (bps). A label j counts for
    candidate i when it is in i's bucket and `settle_ns[j] < decision_ns[i]`; labels with a
    non-finite reward are ignored. Vectorized: one sort and cumulative sum per bucket.
    """
    decision_ns = np.asarray(decision_ns, dtype=np.int64)
    settle_ns = np.asarray(settle_ns, dtype=np.int64)
    realised = np.asarray(realised, dtype=float)
    buckets = bucket(delta, dte_days)
    mean = np.full(len(decision_ns), np.nan)
    count = np.zeros(len(decision_ns), dtype=np.int64)
    usable = np.isfinite(realised)
    for b in np.unique(buckets):
        members = np.nonzero(buckets == b)[0]
        labels = members[usable[members]]
        order = np.argsort(settle_ns[labels], kind="stable")
        settled_at = settle_ns[labels][order]
        sums = np.concatenate([[0.0], np.cumsum(realised[labels][order])])
        # strictly before: a trade settling at the decision instant is not yet in the history
        n = np.searchsorted(settled_at, decision_ns[members], side="left")
        count[members] = n
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[members] = np.where(n > 0, sums[n] / np.maximum(n, 1), np.nan)
    return mean, count
