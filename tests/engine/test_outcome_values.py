"""Fills, fees, payoff and drawdown on hand-worked numbers (each value computed in the comment)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.engine.outcomes import (
    call_payoff,
    covered_drawdown_pct,
    delivery_fee,
    purchase_price,
    sale_price,
    trading_fee,
)

BID, ASK, MARK = np.array([100.0, 40.0]), np.array([110.0, 50.0]), np.array([104.0, 46.0])


@pytest.mark.parametrize(
    ("fill", "sell", "buy"),
    [
        ("bid", [100.0, 40.0], [110.0, 50.0]),  # sell at the bid, buy back at the ask
        ("mid", [105.0, 45.0], [105.0, 45.0]),  # (bid + ask) / 2 both ways
        ("mark", [104.0, 46.0], [104.0, 46.0]),
    ],
)
def test_fills_by_hand(fill: str, sell: list[float], buy: list[float]) -> None:
    np.testing.assert_allclose(sale_price(BID, ASK, MARK, fill, 0.0), sell, rtol=1e-15)
    np.testing.assert_allclose(purchase_price(BID, ASK, MARK, fill, 0.0), buy, rtol=1e-15)
    # 50 bps of slippage: a seller gets 0.5% less, a buyer pays 0.5% more
    np.testing.assert_allclose(
        sale_price(BID, ASK, MARK, fill, 50.0), np.array(sell) * 0.995, rtol=1e-15
    )
    np.testing.assert_allclose(
        purchase_price(BID, ASK, MARK, fill, 50.0), np.array(buy) * 1.005, rtol=1e-15
    )


def test_missing_bid_is_unfillable_at_the_bid() -> None:
    got = sale_price(np.array([np.nan]), np.array([10.0]), np.array([9.0]), "bid", 0.0)
    assert np.isnan(got[0])


def test_fees_by_hand() -> None:
    # 0.03% of 60,000 = 18 < 12.5% of 400 = 50 -> 18; 12.5% of 100 = 12.5 < 18 -> 12.5
    np.testing.assert_allclose(
        trading_fee(np.array([60_000.0, 60_000.0]), np.array([400.0, 100.0]), 0.0003, 0.125),
        [18.0, 12.5],
    )
    # delivery: 0.015% of 70,000 = 10.5 vs 12.5% of payoff; OTM pays nothing
    payoff = call_payoff(
        np.array([70_000.0, 70_000.0, 60_000.0]), np.array([65_000.0, 69_950.0, 65_000.0])
    )
    np.testing.assert_allclose(payoff, [5_000.0, 50.0, 0.0])
    np.testing.assert_allclose(
        delivery_fee(np.array([70_000.0, 70_000.0, 60_000.0]), payoff, 0.00015, 0.125),
        [10.5, 6.25, 0.0],
    )
    # exactly at the strike the call is worthless
    assert float(call_payoff(65_000.0, 65_000.0)) == 0.0
    assert float(delivery_fee(65_000.0, 0.0, 0.00015, 0.125)) == 0.0


def test_covered_drawdown_rows_by_hand() -> None:
    values = np.array(
        [
            [100.0, 120.0, 90.0, 110.0],  # peak 120 -> 90: 25%
            [np.nan, 50.0, 60.0, 45.0],  # starts late: peak 60 -> 45: 25%
            [10.0, 11.0, 12.0, 13.0],  # rising: 0
        ]
    )
    np.testing.assert_allclose(covered_drawdown_pct(values), [25.0, 25.0, 0.0])
    # a 1-D curve is one row
    np.testing.assert_allclose(covered_drawdown_pct(np.array([80.0, 100.0, 60.0])), [40.0])
