"""Portfolio metrics of a replay: PnL, returns, risk ratios, drawdown and trade statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.types import SimulatedTrade


def max_drawdown_pct(curve: pd.Series | np.ndarray) -> float:
    """Largest peak-to-trough fall of an equity curve, in percent (0 for a rising curve)."""
    v = np.asarray(curve, dtype=float)
    if len(v) == 0:
        return 0.0
    peak = np.maximum.accumulate(v)
    return float(np.max((peak - v) / peak) * 100.0)


def _ratio(mean: float, dev: float, periods: float) -> float:
    return float(mean / dev * np.sqrt(periods)) if dev > 0 else 0.0


def portfolio_metrics(
    equity: pd.Series,
    hodl: pd.Series,
    spot: pd.Series,
    trades: Sequence[SimulatedTrade],
    bar: pd.Timedelta,
) -> dict[str, float]:
    """Metrics of a covered-call replay (USD unless named `_coin`; `_pct` in percent).

    Sharpe and Sortino are annualized from per-bar equity returns (365-day year, zero
    risk-free rate); `final_pnl_coin` is the change of the portfolio's worth in coins.
    """
    e = equity.to_numpy(dtype=float)
    h = hodl.to_numpy(dtype=float)
    s = spot.to_numpy(dtype=float)
    if len(e) == 0:
        return {}
    days = max((equity.index[-1] - equity.index[0]) / pd.Timedelta(days=1), 1e-9)
    total_return = e[-1] / e[0] - 1.0
    rets = np.diff(e) / e[:-1] if len(e) > 1 else np.array([0.0])
    periods = pd.Timedelta(days=365) / bar
    downside = np.minimum(rets, 0.0)
    down_dev = float(np.sqrt(np.mean(downside**2)))
    return {
        "final_equity_usd": float(e[-1]),
        "final_pnl_usd": float(e[-1] - e[0]),
        "final_pnl_coin": float(e[-1] / s[-1] - e[0] / s[0]),
        "pnl_vs_hodl_usd": float(e[-1] - h[-1]),
        "hodl_pnl_usd": float(h[-1] - h[0]),
        "total_return_pct": float(total_return * 100.0),
        "annualized_return_pct": float(((1.0 + total_return) ** (365.0 / days) - 1.0) * 100.0)
        if total_return > -1
        else -100.0,
        "hodl_return_pct": float((h[-1] / h[0] - 1.0) * 100.0),
        "sharpe": _ratio(float(np.mean(rets)), float(np.std(rets)), periods),
        "sortino": _ratio(float(np.mean(rets)), down_dev, periods),
        "max_drawdown_pct": max_drawdown_pct(e),
        "hodl_max_drawdown_pct": max_drawdown_pct(h),
        "n_trades": float(len(trades)),
        "itm_share": float(np.mean([t.in_the_money for t in trades])) if trades else 0.0,
        "win_rate_vs_hodl": float(np.mean([t.pnl_vs_hodl > 0 for t in trades])) if trades else 0.0,
        "premium_collected_usd": float(sum(t.premium_usd for t in trades)),
        "fees_paid_usd": float(sum(t.fees_usd for t in trades)),
        "upside_given_up_usd": float(sum(t.payoff_usd for t in trades)),
    }
