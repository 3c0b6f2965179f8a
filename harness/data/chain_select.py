"""Which chain rows a covered-call replay reads, so a source can build only those.

A year of hourly chains holds millions of call rows, but a replay reads few of them: the calls
in its DTE and delta band, the at-the-money call of the expiry nearest its target DTE (the ATM
IV feature) and, when it may buy a call back, the later rows of calls it could hold. A source
that implements `SelectiveChainSource` quotes only those rows; every kept row has exactly the
values the full chain has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from harness.data.chain_scan import ChainColumns


@dataclass(frozen=True)
class ChainSelection:
    """The call rows a replay reads (days to expiry in days, delta per coin; bounds inclusive).

    Kept, at each time: every call with days to expiry in [min_dte, max_dte] and delta in
    [min_delta, max_delta] (the candidate band; callers widen it by a small margin so float
    noise never drops a candidate); the call or calls nearest the money (least |K/S - 1|) of
    the expiry or expiries nearest `atm_dte` days; and with `follow`, every later row of a
    call once it was in the band (an open call is marked and bought back from its own row).

    `first_row_at`: the decision times (ns) whose first row (nearest expiry, lowest strike)
    a store must keep: the simulator reads it only as the spot after a gap in its spot bars.
    None keeps it at every time. Sources that never keep it (the embedded market, whose
    spot has no gaps) ignore it.
    """

    min_dte: float
    max_dte: float
    min_delta: float
    max_delta: float
    atm_dte: float
    follow: bool = False
    first_row_at: tuple[int, ...] | None = None

    def first_row_wanted(self, t_ns: np.ndarray) -> np.ndarray:
        """Per query time (ns): whether its first row must be kept."""
        if self.first_row_at is None:
            return np.ones(len(t_ns), dtype=bool)
        return np.isin(t_ns, np.asarray(self.first_row_at, dtype=np.int64))


@runtime_checkable
class SelectiveChainSource(Protocol):
    """Optional bulk path: only the call rows a `ChainSelection` keeps, as chain columns."""

    def selected_chain_columns(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        selection: ChainSelection,
        *,
        max_dte: float | None = None,
    ) -> ChainColumns:
        """Kept call rows at `times` (as_of = the query time) in store order, none past max_dte."""
        ...


def store_selection_mask(
    cols: ChainColumns,
    rows: np.ndarray,
    which: np.ndarray,
    t_ns: np.ndarray,
    selection: ChainSelection,
    held: np.ndarray,
    first: np.ndarray | None = None,
) -> np.ndarray:
    """Which point-in-time rows (`rows` of `cols`, query `which`, query time `t_ns`) to keep.

    For a store, whose rows are read rather than priced: `rows` must be sorted by query, then
    calls first, expiry and strike (the chain store's order). Kept, per query: the candidate
    band; every row of a call in `held` (codes already in the band at an earlier query, when
    `selection.follow`); `held` is updated in place with this band's codes either way (the
    source keeps fast marks for them); the rows the simulator's ATM
    IV feature can pick (usable IV, days to expiry > 0, nearest `atm_dte`, then nearest the
    money by each row's own underlying price, NaN money gaps kept so the result is unchanged);
    and the first row (nearest expiry, lowest strike), the simulator's fallback spot after a
    gap in the spot bars, at the queries where `first` (bool per query; default
    `selection.first_row_wanted`) says so. Whatever is dropped is a row the simulator never reads.
    """
    n = len(rows)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    is_call = cols.is_call[rows]
    dte = (cols.expiry[rows] - t_ns[which]) / (86400.0 * 1e9)
    delta = cols.values["delta"][rows]
    band = (
        is_call
        & (dte >= selection.min_dte)
        & (dte <= selection.max_dte)
        & (delta >= selection.min_delta)
        & (delta <= selection.max_delta)
    )
    keep |= band
    code = cols.code[rows]
    if selection.follow:
        keep |= held[code]  # later rows of calls already in the band (past queries)
        # rows of this batch after a call's first band row (same block)
        first_band = np.full(len(held), n, dtype=np.int64)
        np.minimum.at(first_band, code[band], np.flatnonzero(band))
        keep |= np.arange(n) >= first_band[code]
    held[code[band]] = True
    starts = np.r_[0, np.flatnonzero(np.diff(which)) + 1]
    if first is None:
        first = selection.first_row_wanted(t_ns)
    keep[starts[first[which[starts]]]] = True
    iv = cols.values["mark_iv"][rows]
    cand = np.flatnonzero(np.isfinite(iv) & (dte > 0))
    if len(cand):
        grp = which[cand]
        gap = np.abs(dte[cand] - selection.atm_dte)
        near = _group_min(grp, gap)
        cand, grp = cand[near], grp[near]
        strike = cols.values["strike"][rows[cand]]
        money = np.abs(strike / cols.values["underlying_price"][rows[cand]] - 1.0)
        best = _group_min(grp, money) | np.isnan(money)
        keep[cand[best]] = True
    return keep


def atm_needs_lower(
    cols: ChainColumns,
    rows: np.ndarray,
    which: np.ndarray,
    t_ns: np.ndarray,
    atm_dte: float,
    floor: float,
) -> np.ndarray:
    """Per query: whether the ATM rule may pick an expiry of days to expiry <= `floor` at t.

    For a scan that left out rows of at most `floor` days to expiry at their own `as_of`
    (so at most `floor` at any later t). A row with more than `floor` days at t is exact: no
    later row of its instrument can have been left out. When the nearest `atm_dte` of those
    rows (usable IV, days > 0) is strictly nearer than `floor` itself, no left-out expiry can
    be as near, so the rule's pick is among them; otherwise (a tie included, or no such row)
    the query needs the left-out rows.
    """
    best = np.full(len(t_ns), np.inf)
    if len(rows):
        dte = (cols.expiry[rows] - t_ns[which]) / (86400.0 * 1e9)
        ok = np.isfinite(cols.values["mark_iv"][rows]) & (dte > 0) & (dte > floor)
        np.minimum.at(best, which[ok], np.abs(dte[ok] - atm_dte))
    return ~(best < atm_dte - floor)


def _group_min(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Entries equal to the minimum of their group (`group` sorted ascending; NaN poisons it)."""
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    ids = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(group)]))
    return value == np.minimum.reduceat(value, starts)[ids]
