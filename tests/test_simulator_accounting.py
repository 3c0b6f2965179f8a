"""Numbers the replay derives over time, checked bar by bar against hand computations.

Expected values come from the market itself (its bars, marks, chains and delivery prices) and
plain loops here, never from another path of the simulator: equity at the sale bar, cash at
settlement, the state a policy sees at an exact bar, the fallback settlement price, and the
candidate gates at their edges.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from harness.data.source import empty_ohlc
from harness.data.synthetic import SyntheticMarket
from harness.policies import always_sell
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

HOUR = pd.Timedelta(hours=1)


class Plain:
    """Only the three protocol methods (no bulk chains, no delivery prices), 1m bars included."""

    def __init__(self, market: SyntheticMarket, delta_of=None) -> None:
        self.market = market
        self.delta_of = delta_of

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        return self.market.get_spot_ohlc(underlying, start, end, timeframe)

    def list_option_chain(self, underlying, as_of):
        chain = self.market.list_option_chain(underlying, as_of)
        if self.delta_of is not None:
            chain = [replace(c, delta=self.delta_of(k, c)) for k, c in enumerate(chain)]
        return chain

    def get_option_ohlc(self, instrument_name, start, end, timeframe):
        bars = self.market.get_option_ohlc(instrument_name, start, end, timeframe)
        return bars if len(bars) else empty_ohlc()


class HourlyOnly(Plain):
    """A source with hourly bars only: asking for 1-minute bars fails."""

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        if timeframe != "1h":
            raise ValueError("only 1h bars")
        return super().get_spot_ohlc(underlying, start, end, timeframe)


def _cfg(**kw) -> CallSimulationConfig:
    base = dict(
        underlying="BTC",
        start="2024-02-01",
        end="2024-02-20",
        timeframe="1h",
        decision_interval_bars=8,
    )
    base.update(kw)
    return CallSimulationConfig(**base)


def _mark(market: SyntheticMarket, name: str, t: pd.Timestamp) -> float:
    return float(market.option_marks([name], pd.DatetimeIndex([t]))[0, 0])


def _hand_leg(market: SyntheticMarket, underlying: str, trade, bid: float, fwd: float) -> dict:
    """Premium, fees and payoff (USD) of a held-to-expiry sale at the bid, by Deribit's rules."""
    size = trade.size
    premium = size * bid
    open_fee = size * min(0.0003 * fwd, 0.125 * bid)
    settle = market.settlement_price(underlying, trade.expiry)
    payoff = max(settle - trade.strike, 0.0)
    dfee = min(0.00015 * settle, 0.125 * payoff) if payoff > 0 else 0.0
    return {
        "premium": premium,
        "open_fee": open_fee,
        "payoff": size * payoff,
        "delivery_fee": size * dfee,
        "net": premium - open_fee - size * payoff - size * dfee,
    }


@pytest.fixture(scope="module")
def replay(sim: CoveredCallSimulator, market: SyntheticMarket):
    """always_sell on the shared simulator, with the quotes it was offered at each sale."""
    offered: dict[pd.Timestamp, dict[str, tuple[float, float]]] = {}
    cash_seen: dict[pd.Timestamp, float] = {}
    choose = always_sell()

    def spy(state, candidates):
        t = pd.Timestamp(state.time)
        cash_seen[t] = state.cash_usd
        offered[t] = {c.instrument_name: (c.bid_price, c.underlying_price) for c in candidates}
        return choose(state, candidates)

    res = sim.simulate_policy(spy)
    legs = [
        _hand_leg(market, "BTC", tr, *offered[tr.open_time][tr.instrument_name])
        for tr in res.trades
    ]
    return res, legs, cash_seen


def _ledger(market: SyntheticMarket, trades, legs, t: pd.Timestamp) -> float:
    """Equity minus HODL at bar t by hand: cash of every sale so far, less each open call at
    its mark, or less its payoff and delivery fee once t reaches its expiry."""
    total = 0.0
    for tr, leg in zip(trades, legs, strict=True):
        if tr.open_time > t:
            continue
        total += leg["premium"] - leg["open_fee"]
        if t < tr.expiry:
            total -= tr.size * _mark(market, tr.instrument_name, t)
        else:
            total -= leg["payoff"] + leg["delivery_fee"]
    return total


