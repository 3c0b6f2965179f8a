"""The point-in-time state a policy sees at a decision: market features and its position."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class PositionState(BaseModel):
    """The short call currently open against the coins, marked at the decision time (USD)."""

    model_config = ConfigDict(frozen=True)

    instrument_name: str
    strike: float
    expiry: datetime
    size: float  # coins covered
    open_time: datetime
    open_price: float  # fill price, USD per coin
    mark_price: float  # current mark, USD per coin
    unrealized_pnl: float  # size * (open_price - mark_price) - open fee, USD
    dte_days: float


class DecisionState(BaseModel):
    """Read-only view of what is knowable at `time`; nothing in it depends on later data.

    Returns are simple returns as fractions (0.02 = +2%); vols are annualized fractions;
    `iv_rv_spread` = `atm_iv` - `realized_vol_7d`. A feature is None when there is not
    enough history before `time` to compute it. `spot_stale` is True when the last spot bar
    is older than `time` (a gap in the data): `spot` is then the chain's underlying price
    when the chain quoted at `time` is fresher, and `spot_as_of` says when `spot` was seen.
    """

    model_config = ConfigDict(frozen=True)

    time: datetime
    underlying: str
    spot: float
    return_1d: float | None
    return_7d: float | None
    realized_vol_7d: float | None
    realized_vol_30d: float | None
    atm_iv: float | None  # ATM implied vol of the expiry nearest target_dte
    iv_rv_spread: float | None
    spot_as_of: datetime | None = None  # when `spot` was observed (the bar's or chain's time)
    spot_stale: bool = False  # the last spot bar is older than `time`
    coins_held: float
    cash_usd: float  # premiums collected minus fees and settlements so far
    position: PositionState | None = None

    def __getitem__(self, key: str) -> Any:
        """Mapping-style read access: ``state["spot"]``."""
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping-style `get`."""
        return getattr(self, key, default) if key in type(self).model_fields else default
