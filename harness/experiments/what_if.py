"""What if I sold this call here? One hold-to-expiry covered call, priced and settled by the engine."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from harness.experiments.config import MarketConfig
from harness.experiments.markets import build_market
from harness.instruments import parse_instrument_name
from harness.simulator import CoveredCallSimulator
from harness.timestamps import TimestampLike, to_utc
from harness.types import CallSimulationConfig, FillModel, Timeframe

PATH_ROWS = 12  # rows of the compact path table (plus the expiry row)


@dataclass(frozen=True)
class WhatIf:
    """The outcome of selling one call at `as_of` and holding it to expiry (USD unless `_coin`)."""

    underlying: str
    as_of: pd.Timestamp
    instrument_name: str
    strike: float
    expiry: pd.Timestamp
    dte_days: float
    delta: float
    mark_iv: float
    size: float  # coins covered
    spot_at_sale: float
    premium_usd: float  # size x fill price
    open_fee_usd: float
    delivery_fee_usd: float
    settlement_price: float
    payoff_usd: float
    pnl_vs_hodl_usd: float
    pnl_vs_hodl_coin: float
    max_drawdown_pct: float  # of the covered position during the trade
    path: pd.DataFrame  # compact: time -> spot, call_mark, pnl_vs_hodl, covered_value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form; the path as a list of rows with ISO times."""
        d = asdict(self)
        d["as_of"] = self.as_of.isoformat()
        d["expiry"] = self.expiry.isoformat()
        d["path"] = [
            {"time": t.isoformat(), **{k: float(v) for k, v in row.items()}}
            for t, row in self.path.iterrows()
        ]
        return d


def _compact(path: pd.DataFrame, rows: int = PATH_ROWS) -> pd.DataFrame:
    """About `rows` evenly spaced rows of the path plus its last (expiry) row."""
    if len(path) <= rows + 1:
        return path
    step = math.ceil((len(path) - 1) / rows)
    keep = [*range(0, len(path) - 1, step), len(path) - 1]
    return path.iloc[keep]


def what_if(
    underlying: str,
    as_of: TimestampLike,
    *,
    instrument: str | None = None,
    delta: float = 0.25,
    dte: float = 7.0,
    size: float = 1.0,
    market: MarketConfig | None = None,
    timeframe: Timeframe = "1h",
    fill: FillModel = "bid",
) -> WhatIf:
    """Sell `size` coins of `instrument` (or the call nearest `delta`, then `dte`) at `as_of`.

    The call must pass the engine's liquidity gates at `as_of`; the trade is booked, settled
    and marked exactly as in a replay. Raises ValueError with the reason otherwise.
    """
    t = to_utc(as_of)
    u = underlying.upper()
    source = build_market(market or MarketConfig(), timeframe)
    if instrument is not None:
        spec = parse_instrument_name(instrument)
        if spec.kind != "call" or spec.underlying.upper() != u:
            raise ValueError(f"{instrument} is not a {u} call")
        days = (spec.expiry - t) / pd.Timedelta(days=1)
        if days <= 0:
            raise ValueError(f"{instrument} expired before {t.isoformat()}")
        band = dict(target_dte=days, dte_tolerance=0.01, target_delta=0.5, delta_tolerance=1.0)
        end = spec.expiry
    else:
        band = dict(target_dte=dte, dte_tolerance=2.0, target_delta=delta, delta_tolerance=0.10)
        end = t + pd.Timedelta(days=dte + 2.0)
    cfg = CallSimulationConfig(
        underlying=u,
        start=t,
        end=end,
        timeframe=timeframe,
        decision_interval_bars=1,
        initial_spot_position=size,
        fill=fill,
        **band,
    )
    sim = CoveredCallSimulator(source, cfg)
    if t not in sim.decision_times():
        raise ValueError(f"{t.isoformat()} is not on the {timeframe} bar grid")
    if instrument is not None:
        try:
            trade = sim.simulate_call(t, instrument, size)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
    else:
        found = sim.simulate_single_call(t, size)
        if found is None:
            raise ValueError(sim.last_no_trade_reason or f"no call offered at {t.isoformat()}")
        trade = found
    return WhatIf(
        underlying=u,
        as_of=t,
        instrument_name=trade.instrument_name,
        strike=trade.strike,
        expiry=trade.expiry,
        dte_days=(trade.expiry - t) / pd.Timedelta(days=1),
        delta=trade.open_delta,
        mark_iv=trade.open_iv,
        size=size,
        spot_at_sale=trade.open_underlying_price,
        premium_usd=trade.premium_usd,
        open_fee_usd=trade.open_fee_usd,
        delivery_fee_usd=trade.close_fee_usd,
        settlement_price=float(trade.settlement_price),  # type: ignore[arg-type]
        payoff_usd=trade.payoff_usd,
        pnl_vs_hodl_usd=trade.pnl_vs_hodl,
        pnl_vs_hodl_coin=trade.pnl_coin,
        max_drawdown_pct=trade.max_drawdown_pct,
        path=_compact(sim.trade_path(trade)),
    )
