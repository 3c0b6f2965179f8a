"""Counterfactual labels and roll-mode positions against hand computations from the market.

Each label row (the hold-to-expiry outcome of one candidate) is recomputed with a plain loop
over the market's own bars, marks and delivery price; the position a roll-mode policy sees
and the cash a buy-back costs are recomputed the same way.
"""

from __future__ import annotations

import pandas as pd
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

HOUR = pd.Timedelta(hours=1)


def _covered_drawdown(values: list[float]) -> float:
    peak, worst = values[0], 0.0
    for v in values:
        peak = max(peak, v)
        worst = max(worst, (peak - v) / peak)
    return worst * 100.0


def test_every_label_of_a_decision_by_hand(sim: CoveredCallSimulator, market) -> None:
    labels = sim.counterfactual_labels()
    c = sim.config
    size = sim.size
    times = sim.decision_times()
    checked = 0
    picks = [t for t in times[3::37] if sim.candidates(t)][:3]
    assert len(picks) == 3
    for t in picks:
        cands = sim.candidates(t)
        rows = labels[labels["decision_time"] == t]
        sells = rows[rows["action"] == "SELL_CALL"].set_index("instrument_name")
        assert sorted(sells.index) == sorted(x.instrument_name for x in cands)
        best = 0.0
        for x in cands:
            row = sells.loc[x.instrument_name]
            bid, fwd = x.bid_price, x.underlying_price
            fee = min(c.fee_rate * fwd, c.fee_cap_fraction * bid)
            settle = market.settlement_price("BTC", x.expiry)
            payoff = max(settle - x.strike, 0.0)
            dfee = min(c.delivery_fee_rate * settle, c.fee_cap_fraction * payoff) if payoff else 0.0
            net = bid - fee - payoff - dfee
            assert row["premium"] == pytest.approx(size * bid, rel=1e-12)
            assert row["fees"] == pytest.approx(size * (fee + dfee), rel=1e-12)
            assert row["settlement_price"] == pytest.approx(settle, rel=1e-12)
            assert row["payoff"] == pytest.approx(size * payoff, rel=1e-12, abs=1e-12)
            assert row["pnl_vs_hodl"] == pytest.approx(size * net, rel=1e-9, abs=1e-9)
            assert row["return_bps"] == pytest.approx(net / fwd * 1e4, rel=1e-9, abs=1e-9)
            assert row["pnl_coin"] == pytest.approx(
                size * ((bid - fee) / fwd - (payoff + dfee) / settle), rel=1e-9, abs=1e-12
            )
            assert bool(row["in_the_money"]) == (payoff > 0)
            # covered value per coin S - C + cash, every bar from the sale to the last bar
            # before expiry, then the settled value
            bars = pd.date_range(t, x.expiry - HOUR, freq="1h")
            spot = market.get_spot_ohlc("BTC", t, x.expiry - HOUR, "1h")["close"]
            marks = market.option_marks([x.instrument_name], bars)[0]
            cash = bid - fee
            values = [
                float(spot.loc[b]) - float(m) + cash for b, m in zip(bars, marks, strict=True)
            ]
            values.append(settle - payoff - dfee + cash)
            assert row["max_drawdown_pct"] == pytest.approx(_covered_drawdown(values), rel=1e-9)
            best = max(best, size * net)
            checked += 1
        nothing = rows[rows["action"] == "DO_NOTHING"]
        assert len(nothing) == 1 and nothing["pnl_vs_hodl"].iloc[0] == 0.0
        for b in rows["best_pnl_vs_hodl"]:
            assert b == pytest.approx(best, rel=1e-9, abs=1e-9)
        for _, r in rows.iterrows():
            assert r["regret"] == pytest.approx(best - r["pnl_vs_hodl"], rel=1e-9, abs=1e-9)
    assert checked >= 4


def test_roll_mode_position_and_buyback_by_hand(market: SyntheticMarket) -> None:
    cfg = CallSimulationConfig(
        underlying="BTC",
        start="2024-02-01",
        end="2024-03-01",
        timeframe="1h",
        decision_interval_bars=24,
        hold_to_expiry=False,
    )
    sim = CoveredCallSimulator(market, cfg)
    seen = []

    def roll_daily(state, candidates):
        seen.append(state)
        return candidates[-1] if candidates else None

    res = sim.simulate_policy(roll_daily)
    rolled = [t for t in res.trades if t.notes == "bought back before expiry"]
    assert len(rolled) >= 3
    by_time = {pd.Timestamp(s.time): s for s in seen}
    for tr in rolled[:4]:
        t = tr.close_time
        pos = by_time[t].position
        assert pos is not None and pos.instrument_name == tr.instrument_name
        mark = float(market.option_marks([tr.instrument_name], pd.DatetimeIndex([t]))[0, 0])
        assert pos.mark_price == pytest.approx(mark, rel=1e-9)
        assert pos.open_price == pytest.approx(tr.open_price)
        assert pos.unrealized_pnl == pytest.approx(
            tr.size * (tr.open_price - mark) - tr.open_fee_usd, rel=1e-9
        )
        assert pos.dte_days == pytest.approx((tr.expiry - t) / pd.Timedelta(days=1))
        # bought back at the ask of the chain quoted at t, plus the trading fee
        quote = next(
            o for o in market.list_option_chain("BTC", t) if o.instrument_name == tr.instrument_name
        )
        assert tr.close_price == pytest.approx(quote.ask_price, rel=1e-12)
        fee = tr.size * min(
            cfg.fee_rate * quote.underlying_price, cfg.fee_cap_fraction * quote.ask_price
        )
        assert tr.close_fee_usd == pytest.approx(fee, rel=1e-12)
        assert tr.pnl_vs_hodl == pytest.approx(
            tr.premium_usd - tr.open_fee_usd - tr.size * quote.ask_price - fee, rel=1e-9
        )
    # the cash a policy sees is the running sum of every leg closed or opened before it
    for s in seen[1:]:
        t = pd.Timestamp(s.time)
        expect = 0.0
        for tr in res.trades:
            if tr.open_time < t:
                expect += tr.premium_usd - tr.open_fee_usd
            if tr.close_time < t or (tr.close_time == t and tr.close_time == tr.expiry):
                expect -= tr.payoff_usd + tr.close_fee_usd
        assert s.cash_usd == pytest.approx(expect, rel=1e-9, abs=1e-6), t
