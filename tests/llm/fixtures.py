"""Small deterministic decision states and call candidates built directly from the types."""

from __future__ import annotations

import math

import pandas as pd

from harness.state import DecisionState, PositionState
from harness.types import CallCandidate

START = pd.Timestamp("2024-03-01 08:00", tz="UTC")
SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdefXYZ"
KEY_ENV = "HARNESS_LLM_TEST_KEY"
EVERY_4H = pd.Timedelta(hours=4)


def make_state(
    time: pd.Timestamp = START,
    spot: float = 60_000.0,
    *,
    cash_usd: float = 0.0,
    coins_held: float = 1.0,
    position: PositionState | None = None,
) -> DecisionState:
    """A state with plausible features (returns, vols as fractions)."""
    phase = (time - START) / pd.Timedelta(hours=4)
    return DecisionState(
        time=time.to_pydatetime(),
        underlying="BTC",
        spot=spot,
        return_1d=0.01 * math.sin(phase),
        return_7d=0.03 * math.cos(phase / 7),
        realized_vol_7d=0.45,
        realized_vol_30d=0.50,
        atm_iv=0.55,
        iv_rv_spread=0.10,
        coins_held=coins_held,
        cash_usd=cash_usd,
        position=position,
    )


def make_candidates(state: DecisionState, n: int = 3, dte_days: float = 7.0) -> list[CallCandidate]:
    """`n` calls a week out, strikes 5%, 10%, ... above spot, named like Deribit instruments."""
    as_of = pd.Timestamp(state.time)
    expiry = (as_of + pd.Timedelta(days=dte_days)).normalize() + pd.Timedelta(hours=8)
    dte = (expiry - as_of).total_seconds() / 86400
    out = []
    for i in range(n):
        strike = round(state.spot * (1.05 + 0.05 * i) / 1000) * 1000
        bid = state.spot * (0.010 - 0.003 * i)
        premium_pct = bid / state.spot * 100
        out.append(
            CallCandidate(
                instrument_name=f"BTC-{expiry.strftime('%d%b%y').upper()}-{int(strike)}-C",
                underlying="BTC",
                kind="call",
                strike=float(strike),
                expiry=expiry,
                as_of=as_of,
                underlying_price=state.spot,
                mark_price=bid * 1.05,
                bid_price=bid,
                ask_price=bid * 1.1,
                mark_iv=0.55 + 0.02 * i,
                delta=0.30 - 0.08 * i,
                gamma=0.0001,
                vega=20.0,
                theta=-30.0,
                dte_days=dte,
                premium_usd=bid,
                premium_pct=premium_pct,
                annualized_yield_pct=premium_pct * 365 / dte,
                strike_distance_pct=(strike / state.spot - 1) * 100,
                breakeven=strike + bid,
            )
        )
    return out


def decisions(
    n: int,
    *,
    start: pd.Timestamp = START,
    step: pd.Timedelta = EVERY_4H,
    n_candidates: int = 3,
) -> list[tuple[DecisionState, list[CallCandidate]]]:
    """`n` consecutive decisions every `step` with a gently moving spot."""
    out = []
    for i in range(n):
        state = make_state(start + i * step, spot=60_000.0 * (1 + 0.02 * math.sin(i / 10)))
        out.append((state, make_candidates(state, n_candidates)))
    return out
