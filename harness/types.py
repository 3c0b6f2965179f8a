"""Core value types that cross module boundaries.

Units (see docs/conventions.md): option prices are USD per 1 unit of underlying, with the
coin price kept alongside (`*_coin`); implied vols are fractions (0.55 = 55%); sizes are
units of the underlying (1.0 = one BTC); timestamps are tz-aware UTC.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal, get_args

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.coins import coin
from harness.timestamps import to_utc

Timeframe = Literal["1m", "5m", "15m", "1h", "4h", "1d"]
TIMEFRAMES: tuple[str, ...] = get_args(Timeframe)
_TIMEFRAME_DELTAS = {
    "1m": pd.Timedelta(minutes=1),
    "5m": pd.Timedelta(minutes=5),
    "15m": pd.Timedelta(minutes=15),
    "1h": pd.Timedelta(hours=1),
    "4h": pd.Timedelta(hours=4),
    "1d": pd.Timedelta(days=1),
}

OptionKind = Literal["call", "put"]
FillModel = Literal["bid", "mid", "mark"]


def timeframe_delta(timeframe: str) -> pd.Timedelta:
    """Return the length of one bar of `timeframe`; raise ValueError for unsupported ones."""
    try:
        return _TIMEFRAME_DELTAS[timeframe]
    except (KeyError, TypeError):
        raise ValueError(
            f"unsupported timeframe {timeframe!r}; use one of {', '.join(TIMEFRAMES)}"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class OptionSnapshot:
    """One option's quote at the instant `as_of` (prices in USD per 1 underlying)."""

    instrument_name: str
    underlying: str
    kind: OptionKind
    strike: float
    expiry: pd.Timestamp
    as_of: pd.Timestamp
    underlying_price: float
    mark_price: float
    bid_price: float | None
    ask_price: float | None
    mark_iv: float
    delta: float
    gamma: float
    vega: float
    theta: float
    open_interest: float = 0.0
    mark_price_coin: float | None = None
    bid_price_coin: float | None = None
    ask_price_coin: float | None = None
    bid_iv: float | None = None
    ask_iv: float | None = None

    @property
    def dte(self) -> float:
        """Days to expiry from `as_of` (calendar days, fractional)."""
        return (self.expiry - self.as_of).total_seconds() / 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCandidate(OptionSnapshot):
    """A call offered to a policy, with the seller's economics at the configured fill.

    `premium_usd` is what selling one unit of underlying's worth would collect (USD per coin)
    at the fill model and slippage, before fees.
    """

    dte_days: float
    premium_usd: float
    premium_pct: float  # premium as % of spot
    annualized_yield_pct: float  # premium_pct scaled to a 365-day year
    strike_distance_pct: float  # (strike / spot - 1) * 100
    breakeven: float  # strike + premium: the spot above which the call loses vs HODL
    # History hint (harness.engine.hints): mean realised bps of similar settled past calls
    hist_reward: float | None = None
    hist_count: int = 0


def call_candidates(columns: dict[str, Sequence[Any]]) -> list[CallCandidate]:
    """Many `CallCandidate`s from columns (field name -> one value per candidate).

    The same objects as `CallCandidate(**row)` per row (the class has no validation or
    `__post_init__`), built field by field over all candidates: a frozen dataclass's
    `__init__` costs ~5 us per candidate, a simulator builds thousands per run. Every field
    must be given, each column as long as the others.
    """
    names = [f.name for f in fields(CallCandidate)]
    if set(columns) != set(names):
        missing, extra = set(names) - set(columns), set(columns) - set(names)
        raise ValueError(
            f"call_candidates: missing fields {sorted(missing)}, unknown {sorted(extra)}"
        )
    n = len(columns[names[0]])
    if any(len(columns[k]) != n for k in names):
        raise ValueError("call_candidates: columns differ in length")
    made = [object.__new__(CallCandidate) for _ in range(n)]
    for name in names:
        # the slot's own setter: a frozen dataclass's __setattr__ refuses, as it should
        # for everyone else; map() runs it over the column without Python bytecode per value
        deque(map(getattr(CallCandidate, name).__set__, made, columns[name]), maxlen=0)
    return made


