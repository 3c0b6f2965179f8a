"""Vectorized covered-call accounting: fills, Deribit fees, settlement payoff, PnL, drawdown.

All prices are USD per 1 coin of underlying; multiply by the size in coins for amounts.
"""

from __future__ import annotations

import numpy as np

from harness.types import FillModel


def sale_price(
    bid: np.ndarray, ask: np.ndarray, mark: np.ndarray, fill: FillModel, slippage_bps: float
) -> np.ndarray:
    """Price a seller receives per coin under `fill`, less slippage (NaN when unfillable)."""
    if fill == "bid":
        base = bid
    elif fill == "mid":
        base = (bid + ask) / 2.0
    else:
        base = mark
    return np.asarray(base, dtype=float) * (1.0 - slippage_bps / 1e4)


def purchase_price(
    bid: np.ndarray, ask: np.ndarray, mark: np.ndarray, fill: FillModel, slippage_bps: float
) -> np.ndarray:
    """Price a buyer pays per coin (buying back a short call): ask / mid / mark plus slippage."""
    if fill == "bid":
        base = ask
    elif fill == "mid":
        base = (bid + ask) / 2.0
    else:
        base = mark
    return np.asarray(base, dtype=float) * (1.0 + slippage_bps / 1e4)


def trading_fee(
    underlying_price: np.ndarray, option_price: np.ndarray, fee_rate: float, cap_fraction: float
) -> np.ndarray:
    """Deribit option trading fee per coin in USD: min(fee_rate * S, cap * option price)."""
    return np.minimum(
        fee_rate * np.asarray(underlying_price), cap_fraction * np.asarray(option_price)
    )


def delivery_fee(
    settlement_price: np.ndarray, payoff: np.ndarray, fee_rate: float, cap_fraction: float
) -> np.ndarray:
    """Deribit delivery fee per coin in USD for ITM options: min(rate * S_T, cap * payoff), 0 if OTM."""
    payoff = np.asarray(payoff, dtype=float)
    fee = np.minimum(fee_rate * np.asarray(settlement_price), cap_fraction * payoff)
    return np.where(payoff > 0, fee, 0.0)


def call_payoff(settlement_price: np.ndarray, strike: np.ndarray) -> np.ndarray:
    """Cash-settled call value at expiry per coin in USD: max(S_T - K, 0)."""
    return np.maximum(np.asarray(settlement_price) - np.asarray(strike), 0.0)


def covered_drawdown_pct(values: np.ndarray) -> np.ndarray:
    """Worst peak-to-trough fall, in percent, of each row of `values` (NaN cells skipped)."""
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[None, :]
    peak = np.fmax.accumulate(v, axis=1)
    # a NaN cell gives a NaN fall (peak - NaN), so fmax skips it like the cell itself
    with np.errstate(invalid="ignore", divide="ignore"):
        dd = (peak - v) / peak
    worst = np.fmax.reduce(dd, axis=1) if v.shape[1] else np.full(v.shape[0], np.nan)
    return np.where(np.isnan(worst), 0.0, worst * 100.0)
