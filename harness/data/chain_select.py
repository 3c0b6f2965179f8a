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
    """

    min_dte: float
    max_dte: float
    min_delta: float
    max_delta: float
    atm_dte: float
    follow: bool = False


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
