"""Each portfolio metric against its textbook definition on a known series (plain Python)."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from harness.engine.metrics import max_drawdown_pct, portfolio_metrics
from harness.types import SimulatedTrade

HOUR = pd.Timedelta(hours=1)
IDX = pd.date_range("2024-01-01", periods=8, freq="4h", tz="UTC", name="timestamp")
EQUITY = [100.0, 102.0, 101.0, 104.0, 98.0, 99.0, 103.0, 105.0]
HODL = [100.0, 103.0, 100.0, 106.0, 97.0, 96.0, 102.0, 104.0]
SPOT = [50.0, 51.5, 50.0, 53.0, 48.5, 48.0, 51.0, 52.0]


def _trade(premium: float, fees: float, payoff: float, itm: bool) -> SimulatedTrade:
    t0 = IDX[0]
    # Settled at 52 with the strike placed so that the payoff is max(52 - K, 0).
    strike = 52.0 - payoff if payoff > 0 else 60.0
    return SimulatedTrade(
        instrument_name="BTC-X-C",
        underlying="BTC",
        size=1.0,
        open_time=t0,
        close_time=IDX[-1],
        open_price=premium,
        close_price=payoff,
        pnl=0.0,
        pnl_vs_hodl=premium - fees - payoff,
        max_drawdown_pct=0.0,
        premium_usd=premium,
        open_fee_usd=fees / 2,
        close_fee_usd=fees / 2,
        payoff_usd=payoff,
        in_the_money=itm,
        strike=strike,
        close_underlying_price=52.0,
    )


TRADES = [_trade(5.0, 1.0, 0.0, False), _trade(4.0, 1.0, 6.0, True), _trade(3.0, 0.5, 1.0, True)]


def _metrics() -> dict[str, float]:
    return portfolio_metrics(
        pd.Series(EQUITY, index=IDX),
        pd.Series(HODL, index=IDX),
        pd.Series(SPOT, index=IDX),
        TRADES,
        pd.Timedelta(hours=4),
    )


def _textbook_drawdown(values: list[float]) -> float:
    peak, worst = values[0], 0.0
    for v in values:
        peak = max(peak, v)
        worst = max(worst, (peak - v) / peak)
    return worst * 100.0


def test_sharpe_and_sortino_are_annualised_with_sqrt_of_periods() -> None:
    # Measured from the coins held at the start (HODL's first value), then bar by bar.
    curve = [HODL[0], *EQUITY]
    rets = [curve[i] / curve[i - 1] - 1.0 for i in range(1, len(curve))]
    periods = 365 * 6  # 4-hour bars in a 365-day year
    mean = statistics.fmean(rets)
    sharpe = mean / statistics.pstdev(rets) * math.sqrt(periods)
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in rets) / len(rets))
    sortino = mean / downside * math.sqrt(periods)
    m = _metrics()
    assert m["sharpe"] == pytest.approx(sharpe, rel=1e-9)
    assert m["sortino"] == pytest.approx(sortino, rel=1e-9)
    # the magnitude a user sees: a few units, not hundreds
    assert 1.0 < m["sharpe"] < 100.0


def test_returns_pnl_and_drawdown_match_their_definitions() -> None:
    m = _metrics()
    days = 28 / 24  # 7 bars of 4 hours
    total = EQUITY[-1] / EQUITY[0] - 1.0
    assert m["final_equity_usd"] == 105.0
    assert m["final_pnl_usd"] == 5.0
    assert m["final_pnl_coin"] == pytest.approx(105.0 / 52.0 - 100.0 / 50.0)
    assert m["pnl_vs_hodl_usd"] == pytest.approx(1.0)
    assert m["hodl_pnl_usd"] == pytest.approx(4.0)
    assert m["total_return_pct"] == pytest.approx(5.0)
    assert m["annualized_return_pct"] == pytest.approx(((1 + total) ** (365 / days) - 1) * 100)
    assert m["hodl_return_pct"] == pytest.approx(4.0)
    # equity: peak 104 -> trough 98; hodl: peak 106 -> trough 96
    assert m["max_drawdown_pct"] == pytest.approx(_textbook_drawdown(EQUITY))
    assert m["max_drawdown_pct"] == pytest.approx(6 / 104 * 100)
    assert m["hodl_max_drawdown_pct"] == pytest.approx(10 / 106 * 100)


def test_trade_statistics_count_and_sum_trades() -> None:
    m = _metrics()
    assert m["n_trades"] == 3.0
    assert m["itm_share"] == pytest.approx(2 / 3)
    # pnl_vs_hodl: +4, -3, +1.5 -> two winners
    assert m["win_rate_vs_hodl"] == pytest.approx(2 / 3)
    assert m["premium_collected_usd"] == pytest.approx(12.0)
    assert m["fees_paid_usd"] == pytest.approx(2.5)
    assert m["upside_given_up_usd"] == pytest.approx(7.0)


def test_flat_curve_and_no_trades() -> None:
    flat = pd.Series([100.0] * 8, index=IDX)
    m = portfolio_metrics(flat, flat, pd.Series(SPOT, index=IDX), [], HOUR)
    # No variation and no trades: the ratios and trade shares are undefined (NaN), never 0.
    assert math.isnan(m["sharpe"]) and math.isnan(m["sortino"]) and m["max_drawdown_pct"] == 0.0
    assert m["n_trades"] == 0.0
    assert math.isnan(m["itm_share"]) and math.isnan(m["win_rate_vs_hodl"])
    assert max_drawdown_pct([]) == 0.0
    # a total loss annualises to -100%
    ruin = pd.Series([100.0, 50.0, 0.0], index=IDX[:3])
    r = portfolio_metrics(ruin, ruin, pd.Series(SPOT[:3], index=IDX[:3]), [], HOUR)
    assert r["annualized_return_pct"] == -100.0
    assert r["max_drawdown_pct"] == pytest.approx(100.0)


def test_annualized_return_over_a_quarter() -> None:
    idx = pd.date_range("2024-01-01", periods=91, freq="1D", tz="UTC")
    eq = pd.Series(np_linspace(100.0, 110.0, 91), index=idx)
    m = portfolio_metrics(eq, eq, eq / 100.0, [], pd.Timedelta(days=1))
    # 10% over 90 days, compounded to a 365-day year
    assert m["annualized_return_pct"] == pytest.approx((1.1 ** (365 / 90) - 1) * 100, rel=1e-12)


def np_linspace(a: float, b: float, n: int) -> list[float]:
    return [a + (b - a) * k / (n - 1) for k in range(n)]


def test_short_and_degenerate_curves() -> None:
    spot = pd.Series(SPOT, index=IDX)
    empty = pd.Series([], index=IDX[:0], dtype=float)
    assert portfolio_metrics(empty, empty, empty, [], HOUR) == {}
    one = pd.Series([100.0], index=IDX[:1])
    m1 = portfolio_metrics(one, one, spot[:1], [], HOUR)
    assert m1["final_pnl_usd"] == 0.0 and math.isnan(m1["sharpe"]) and math.isnan(m1["sortino"])
    # one falling bar after the start: returns [0, -1%] from the coins held at the start
    two = pd.Series([100.0, 99.0], index=IDX[:2])
    m2 = portfolio_metrics(two, two, spot[:2], [], pd.Timedelta(hours=4))
    rets = [0.0, -0.01]
    mean = statistics.fmean(rets)
    assert m2["sharpe"] == pytest.approx(mean / statistics.pstdev(rets) * math.sqrt(365 * 6))
    downside = math.sqrt(sum(r * r for r in rets) / 2)
    assert m2["sortino"] == pytest.approx(mean / downside * math.sqrt(365 * 6))
    # equity below zero: the annualized figure is a total loss, not a complex number
    days = pd.date_range("2024-01-01", periods=3, freq="1D", tz="UTC")  # 365 / 2: fractional
    neg = pd.Series([100.0, 20.0, -50.0], index=days)
    m3 = portfolio_metrics(neg, neg, pd.Series(SPOT[:3], index=days), [], pd.Timedelta(days=1))
    assert m3["annualized_return_pct"] == -100.0


def test_returns_are_measured_from_the_coins_held_before_the_first_sale() -> None:
    """A call sold on the first bar costs its spread and fee at once: equity starts below HODL,
    and the return counts that cost (from HODL's first value, not equity's)."""
    idx = pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC")
    hodl = pd.Series([100.0, 105.0, 110.0], index=idx)
    equity = pd.Series([99.0, 104.0, 108.0], index=idx)
    spot = pd.Series([50.0, 52.5, 55.0], index=idx)
    m = portfolio_metrics(equity, hodl, spot, [], pd.Timedelta(days=1))
    assert m["total_return_pct"] == pytest.approx(8.0, rel=1e-12)  # 108 / 100 - 1
    assert m["final_pnl_usd"] == pytest.approx(8.0, rel=1e-12)
    assert m["annualized_return_pct"] == pytest.approx((1.08 ** (365 / 2) - 1) * 100, rel=1e-12)


def test_a_nan_last_equity_point_makes_the_returns_nan_not_an_error() -> None:
    """The docstring's rule: every figure a NaN equity point touches is NaN, never 0 or a crash."""
    days = pd.date_range("2024-01-01", periods=3, freq="1D", tz="UTC")
    eq = pd.Series([100.0, 101.0, float("nan")], index=days)
    hodl = pd.Series([100.0, 101.0, 102.0], index=days)
    m = portfolio_metrics(eq, hodl, pd.Series(SPOT[:3], index=days), [], pd.Timedelta(days=1))
    assert math.isnan(m["annualized_return_pct"])