class CallSimulationConfig(BaseModel):
    """Everything that defines a covered-call replay; invalid values raise naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    underlying: str = Field("BTC", min_length=1, description="Underlying coin, e.g. BTC or ETH.")
    start: datetime = Field(description="First decision time (UTC, inclusive).")
    end: datetime = Field(description="End of the replay (UTC, inclusive).")
    timeframe: Timeframe = Field("1h", description="Bar length for marking and decisions.")
    decision_interval_bars: int = Field(4, ge=1, le=100_000)
    initial_spot_position: float = Field(1.0, gt=0, description="Coins held at start.")
    contract_size: float | None = Field(
        None,
        gt=0,
        description=(
            "Lot size in coins: sold calls are whole lots. Default: the coin's smallest "
            "tradable amount on Deribit (harness.coins: BTC 0.1, ETH 1, SOL 10)."
        ),
    )
    call_size_fraction: float = Field(
        1.0, gt=0, le=1, description="Share of the coins held that each sold call covers."
    )
    fee_rate: float | None = Field(
        None,
        ge=0,
        le=0.01,
        description=(
            "Trading fee per coin as a fraction of the underlying. Default: the coin's Deribit "
            "taker rate (0.0003 for BTC/ETH, 0.0005 for USDC linear options)."
        ),
    )
    fee_cap_fraction: float = Field(
        0.125,
        ge=0,
        le=1,
        description="Trading and delivery fees are capped at this share of the option price.",
    )
    delivery_fee_rate: float | None = Field(
        None,
        ge=0,
        le=0.01,
        description=(
            "Delivery fee of ITM options at expiry, fraction of the underlying. Default: the "
            "coin's rate (0.00015 for BTC/ETH)."
        ),
    )
    risk_free_rate: float = Field(
        0.0,
        description="r in Black-76. Deribit prices with r = 0 and so does the harness: only 0.",
    )
    target_dte: float = Field(7.0, gt=0, le=730, description="Target days to expiry.")
    dte_tolerance: float = Field(2.0, ge=0, le=365)
    target_delta: float = Field(0.25, gt=0, lt=1)
    delta_tolerance: float = Field(0.10, ge=0, le=1)
    hold_to_expiry: bool = Field(
        True,
        description="True: hold each call to expiry. False: buy it back at the next decision time.",
    )
    fill: FillModel = Field("bid", description="Price a sale fills at: bid (default), mid or mark.")
    slippage_bps: float = Field(
        0.0, ge=0, le=10_000, description="Extra cost, bps of the fill price."
    )
    min_bid_usd: float = Field(0.0, ge=0, description="Liquidity gate: bid must exceed this (USD).")
    max_spread_pct: float = Field(
        100.0, gt=0, description="Liquidity gate: (ask - bid) / mid * 100 must not exceed this."
    )
    require_bid: bool = Field(True, description="Liquidity gate: a candidate must have a bid.")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _utc(cls, value: object) -> datetime:
        return to_utc(value).to_pydatetime()  # type: ignore[arg-type]

    @field_validator("underlying")
    @classmethod
    def _upper(cls, value: str) -> str:
        value = value.upper()
        coin(value)  # an unknown coin is an error here, naming the known ones
        return value

    @field_validator("risk_free_rate")
    @classmethod
    def _zero_rate(cls, value: float) -> float:
        # Every price, IV and greek in the harness is Black-76 with r = 0 (Deribit's convention);
        # accepting another r here would silently change nothing.
        if value != 0.0:
            raise ValueError(
                "only 0 is supported: Deribit prices options with r = 0 and the harness "
                "computes every price, IV and greek that way"
            )
        return value

    @model_validator(mode="after")
    def _coin_defaults(self) -> CallSimulationConfig:
        c = coin(self.underlying)
        defaults = {
            "contract_size": c.lot_size,
            "fee_rate": c.fees.taker_rate,
            "delivery_fee_rate": c.fees.delivery_rate,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # frozen model: fill once at validation
        if self.lots < 1:
            raise ValueError(
                f"the call size {self.initial_spot_position * self.call_size_fraction:g} "
                f"{self.underlying} (initial_spot_position x call_size_fraction) is below one lot "
                f"of {self.contract_size:g} {self.underlying} (contract_size)"
            )
        return self

    @property
    def lots(self) -> int:
        """Whole lots of `contract_size` coins that one sold call covers (rounded down)."""
        wanted = self.initial_spot_position * self.call_size_fraction
        # The small epsilon keeps 0.3 / 0.1 = 2.9999999999999996 at 3 lots.
        return math.floor(wanted / float(self.contract_size) + 1e-9)  # filled by validation

    @property
    def call_size(self) -> float:
        """Coins covered by each sold call: whole lots of `contract_size`."""
        return self.lots * float(self.contract_size)

    @model_validator(mode="after")
    def _check_range(self) -> CallSimulationConfig:
        if self.end <= self.start:
            raise ValueError(
                f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})"
            )
        return self

    @property
    def bar(self) -> pd.Timedelta:
        """Length of one bar."""
        return timeframe_delta(self.timeframe)

    @property
    def start_ts(self) -> pd.Timestamp:
        """`start` as a UTC pandas Timestamp."""
        return to_utc(self.start)

    @property
    def end_ts(self) -> pd.Timestamp:
        """`end` as a UTC pandas Timestamp."""
        return to_utc(self.end)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedTrade:
    """One short call held against coins, from sale to settlement (USD unless `_coin`)."""

    instrument_name: str
    underlying: str
    side: Literal["SHORT_CALL"] = "SHORT_CALL"
    size: float  # coins covered (contracts * contract_size)
    open_time: pd.Timestamp
    close_time: pd.Timestamp
    open_price: float  # fill price, USD per coin
    close_price: float  # value per coin at close: payoff at settlement, or buy-back price
    pnl: float  # covered position (size coins + short call) PnL in USD
    pnl_vs_hodl: float  # the option leg alone: covered PnL minus holding `size` coins, USD
    max_drawdown_pct: float  # worst peak-to-trough of the covered position value, percent
    notes: str = ""
    strike: float = float("nan")
    expiry: pd.Timestamp | None = None
    open_underlying_price: float = float("nan")
    close_underlying_price: float = float("nan")  # settlement price at expiry, or spot at buy-back
    settlement_price: float | None = None
    in_the_money: bool = False
    premium_usd: float = 0.0  # size * open_price
    open_fee_usd: float = 0.0
    close_fee_usd: float = 0.0  # delivery fee at expiry, or trading fee of a buy-back
    payoff_usd: float = 0.0  # size * close_price
    pnl_coin: float = 0.0  # option leg in coin, each cash flow at the price of its own moment
    open_mark_price: float = float("nan")
    open_delta: float = float("nan")
    open_iv: float = float("nan")

    @property
    def fees_usd(self) -> float:
        """All fees of the trade in USD."""
        return self.open_fee_usd + self.close_fee_usd


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRecord:
    """What happened at one decision time of a replay."""

    decision_time: pd.Timestamp
    candidate_names: tuple[str, ...]
    chosen: str | None  # instrument sold, or None
    asked: bool  # whether the policy was asked (False when a call was already open)
    note: str = ""
    spot_stale: bool = False  # the last spot bar was older than the decision (a data gap)


@dataclass(frozen=True, kw_only=True)
class SimulationResult:
    """A policy's full portfolio replay: trades, per-bar equity (USD) and metrics."""

    trades: list[SimulatedTrade]
    equity_curve: pd.Series  # time -> portfolio equity, USD
    equity_vs_hodl: pd.Series  # time -> equity minus HODL equity, USD
    metrics: dict[str, float]
    hodl_curve: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    decisions: list[DecisionRecord] = field(default_factory=list)
    policy_name: str = ""
