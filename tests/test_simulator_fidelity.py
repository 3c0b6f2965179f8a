"""Engine fidelity (issue #15): seeded mark paths, metrics from the start, gates, staleness, 1d."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.policies import always_sell, never_sell
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig
from tests.test_simulator import ProtocolOnly


def _cfg(**kw) -> CallSimulationConfig:
    base = dict(
        underlying="BTC",
        start="2024-02-01",
        end="2024-03-20",
        timeframe="1h",
        decision_interval_bars=8,
    )
    base.update(kw)
    return CallSimulationConfig(**base)


def test_protocol_only_source_has_no_nan_equity_on_sale_bars(market: SyntheticMarket) -> None:
    # 21-day weeklies are sold the instant they are listed: the option's own bars start one
    # bar later, so the sale bar's mark comes from the chain
    cfg = _cfg(
        start="2024-02-23T08:00",  # the 15MAR24 weekly is listed at this instant
        end="2024-03-16",
        decision_interval_bars=24,
        target_dte=21,
        dte_tolerance=0.5,
    )
    res = CoveredCallSimulator(ProtocolOnly(market), cfg).simulate_policy(always_sell())
    assert res.trades
    assert not res.equity_curve.isna().any()
    assert math.isfinite(res.metrics["max_drawdown_pct"]) and math.isfinite(res.metrics["sharpe"])
    bulk = CoveredCallSimulator(market, cfg).simulate_policy(always_sell())
    np.testing.assert_allclose(res.equity_curve.to_numpy(), bulk.equity_curve.to_numpy())


def test_metrics_never_turn_nan_into_zero() -> None:
    from harness.engine.metrics import portfolio_metrics

    idx = pd.date_range("2024-01-01", periods=5, freq="h", tz="UTC")
    spot = pd.Series([100.0, 101, 102, 101, 103], index=idx)
    eq = spot.copy()
    eq.iloc[2] = np.nan
    m = portfolio_metrics(eq, spot, spot, [], pd.Timedelta(hours=1))
    assert math.isnan(m["sharpe"]) and math.isnan(m["sortino"])
    assert math.isnan(m["max_drawdown_pct"])
    flat = pd.Series(100.0, index=idx)
    m = portfolio_metrics(flat, flat, flat, [], pd.Timedelta(hours=1))
    assert math.isnan(m["sharpe"]) and m["max_drawdown_pct"] == 0.0


def test_metrics_are_measured_from_the_coins_held_at_the_start(market: SyntheticMarket) -> None:
    cfg = _cfg(
        underlying="ETH", start="2024-01-05T08:00", end="2024-02-20", initial_spot_position=2.0
    )
    sim = CoveredCallSimulator(market, cfg)
    res = sim.simulate_policy(always_sell())
    assert res.trades[0].open_time == cfg.start_ts  # sold on the first bar
    start_value = res.hodl_curve.iloc[0]  # 2 coins at the first close
    assert res.equity_curve.iloc[0] < start_value  # the first bar is already net of spread + fee
    m = res.metrics
    final = res.equity_curve.iloc[-1]
    assert m["final_pnl_usd"] == pytest.approx(final - start_value)
    assert m["total_return_pct"] == pytest.approx((final / start_value - 1) * 100)
    spot = sim.bars["close"]
    s0, s1 = spot.loc[cfg.start_ts], res.hodl_curve.iloc[-1] / 2.0
    assert m["final_pnl_coin"] == pytest.approx(final / s1 - start_value / s0)
    # the accounting identity: pnl = hodl pnl + pnl vs hodl
    assert m["final_pnl_usd"] == pytest.approx(m["hodl_pnl_usd"] + m["pnl_vs_hodl_usd"])


def test_undefined_trade_statistics_read_as_undefined(sim: CoveredCallSimulator) -> None:
    m = sim.simulate_policy(never_sell()).metrics
    assert m["n_trades"] == 0
    assert math.isnan(m["itm_share"]) and math.isnan(m["win_rate_vs_hodl"])
    assert m["upside_given_up_usd"] == 0.0


def test_upside_given_up_counts_intrinsic_value_only_in_roll_mode(
    market: SyntheticMarket,
) -> None:
    cfg = _cfg(end="2024-03-10", hold_to_expiry=False, decision_interval_bars=24)
    s = CoveredCallSimulator(market, cfg)

    def roll_daily(state, candidates):
        return candidates[0] if candidates else None

    res = s.simulate_policy(roll_daily)
    early = [t for t in res.trades if t.settlement_price is None]
    assert early
    want = sum(t.size * max(t.close_underlying_price - t.strike, 0.0) for t in res.trades)
    assert res.metrics["upside_given_up_usd"] == pytest.approx(want)
    assert res.metrics["upside_given_up_usd"] < sum(t.payoff_usd for t in res.trades)


def test_gate_counts_count_each_removed_call_once(market: SyntheticMarket) -> None:
    # a high minimum bid and a tight spread limit make many calls fail both gates
    cfg = _cfg(min_bid_usd=400.0, max_spread_pct=8.0)
    g = CoveredCallSimulator(market, cfg).gate_counts
    removed = (
        g.expires_after_end
        + g.no_bid
        + g.bid_below_min
        + g.crossed
        + g.spread_too_wide
        + g.unfillable
    )
    assert g.bid_below_min > 0 and g.spread_too_wide > 0
    assert removed + g.offered == g.in_band


class CoarseOnly(ProtocolOnly):
    """A protocol-only source with spot bars only at the given timeframes (no delivery price)."""

    def __init__(self, market: SyntheticMarket, timeframes: tuple[str, ...]) -> None:
        super().__init__(market)
        self.timeframes = timeframes

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        if timeframe not in self.timeframes:
            raise ValueError(f"no {timeframe} bars")
        return super().get_spot_ohlc(underlying, start, end, timeframe)


def test_daily_bars_settle_at_the_expiry_instant_not_the_midnight_close(
    market: SyntheticMarket,
) -> None:
    cfg = _cfg(timeframe="1d", decision_interval_bars=1, end="2024-02-20")
    sim = CoveredCallSimulator(CoarseOnly(market, ("1d", "1h")), cfg)
    res = sim.simulate_policy(always_sell())
    assert res.trades
    for t in res.trades:
        assert t.settlement_price == pytest.approx(market.spot_at("BTC", [t.expiry])[0])
    with pytest.raises(ValueError, match="no bar labeled at the expiry instant"):
        CoveredCallSimulator(CoarseOnly(market, ("1d",)), cfg).simulate_policy(always_sell())


def test_daily_call_expiring_after_the_last_bar_keeps_being_marked(
    market: SyntheticMarket,
) -> None:
    # the last daily bar is 2024-03-08 00:00; a call expiring 2024-03-08 08:00 is still open
    cfg = _cfg(timeframe="1d", decision_interval_bars=1, end="2024-03-08T12:00")
    sim = CoveredCallSimulator(market, cfg)
    last_decision = sim.decision_times()[-1]
    assert last_decision == pd.Timestamp("2024-03-01", tz="UTC")
    sell_last = always_sell()

    def policy(state, candidates):
        return sell_last(state, candidates) if state.time == last_decision else None

    res = sim.simulate_policy(policy)
    last_bar = res.equity_curve.index[-1]
    open_at_end = [t for t in res.trades if t.close_time > last_bar]
    assert len(open_at_end) == 1
    tr = open_at_end[0]
    mark = market.option_marks([tr.instrument_name], pd.DatetimeIndex([last_bar]))[0, 0]
    settled = sum(t.pnl_vs_hodl for t in res.trades if t is not tr)
    want = settled + tr.premium_usd - tr.open_fee_usd - tr.size * mark
    assert res.equity_vs_hodl.iloc[-1] == pytest.approx(want)


class Gappy(ProtocolOnly):
    """Spot bars missing over (gap_start, gap_end]; chains and option bars untouched."""

    def __init__(self, market: SyntheticMarket, gap_start: str, gap_end: str) -> None:
        super().__init__(market)
        self.gap = (pd.Timestamp(gap_start, tz="UTC"), pd.Timestamp(gap_end, tz="UTC"))

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        bars = super().get_spot_ohlc(underlying, start, end, timeframe)
        return bars[(bars.index <= self.gap[0]) | (bars.index > self.gap[1])]


def test_a_decision_after_a_data_gap_is_flagged_and_uses_the_chains_spot(
    market: SyntheticMarket,
) -> None:
    t = pd.Timestamp("2024-02-10T08:00", tz="UTC")
    src = Gappy(market, "2024-02-09T11:00", "2024-02-10T08:00")
    sim = CoveredCallSimulator(src, _cfg(start="2024-02-08", end="2024-02-18"))
    state = sim.build_state(t)
    chain = market.list_option_chain("BTC", t)
    nearest = min((c for c in chain if c.expiry > t), key=lambda c: c.expiry)
    assert state.spot_stale and state.spot == pytest.approx(nearest.underlying_price)
    assert pd.Timestamp(state.spot_as_of) == t
    day_before = market.get_spot_ohlc("BTC", t - pd.Timedelta(days=1), t, "1h")["close"].iloc[0]
    assert state.return_1d == pytest.approx(state.spot / day_before - 1)
    fresh = sim.build_state(t - pd.Timedelta(hours=24))
    assert not fresh.spot_stale and pd.Timestamp(fresh.spot_as_of) == t - pd.Timedelta(hours=24)
    res = sim.simulate_policy(never_sell())
    flagged = [d.decision_time for d in res.decisions if d.spot_stale]
    assert t in flagged and len(flagged) == 3  # 16:00, 00:00 and 08:00 fall in the gap
