"""Accounting identities of fills, fees, payoff and drawdown, as hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.engine.outcomes import (
    call_payoff,
    covered_drawdown_pct,
    delivery_fee,
    purchase_price,
    sale_price,
    trading_fee,
)

prices = st.floats(1.0, 200_000.0)
fracs = st.floats(0.0, 0.01)


@settings(max_examples=200, deadline=None)
@given(spot=prices, option=st.floats(0.0, 50_000.0), rate=fracs, cap=st.floats(0.0, 1.0))
def test_trading_fee_is_the_smaller_of_rate_and_cap(spot, option, rate, cap) -> None:
    fee = float(trading_fee(spot, option, rate, cap))
    assert fee == min(rate * spot, cap * option)
    assert 0.0 <= fee <= cap * option + 1e-12


@settings(max_examples=200, deadline=None)
@given(settle=prices, strike=prices, rate=fracs)
def test_delivery_fee_only_itm_and_capped(settle, strike, rate) -> None:
    payoff = float(call_payoff(settle, strike))
    fee = float(delivery_fee(settle, payoff, rate, 0.125))
    assert payoff == max(settle - strike, 0.0)
    if payoff == 0:
        assert fee == 0
    else:
        assert fee == pytest.approx(min(rate * settle, 0.125 * payoff))
    # coin and USD views agree at the settlement price
    assert payoff / settle * settle == pytest.approx(payoff)


@settings(max_examples=200, deadline=None)
@given(bid=st.floats(0.1, 1000), spread=st.floats(0.0, 100), bps=st.floats(0, 500))
def test_fills_order_and_slippage(bid, spread, bps) -> None:
    ask = bid + spread
    mark = bid + spread / 2
    sells = [float(sale_price(bid, ask, mark, f, bps)) for f in ("bid", "mid", "mark")]
    buys = [float(purchase_price(bid, ask, mark, f, bps)) for f in ("bid", "mid", "mark")]
    assert sells[0] <= sells[1] + 1e-9 and sells[1] == pytest.approx(sells[2])
    # a round trip never makes money: you sell at or below what you buy back at
    for s, b in zip(sells, buys, strict=True):
        assert s <= b + 1e-9
    assert sells[0] == pytest.approx(bid * (1 - bps / 1e4))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1.0, 1e6), min_size=1, max_size=50))
def test_drawdown_matches_a_plain_loop(values) -> None:
    peak, worst = -np.inf, 0.0
    for v in values:
        peak = max(peak, v)
        worst = max(worst, (peak - v) / peak)
    assert covered_drawdown_pct(np.array(values))[0] == pytest.approx(worst * 100.0, abs=1e-9)


def test_drawdown_skips_nan_cells_and_rows() -> None:
    v = np.array([[np.nan, 100.0, 80.0, 120.0, 90.0], [np.nan, np.nan, np.nan, np.nan, np.nan]])
    dd = covered_drawdown_pct(v)
    assert dd[0] == pytest.approx(25.0) and dd[1] == 0.0


def test_drawdown_of_rows_without_any_value_is_zero() -> None:
    """Calls whose paths hold no bar (zero columns) have no fall: one 0% per row."""
    np.testing.assert_array_equal(covered_drawdown_pct(np.zeros((3, 0))), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(covered_drawdown_pct(np.array([])), [0.0])
