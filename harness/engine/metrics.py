"""Portfolio metrics of a replay: PnL, returns, risk ratios, drawdown and trade statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.types import SimulatedTrade


def max_drawdown_pct(curve: pd.Series | np.ndarray) -> float:
    """Largest peak-to-trough fall of an equity curve, in percent (0 for a rising curve).

    NaN when any point of the curve is NaN: a hole in the curve is never read as no loss.
    """
    v = np.asarray(curve, dtype=float)
    if len(v) == 0:
        return 0.0
    if not np.isfinite(v).all():
        return float("nan")
    peak = np.maximum.accumulate(v)
    return float(np.max((peak - v) / peak) * 100.0)


def _ratio(mean: float, dev: float, periods: float) -> float:
    """Annualized mean/deviation; NaN when undefined (no variation, or NaN inputs), never 0."""
    if not (np.isfinite(mean) and np.isfinite(dev)) or dev <= 0:
        return float("nan")
    return float(mean / dev * np.sqrt(periods))


def _share(flags: list[bool]) -> float:
    """Share of True flags; NaN (undefined) for an empty list."""
    return float(np.mean(flags)) if flags else float("nan")


def upside_given_up(trades: Sequence[SimulatedTrade]) -> float:
    """USD the short calls took from the coins' upside: size x max(S_close - K, 0) per trade.

    S_close is the settlement price for a call held to expiry (so this equals its payoff) and
    the spot when a call was bought back: only the intrinsic value counts, not the time value
    a buy-back also pays (that is part of the trade's cost, in `pnl_vs_hodl`).
    """
    return float(sum(t.size * max(t.close_underlying_price - t.strike, 0.0) for t in trades))


def portfolio_metrics(
    equity: pd.Series,
    hodl: pd.Series,
    spot: pd.Series,
    trades: Sequence[SimulatedTrade],
    bar: pd.Timedelta,
) -> dict[str, float]:
    """Metrics of a covered-call replay (USD unless named `_coin`; `_pct` in percent).

    Everything is measured from the coins held at the start (`hodl` at the first bar), so a
    call sold on the first bar counts its spread and fee. Sharpe and Sortino are annualized
    from per-bar equity returns (365-day year, zero risk-free rate); `final_pnl_coin` is the
    change of the portfolio's worth in coins. Undefined figures are NaN, never 0: Sharpe and
    Sortino without variation, `itm_share` and `win_rate_vs_hodl` without trades, and every
    figure a NaN equity point touches.
    """
    h = hodl.to_numpy(dtype=float)
    s = spot.to_numpy(dtype=float)
    if len(equity) == 0:
        return {}
    # the start: the coins alone, before anything was sold on the first bar
    e = np.r_[h[0], equity.to_numpy(dtype=float)]
    days = max((equity.index[-1] - equity.index[0]) / pd.Timedelta(days=1), 1e-9)
    total_return = e[-1] / e[0] - 1.0
    rets = np.diff(e) / e[:-1]
    periods = pd.Timedelta(days=365) / bar
    downside = np.minimum(rets, 0.0)
    down_dev = float(np.sqrt(np.mean(downside**2)))
    if not np.isfinite(total_return):
        annualized = float("nan")
    elif total_return > -1:
        annualized = float(((1.0 + total_return) ** (365.0 / days) - 1.0) * 100.0)
    else:
        annualized = -100.0
    return {
        "final_equity_usd": float(e[-1]),
        "final_pnl_usd": float(e[-1] - e[0]),
        "final_pnl_coin": float(e[-1] / s[-1] - e[0] / s[0]),
        "pnl_vs_hodl_usd": float(e[-1] - h[-1]),
        "hodl_pnl_usd": float(h[-1] - h[0]),
        "total_return_pct": float(total_return * 100.0),
        "annualized_return_pct": annualized,
        "hodl_return_pct": float((h[-1] / h[0] - 1.0) * 100.0),
        "sharpe": _ratio(float(np.mean(rets)), float(np.std(rets)), periods),
        "sortino": _ratio(float(np.mean(rets)), down_dev, periods),
        "max_drawdown_pct": max_drawdown_pct(e),
        "hodl_max_drawdown_pct": max_drawdown_pct(h),
        "n_trades": float(len(trades)),
        "itm_share": _share([t.in_the_money for t in trades]),
        "win_rate_vs_hodl": _share([t.pnl_vs_hodl > 0 for t in trades]),
        "premium_collected_usd": float(sum(t.premium_usd for t in trades)),
        "fees_paid_usd": float(sum(t.fees_usd for t in trades)),
        "upside_given_up_usd": upside_given_up(trades),
    }