def test_premium_is_in_equity_at_the_sale_bar(replay, market: SyntheticMarket) -> None:
    res, legs, _ = replay
    assert len(res.trades) >= 5
    # the documented series: names and index are what `to_frame()` and the run files show
    curves = (res.equity_curve, res.hodl_curve, res.equity_vs_hodl)
    assert [c.name for c in curves] == ["equity", "hodl", "equity_vs_hodl"]
    assert all(c.index.name == "timestamp" and c.index.equals(curves[0].index) for c in curves)
    ev = res.equity_vs_hodl
    for tr in res.trades:
        for t in (tr.open_time - HOUR, tr.open_time, tr.open_time + HOUR):
            if t in ev.index:
                expect = _ledger(market, res.trades, legs, t)
                assert ev.loc[t] == pytest.approx(expect, rel=1e-9, abs=1e-6), t


def test_cash_at_settlement_is_premium_less_fees_and_payoff(
    replay, market: SyntheticMarket
) -> None:
    res, legs, _ = replay
    ev = res.equity_vs_hodl
    itm = 0
    for tr, leg in zip(res.trades, legs, strict=True):
        if tr.expiry > ev.index[-1]:
            continue
        for t in (tr.expiry - HOUR, tr.expiry, tr.expiry + HOUR):
            expect = _ledger(market, res.trades, legs, t)
            assert ev.loc[t] == pytest.approx(expect, rel=1e-9, abs=1e-6), t
        itm += leg["payoff"] > 0
        # the trade record carries the same flows
        assert tr.pnl_vs_hodl == pytest.approx(leg["net"], rel=1e-9, abs=1e-9)
        assert tr.payoff_usd == pytest.approx(leg["payoff"], rel=1e-12, abs=1e-9)
        assert tr.close_fee_usd == pytest.approx(leg["delivery_fee"], rel=1e-12, abs=1e-12)
    assert itm >= 1
    # after the last expiry only settled cash is left
    last = res.trades[-1]
    if last.expiry <= ev.index[-1]:
        assert ev.iloc[-1] == pytest.approx(sum(leg["net"] for leg in legs), abs=1e-6)


def test_state_cash_is_what_settled_and_open_trades_left(replay) -> None:
    res, legs, cash_seen = replay
    for t, cash in cash_seen.items():
        expect = sum(
            leg["net"] if tr.expiry <= t else leg["premium"] - leg["open_fee"]
            for tr, leg in zip(res.trades, legs, strict=True)
            if tr.open_time < t
        )
        assert cash == pytest.approx(expect, rel=1e-9, abs=1e-6), t


def test_state_features_at_exact_decision_bars(sim: CoveredCallSimulator, market) -> None:
    """Every DecisionState feature against the source's bars and chain, by plain loops."""
    times = sim.decision_times()
    picks = [times[0], times[len(times) // 3], times[len(times) // 2], times[-1]]
    bars = market.get_spot_ohlc("BTC", times[0] - pd.Timedelta(days=31), times[-1], "1h")
    close = dict(zip(bars.index, bars["close"].to_numpy(), strict=True))
    c = sim.config
    for t in picks:
        s = sim.build_state(t)
        # spot is the close of the bar labeled t: not the next bar's (a look-ahead)
        assert s.spot == close[t]
        assert s.return_1d == pytest.approx(close[t] / close[t - pd.Timedelta(days=1)] - 1)
        assert s.return_7d == pytest.approx(close[t] / close[t - pd.Timedelta(days=7)] - 1)
        for name, days in (("realized_vol_7d", 7), ("realized_vol_30d", 30)):
            hours = [t - k * HOUR for k in range(days * 24 + 1)]
            sq = [math.log(close[hours[k]] / close[hours[k + 1]]) ** 2 for k in range(days * 24)]
            rv = math.sqrt(sum(sq) / len(sq) * 365 * 24)
            assert getattr(s, name) == pytest.approx(rv, rel=1e-9), (t, name)
        # ATM IV: expiry nearest target DTE, then strike nearest the forward
        calls = [
            o
            for o in market.list_option_chain("BTC", t)
            if o.kind == "call" and o.expiry > t and np.isfinite(o.mark_iv)
        ]
        best = min(
            calls, key=lambda o: (abs(o.dte - c.target_dte), abs(o.strike / o.underlying_price - 1))
        )
        assert s.atm_iv == pytest.approx(best.mark_iv, rel=1e-12)
        assert s.iv_rv_spread == pytest.approx(best.mark_iv - s.realized_vol_7d, rel=1e-12)
        assert s.time == t and s.coins_held == c.initial_spot_position and s.position is None


def test_look_ahead_spot_is_the_bar_at_t_even_when_later_bars_differ(market) -> None:
    """A decision at t uses the bar labeled t; a source whose next bar jumps changes nothing."""
    sim = CoveredCallSimulator(market, _cfg())
    t = sim.decision_times()[5]
    expect = float(market.get_spot_ohlc("BTC", t - HOUR, t, "1h")["close"].iloc[-1])
    nxt = float(market.get_spot_ohlc("BTC", t, t + HOUR, "1h")["close"].iloc[-1])
    assert expect != nxt
    assert sim.build_state(t).spot == expect


def test_fallback_settlement_is_the_30_minute_average_of_1m_closes(market) -> None:
    sim = CoveredCallSimulator(Plain(market), _cfg())
    expiry = pd.Timestamp("2024-02-09T08:00Z")
    minutes = market.get_spot_ohlc("BTC", expiry - pd.Timedelta(minutes=29), expiry, "1m")
    closes = [float(x) for x in minutes["close"]]
    assert len(closes) == 30 and minutes.index[-1] == expiry
    twap = sum(closes) / 30
    assert closes[-1] != pytest.approx(twap, rel=1e-9)
    assert sim.settlement_price(expiry) == pytest.approx(twap, rel=1e-12)
    # the exchange's own delivery price (the synthetic market's index average) agrees
    assert sim.settlement_price(expiry) == pytest.approx(
        market.settlement_price("BTC", expiry), rel=1e-12
    )
    # without 1-minute bars the close of the bar labeled at expiry settles
    hourly = CoveredCallSimulator(HourlyOnly(market), _cfg())
    bar = market.get_spot_ohlc("BTC", expiry - HOUR, expiry, "1h")
    assert hourly.settlement_price(expiry) == float(bar.loc[expiry, "close"])


def _gate_loop(source, cfg: CallSimulationConfig, t: pd.Timestamp) -> list[str]:
    """The documented candidate rules as a plain loop over the chain at t."""
    out = []
    for o in source.list_option_chain(cfg.underlying, t):
        if o.kind != "call" or not (o.bid_price and o.bid_price > 0):
            continue
        if abs(o.dte - cfg.target_dte) > cfg.dte_tolerance:
            continue
        if abs(o.delta - cfg.target_delta) > cfg.delta_tolerance:
            continue
        if o.expiry > cfg.end_ts or o.ask_price is None or o.bid_price >= o.ask_price:
            continue
        mid = (o.bid_price + o.ask_price) / 2
        if (o.ask_price - o.bid_price) / mid * 100 > cfg.max_spread_pct:
            continue
        out.append(o.instrument_name)
    return sorted(out)


def test_delta_band_edges_are_inclusive(market) -> None:
    # 0.25 +- 0.125 are exact binary fractions: |delta - target| == tolerance exactly
    edges = (0.125, 0.375, 0.375 + 1e-6, 0.125 - 1e-6, 0.25)
    source = Plain(market, delta_of=lambda k, c: edges[k % len(edges)])
    cfg = _cfg(target_delta=0.25, delta_tolerance=0.125, end="2024-02-14")
    sim = CoveredCallSimulator(source, cfg)
    on_edge = 0
    for t in sim.decision_times()[::3]:
        got = sorted(c.instrument_name for c in sim.candidates(t))
        assert got == _gate_loop(source, cfg, t), t
        on_edge += sum(c.delta in (0.125, 0.375) for c in sim.candidates(t))
        assert all(0.125 <= c.delta <= 0.375 for c in sim.candidates(t))
    assert on_edge >= 5


def test_calls_expiring_after_end_are_never_offered(market) -> None:
    cfg = _cfg(end="2024-02-15T08:00Z")
    source = Plain(market)
    sim = CoveredCallSimulator(market, cfg)
    late_in_band = 0
    for t in sim.decision_times():
        for o in source.list_option_chain("BTC", t):
            in_band = (
                o.kind == "call"
                and abs(o.dte - cfg.target_dte) <= cfg.dte_tolerance
                and abs(o.delta - cfg.target_delta) <= cfg.delta_tolerance
                and (o.bid_price or 0) > 0
            )
            late_in_band += in_band and o.expiry > cfg.end_ts
        assert all(c.expiry <= cfg.end_ts for c in sim.candidates(t)), t
    # the config really offers in-band calls that expire after `end`
    assert late_in_band > 0
    assert sim.gate_counts.expires_after_end == late_in_band
    last = sim.decision_times()[-1]
    assert sorted(c.instrument_name for c in sim.candidates(last)) == _gate_loop(source, cfg, last)


class PinnedSettlement(Plain):
    """A source that knows delivery prices: one expiry settles at a price set by the test."""

    def __init__(self, market: SyntheticMarket, expiry: pd.Timestamp, price: float) -> None:
        super().__init__(market)
        self.expiry, self.price = expiry, price

    def settlement_price(self, underlying, expiry):
        if expiry == self.expiry:
            return self.price
        return self.market.settlement_price(underlying, expiry)


def test_a_call_settling_cents_above_its_strike_is_in_the_money(market) -> None:
    cfg = _cfg(end="2024-02-14")
    first = CoveredCallSimulator(Plain(market), cfg).simulate_policy(always_sell()).trades[0]
    # 0.5 USD over the strike: in the money by Deribit's rule (S_T > K), however small
    source = PinnedSettlement(market, first.expiry, first.strike + 0.5)
    trade = CoveredCallSimulator(source, cfg).simulate_policy(always_sell()).trades[0]
    assert (trade.instrument_name, trade.settlement_price) == (
        first.instrument_name,
        first.strike + 0.5,
    )
    assert trade.payoff_usd == pytest.approx(trade.size * 0.5, rel=1e-12)
    assert trade.in_the_money is True
    assert trade.notes == "expired in the money"


def test_min_bid_usd_removes_exactly_the_calls_bidding_at_or_below_it(market) -> None:
    base = _cfg(end="2024-02-14")
    source = Plain(market)
    t = CoveredCallSimulator(source, base).decision_times()[4]
    bids = {o.instrument_name: o.bid_price for o in source.list_option_chain("BTC", t)}
    passing = _gate_loop(source, base, t)
    assert len(passing) >= 3
    # a floor equal to the middle bid: that call and every cheaper one must go
    floor = sorted(bids[n] for n in passing)[len(passing) // 2]
    sim = CoveredCallSimulator(source, _cfg(end="2024-02-14", min_bid_usd=floor))
    got = sorted(c.instrument_name for c in sim.candidates(t))
    assert got == [n for n in passing if bids[n] > floor]
    assert 0 < len(got) < len(passing)


def test_without_the_bid_gate_no_call_is_counted_as_missing_a_bid(market) -> None:
    """`require_bid: false` switches the gate off; a call without a bid still cannot be sold
    at its bid (unfillable), so the offer is the plain loop's (mutation pass 5 survivor)."""
    cfg = _cfg(end="2024-02-14", require_bid=False)
    source = Plain(market)
    sim = CoveredCallSimulator(source, cfg)
    assert sim.gate_counts.no_bid == 0 and sim.gate_counts.offered > 0
    for t in sim.decision_times()[::5]:
        assert sorted(c.instrument_name for c in sim.candidates(t)) == _gate_loop(source, cfg, t)
