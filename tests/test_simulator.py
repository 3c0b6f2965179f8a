"""The replay engine: point in time, exact accounting, Deribit fees, determinism."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from harness.data.source import empty_ohlc
from harness.data.synthetic import SyntheticMarket
from harness.policies import always_sell, from_bool, never_sell, oracle
from harness.simulator import CoveredCallSimulator, InvalidChoiceError
from harness.types import CallCandidate, CallSimulationConfig, OptionSnapshot


class ProtocolOnly:
    """A source with only the three protocol methods (no bulk path), optionally altered after T."""

    def __init__(self, market: SyntheticMarket, altered_after: pd.Timestamp | None = None) -> None:
        self.market = market
        self.after = altered_after

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        bars = self.market.get_spot_ohlc(underlying, start, end, timeframe)
        if self.after is not None and len(bars):
            bars = bars.copy()
            late = bars.index > self.after
            bars.loc[late, ["open", "high", "low", "close"]] *= 1.37
        return bars

    def list_option_chain(self, underlying, as_of):
        chain = self.market.list_option_chain(underlying, as_of)
        if self.after is not None and pd.Timestamp(as_of) > self.after:
            chain = [
                replace(
                    c,
                    mark_price=c.mark_price * 2,
                    bid_price=c.bid_price and c.bid_price * 2,
                    delta=c.delta * 0.9,
                )
                for c in chain
            ]
        return chain

    def get_option_ohlc(self, instrument_name, start, end, timeframe):
        bars = self.market.get_option_ohlc(instrument_name, start, end, timeframe)
        if self.after is not None and len(bars):
            bars = bars.copy()
            bars.loc[bars.index > self.after, "close"] *= 3
        return bars if len(bars) else empty_ohlc()


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


def test_decision_times_stop_where_target_dte_passes_end(sim: CoveredCallSimulator) -> None:
    d = sim.decision_times()
    c = sim.config
    assert d[0] == c.start_ts
    assert set(np.diff(d.as_unit("ns").asi8)) == {4 * 3600 * 10**9}
    assert d[-1] + pd.Timedelta(days=c.target_dte) <= c.end_ts
    assert d[-1] + pd.Timedelta(hours=4) + pd.Timedelta(days=c.target_dte) > c.end_ts


def test_candidates_are_in_band_liquid_and_sorted(sim: CoveredCallSimulator) -> None:
    c = sim.config
    seen = 0
    for t in sim.decision_times()[::7]:
        cands = sim.candidates(t)
        seen += len(cands)
        keys = [(x.expiry, x.strike) for x in cands]
        assert keys == sorted(keys)
        for x in cands:
            assert x.kind == "call" and x.as_of == t
            assert abs(x.dte_days - c.target_dte) <= c.dte_tolerance + 1e-9
            assert abs(x.delta - c.target_delta) <= c.delta_tolerance + 1e-9
            assert x.bid_price is not None and x.bid_price > 0 and x.premium_usd == x.bid_price
            assert x.premium_pct == pytest.approx(x.premium_usd / x.underlying_price * 100)
            assert x.annualized_yield_pct == pytest.approx(x.premium_pct * 365 / x.dte_days)
            assert x.breakeven == pytest.approx(x.strike + x.premium_usd)
            assert x.expiry <= c.end_ts
    assert seen > 20


def test_point_in_time_altering_the_future_changes_nothing_before(market: SyntheticMarket) -> None:
    cfg = _cfg()
    T = pd.Timestamp("2024-02-08T12:00Z")
    plain = CoveredCallSimulator(ProtocolOnly(market), cfg)
    altered = CoveredCallSimulator(ProtocolOnly(market, altered_after=T), cfg)
    before = [t for t in plain.decision_times() if t <= T]
    after = [t for t in plain.decision_times() if t > T]
    assert len(before) > 10 and after
    for t in before:
        assert plain.build_state(t) == altered.build_state(t)
        assert plain.candidates(t) == altered.candidates(t)
    # the alteration is real: later decisions do see it
    assert any(plain.build_state(t) != altered.build_state(t) for t in after)


def test_protocol_only_source_gives_the_same_candidates_as_the_bulk_path(
    market: SyntheticMarket,
) -> None:
    cfg = _cfg()
    generic = CoveredCallSimulator(ProtocolOnly(market), cfg)
    bulk = CoveredCallSimulator(market, cfg)
    for t in bulk.decision_times()[::5]:
        assert generic.candidates(t) == bulk.candidates(t)
    a = generic.simulate_policy(always_sell())
    b = bulk.simulate_policy(always_sell())
    assert [x.instrument_name for x in a.trades] == [x.instrument_name for x in b.trades]
    np.testing.assert_allclose(a.equity_curve.to_numpy(), b.equity_curve.to_numpy(), rtol=1e-9)


def test_mark_fill_zero_fees_identity(market: SyntheticMarket) -> None:
    cfg = CallSimulationConfig(
        underlying="ETH",
        start="2024-01-01",
        end="2024-03-31",
        fill="mark",
        fee_rate=0.0,
        delivery_fee_rate=0.0,
        initial_spot_position=3.0,
        call_size_fraction=0.5,
        contract_size=0.5,  # 1.5 ETH is three lots of 0.5 (the default ETH lot is 1)
    )
    s = CoveredCallSimulator(market, cfg)
    res = s.simulate_policy(always_sell(0.3))
    assert len(res.trades) >= 8
    for tr in res.trades:
        expected = tr.size * (tr.open_mark_price - max(tr.settlement_price - tr.strike, 0.0))
        assert tr.pnl_vs_hodl == pytest.approx(expected, rel=1e-12, abs=1e-9)
        assert tr.size == 1.5
    final_gap = res.equity_curve.iloc[-1] - res.hodl_curve.iloc[-1]
    assert final_gap == pytest.approx(sum(t.pnl_vs_hodl for t in res.trades), rel=1e-10, abs=1e-6)
    assert res.metrics["pnl_vs_hodl_usd"] == pytest.approx(final_gap)


def test_fees_follow_deribit_formula_and_cap(
    sim: CoveredCallSimulator, market: SyntheticMarket
) -> None:
    res = sim.simulate_policy(always_sell())
    itm = [t for t in res.trades if t.in_the_money]
    assert res.trades and itm
    for t in res.trades:
        assert t.open_fee_usd == pytest.approx(
            t.size * min(0.0003 * t.open_underlying_price, 0.125 * t.open_price)
        )
        payoff = max(t.settlement_price - t.strike, 0.0)
        dfee = min(0.00015 * t.settlement_price, 0.125 * payoff) if payoff > 0 else 0.0
        assert t.close_fee_usd == pytest.approx(t.size * dfee)
        # coin and USD agree: each flow converted at the price of its own moment
        assert t.payoff_usd / t.settlement_price == pytest.approx(
            t.size * payoff / t.settlement_price
        )
        assert t.pnl_coin == pytest.approx(
            (t.premium_usd - t.open_fee_usd) / t.open_underlying_price
            - (t.payoff_usd + t.close_fee_usd) / t.settlement_price
        )
        assert t.pnl_vs_hodl == pytest.approx(t.premium_usd - t.fees_usd - t.payoff_usd)
        assert t.pnl == pytest.approx(
            t.size * (t.settlement_price - t.open_underlying_price) + t.pnl_vs_hodl
        )
    # a high fee rate makes the 12.5% cap bind
    capped = CoveredCallSimulator(market, sim.config.model_copy(update={"fee_rate": 0.01}))
    t = capped.simulate_policy(always_sell()).trades[0]
    assert t.open_fee_usd == pytest.approx(0.125 * t.premium_usd)


def test_same_config_same_results() -> None:
    cfg = _cfg(end="2024-03-10")
    a = CoveredCallSimulator(SyntheticMarket(seed=5), cfg).simulate_policy(always_sell())
    b = CoveredCallSimulator(SyntheticMarket(seed=5), cfg).simulate_policy(always_sell())
    assert a.trades == b.trades
    assert a.metrics == b.metrics
    pd.testing.assert_series_equal(a.equity_curve, b.equity_curve)


def test_equity_curve_marks_every_bar(sim: CoveredCallSimulator) -> None:
    res = sim.simulate_policy(always_sell())
    bars = sim.bars.loc[sim.config.start_ts : sim.config.end_ts]
    assert res.equity_curve.index.equals(bars.index)
    hodl = sim.config.initial_spot_position * bars["close"].to_numpy()
    np.testing.assert_allclose(res.hodl_curve.to_numpy(), hodl)
    # while a call is open, equity = hodl + cash - size * mark
    tr = res.trades[1]
    t = tr.open_time + pd.Timedelta(hours=5)
    mark = sim.source.option_marks([tr.instrument_name], pd.DatetimeIndex([t]))[0, 0]
    cash_before = sum(x.premium_usd - x.fees_usd - x.payoff_usd for x in res.trades[:1])
    cash = cash_before + tr.premium_usd - tr.open_fee_usd
    assert res.equity_vs_hodl.loc[t] == pytest.approx(cash - tr.size * mark)
    never = sim.simulate_policy(never_sell())
    assert (never.equity_vs_hodl == 0).all() and never.trades == []


def test_policy_is_asked_only_when_flat(sim: CoveredCallSimulator) -> None:
    seen_positions = []

    def spy(state, candidates):
        seen_positions.append(state.position)
        return candidates[0] if candidates else None

    res = sim.simulate_policy(spy)
    assert all(p is None for p in seen_positions)
    asked = [d for d in res.decisions if d.asked]
    assert len(asked) == len(seen_positions) and len(res.decisions) == len(sim.decision_times())
    for a, b in zip(res.trades, res.trades[1:], strict=False):
        assert b.open_time >= a.close_time


def test_choice_outside_candidates_is_rejected(sim: CoveredCallSimulator) -> None:
    def cheat(state, candidates: Sequence[CallCandidate]) -> OptionSnapshot | None:
        if not candidates:
            return None
        return replace(candidates[0], instrument_name="BTC-1JAN30-1000000-C")

    with pytest.raises(InvalidChoiceError, match="not one of the offered candidates") as err:
        sim.simulate_policy(cheat)
    # the message names the decision time in UTC (the first decision with candidates)
    first = next(t for t in sim.decision_times() if sim.candidates(t))
    assert str(err.value).startswith(f"at {first.tz_convert('UTC').isoformat()} the policy chose")
    assert "+00:00" in str(err.value).split(" the policy")[0]


def test_bool_adapter_and_single_call(sim: CoveredCallSimulator) -> None:
    res = sim.simulate_policy(from_bool(lambda s: True))
    ref = sim.simulate_policy(always_sell())
    assert [t.instrument_name for t in res.trades] == [t.instrument_name for t in ref.trades]
    t0 = ref.trades[0].open_time
    single = sim.simulate_single_call(t0, size=2.0)
    assert single is not None and single.instrument_name == ref.trades[0].instrument_name
    assert single.pnl_vs_hodl == pytest.approx(2.0 * ref.trades[0].pnl_vs_hodl)
    assert single.max_drawdown_pct >= 0
    # Monday 00:00: no expiry 5..9 days away -> None with a reason
    none_t = pd.Timestamp("2024-02-05T00:00Z")
    assert not sim.candidates(none_t)
    assert sim.simulate_single_call(none_t, 1.0) is None
    assert "no call within DTE" in sim.last_no_trade_reason


def test_labels_cover_every_candidate_and_do_nothing(sim: CoveredCallSimulator) -> None:
    labels = sim.counterfactual_labels()
    n_dec = len(sim.decision_times())
    assert (labels["action"] == "DO_NOTHING").sum() == n_dec
    assert (labels["action"] == "SELL_CALL").sum() == len(sim.candidates_frame())
    assert labels["pnl_vs_hodl"].notna().all()
    assert (labels["regret"] >= -1e-12).all()
    # labels agree with the trade the engine books for the same choice
    res = sim.simulate_policy(always_sell())
    for tr in res.trades[:5]:
        row = labels[
            (labels.decision_time == tr.open_time) & (labels.instrument_name == tr.instrument_name)
        ]
        assert row["pnl_vs_hodl"].iloc[0] == pytest.approx(tr.pnl_vs_hodl)
        assert row["max_drawdown_pct"].iloc[0] == pytest.approx(tr.max_drawdown_pct)
    # the oracle is never worse than doing nothing, decision by decision
    orc = sim.simulate_policy(oracle(labels))
    assert all(t.pnl_vs_hodl > 0 for t in orc.trades)


def test_roll_mode_buys_back_and_asks_with_position(market: SyntheticMarket) -> None:
    cfg = _cfg(end="2024-03-10", hold_to_expiry=False, decision_interval_bars=24)
    s = CoveredCallSimulator(market, cfg)
    calls = {"n": 0}

    def roller(state, candidates):
        calls["n"] += 1
        if state.position is not None:
            assert state.position.mark_price > 0
            # roll once a call has lost half its value
            if state.position.mark_price > 0.5 * state.position.open_price:
                return None
        return candidates[-1] if candidates else None

    res = s.simulate_policy(roller)
    early = [t for t in res.trades if t.notes == "bought back before expiry"]
    assert early, "expected at least one roll"
    for t in early:
        assert t.close_time < t.expiry and t.settlement_price is None
        assert t.pnl_vs_hodl == pytest.approx(t.premium_usd - t.fees_usd - t.payoff_usd)
    gap = res.equity_curve.iloc[-1] - res.hodl_curve.iloc[-1]
    assert gap == pytest.approx(sum(t.pnl_vs_hodl for t in res.trades), abs=1e-6)


def test_config_validation_names_field_and_range() -> None:
    with pytest.raises(ValueError, match="target_delta"):
        _cfg(target_delta=1.5)
    with pytest.raises(ValueError, match="end"):
        _cfg(start="2024-03-01", end="2024-02-01")
    with pytest.raises(ValueError, match="timeframe"):
        _cfg(timeframe="2h")


def test_simulate_call_and_trade_path_follow_the_markets_own_marks(
    sim: CoveredCallSimulator, market: SyntheticMarket
) -> None:
    # what-if path of one named sale, checked against the source's marks and a hand ledger
    t = next(t for t in sim.decision_times() if sim.candidates(t))
    offered = sim.candidates(t)
    cand = offered[len(offered) // 2]
    trade = sim.simulate_call(t, cand.instrument_name, 2.0)
    assert trade.instrument_name == cand.instrument_name and trade.open_time == t
    assert trade.premium_usd == pytest.approx(2.0 * cand.bid_price, rel=1e-12)
    path = sim.trade_path(trade)
    # the documented frame: its index is `time` (reset_index gives a `time` column), these columns
    assert path.index.name == "time" and list(path.reset_index().columns[:1]) == ["time"]
    assert list(path.columns) == ["spot", "call_mark", "pnl_vs_hodl", "covered_value"]
    bars = path.index[:-1]
    assert bars[0] == t and bars[-1] < trade.close_time == path.index[-1]
    assert list(np.diff(bars.asi8)) == [3600 * 10**9] * (len(bars) - 1)
    marks = market.option_marks([cand.instrument_name], bars)[0]
    np.testing.assert_allclose(path["call_mark"].to_numpy()[:-1], marks, rtol=1e-9)
    cash = trade.premium_usd - trade.open_fee_usd
    np.testing.assert_allclose(path["pnl_vs_hodl"].to_numpy()[:-1], cash - 2.0 * marks, rtol=1e-9)
    spots = market.get_spot_ohlc("BTC", bars[0], bars[-1], "1h")["close"].reindex(bars)
    np.testing.assert_allclose(path["spot"].to_numpy()[:-1], spots.to_numpy(), rtol=1e-12)
    last = path.iloc[-1]
    assert last["spot"] == trade.settlement_price
    assert last["call_mark"] == pytest.approx(max(trade.settlement_price - trade.strike, 0.0))
    assert last["pnl_vs_hodl"] == trade.pnl_vs_hodl
    np.testing.assert_allclose(
        path["covered_value"], 2.0 * path["spot"] + path["pnl_vs_hodl"], rtol=1e-12
    )
    with pytest.raises(KeyError, match=f"offered: {offered[0].instrument_name}"):
        sim.simulate_call(t, "BTC-1JAN30-1000000-C", 1.0)


def test_candidates_frame_and_labels_show_the_chains_own_quote_fields(
    sim: CoveredCallSimulator, market: SyntheticMarket
) -> None:
    # every quote column, row by row, against the source's own chain at that decision time
    frame = sim.candidates_frame()
    labels = sim.counterfactual_labels()
    sells = labels[labels["action"] == "SELL_CALL"]
    checked = 0
    for t in sim.decision_times()[::9]:
        cands = sim.candidates(t)
        chain = {o.instrument_name: o for o in market.list_option_chain("BTC", t)}
        rows = frame[frame["decision_time"] == t]
        lab = sells[sells["decision_time"] == t]
        assert list(rows["instrument_name"]) == [c.instrument_name for c in cands]
        assert list(lab["instrument_name"]) == [c.instrument_name for c in cands]
        for c, (_, row), (_, lrow) in zip(cands, rows.iterrows(), lab.iterrows(), strict=True):
            o = chain[c.instrument_name]
            assert row["premium_usd"] == c.premium_usd == o.bid_price
            assert row["dte_days"] == pytest.approx((o.expiry - t) / pd.Timedelta(days=1))
            for field in ("mark_price", "mark_iv", "delta", "bid_price", "ask_price"):
                assert row[field] == pytest.approx(getattr(o, field), rel=1e-12), field
                assert lrow[field] == pytest.approx(getattr(o, field), rel=1e-12), field
            checked += 1
    assert checked > 10
    # doing nothing: no cash flows, at the spot of the bar labelled t
    nothing = labels[labels["action"] == "DO_NOTHING"].set_index("decision_time")
    times = sim.decision_times()
    closes = market.get_spot_ohlc("BTC", times[0], times[-1], "1h")["close"]
    np.testing.assert_allclose(nothing.loc[times, "underlying_price"], closes.reindex(times))
    for col in ("premium", "premium_per_coin", "fees", "payoff", "pnl_vs_hodl", "pnl_coin"):
        assert (nothing[col] == 0.0).all(), col


def test_pnl_coin_books_each_cash_flow_at_the_price_of_its_own_moment(
    sim: CoveredCallSimulator, market: SyntheticMarket
) -> None:
    # premium net of the open fee at the sale's underlying price; payoff plus the delivery fee
    # at the settlement price (a fee is always a cost, in coin as in USD)
    trades = sim.simulate_policy(always_sell()).trades
    assert trades and all(t.open_fee_usd > 0 for t in trades)
    for t in trades:
        want = (t.premium_usd - t.open_fee_usd) / t.open_underlying_price - (
            t.payoff_usd + t.close_fee_usd
        ) / t.settlement_price
        assert t.pnl_coin == pytest.approx(want, rel=1e-12), t.instrument_name
        # the rest of the trade record: value per coin at expiry, the chain's IV, the note
        assert t.close_price == pytest.approx(max(t.settlement_price - t.strike, 0.0))
        quote = next(
            o
            for o in market.list_option_chain("BTC", t.open_time)
            if o.instrument_name == t.instrument_name
        )
        assert t.open_iv == pytest.approx(quote.mark_iv, rel=1e-12)
        itm = t.settlement_price > t.strike
        assert t.notes == ("expired in the money" if itm else "expired worthless")


class DropsHeldCall(ProtocolOnly):
    """Chains without `dropped` after `after`, and no spot bars in the `gap` window."""

    def __init__(self, market, dropped=None, after=None, gap=()) -> None:
        super().__init__(market)
        self.dropped, self.drop_after, self.gap = dropped, after, gap

    def list_option_chain(self, underlying, as_of):
        chain = self.market.list_option_chain(underlying, as_of)
        if self.dropped and pd.Timestamp(as_of) > self.drop_after:
            chain = [c for c in chain if c.instrument_name != self.dropped]
        return chain

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        bars = self.market.get_spot_ohlc(underlying, start, end, timeframe)
        if self.gap:
            lo, hi = self.gap
            bars = bars[(bars.index < lo) | (bars.index > hi)]
        return bars


def test_a_held_call_missing_from_the_chain_is_marked_and_bought_back_at_its_bar(
    market: SyntheticMarket,
) -> None:
    # the second decision's chain lacks the call sold at the first: position mark and buy-back
    # come from the call's own bar close at that decision (plus slippage), by a hand ledger
    cfg = _cfg(end="2024-03-10", hold_to_expiry=False, decision_interval_bars=24, slippage_bps=25)
    plain = CoveredCallSimulator(market, cfg)
    t0 = next(t for t in plain.decision_times() if plain.candidates(t))
    sold = plain.candidates(t0)[-1].instrument_name
    t1 = t0 + pd.Timedelta(hours=24)
    src = DropsHeldCall(market, dropped=sold, after=t0)
    s = CoveredCallSimulator(src, cfg)
    seen: list[float] = []

    def sell_then_roll(state, candidates):
        if state.position is None:
            return next(c for c in candidates if c.instrument_name == sold)
        seen.append(state.position.mark_price)
        return candidates[0] if candidates else None

    res = s.simulate_policy(sell_then_roll)
    bar_close = float(market.get_option_ohlc(sold, t1, t1, "1h")["close"].loc[t1])
    assert seen[0] == pytest.approx(bar_close, rel=1e-12)
    first = res.trades[0]
    assert first.instrument_name == sold and first.close_time == t1
    assert first.close_price == pytest.approx(bar_close * (1 + 25 / 1e4), rel=1e-12)
    spot = float(market.get_spot_ohlc("BTC", t1, t1, "1h")["close"].loc[t1])
    assert first.close_underlying_price == pytest.approx(spot, rel=1e-12)
    assert first.payoff_usd == pytest.approx(first.size * first.close_price, rel=1e-12)


class NoAskForHeldCall(ProtocolOnly):
    """Chains in which `name` has no ask after `after` (bid and mark still quoted)."""

    def __init__(self, market, name, after) -> None:
        super().__init__(market)
        self.name, self.after = name, after

    def list_option_chain(self, underlying, as_of):
        chain = self.market.list_option_chain(underlying, as_of)
        if pd.Timestamp(as_of) <= self.after:
            return chain
        return [replace(c, ask_price=None) if c.instrument_name == self.name else c for c in chain]


def test_a_held_call_without_an_ask_is_bought_back_at_its_mark_plus_slippage(
    market: SyntheticMarket,
) -> None:
    # fill="bid" buys back at the ask; with no ask quoted, the chain's own mark plus slippage
    cfg = _cfg(end="2024-03-10", hold_to_expiry=False, decision_interval_bars=24, slippage_bps=25)
    plain = CoveredCallSimulator(market, cfg)
    t0 = next(t for t in plain.decision_times() if plain.candidates(t))
    sold = plain.candidates(t0)[-1].instrument_name
    t1 = t0 + pd.Timedelta(hours=24)
    s = CoveredCallSimulator(NoAskForHeldCall(market, sold, t0), cfg)

    def sell_then_roll(state, candidates):
        if state.position is None:
            return next(c for c in candidates if c.instrument_name == sold)
        return candidates[0] if candidates else None

    first = s.simulate_policy(sell_then_roll).trades[0]
    quote = next(c for c in market.list_option_chain("BTC", t1) if c.instrument_name == sold)
    assert first.instrument_name == sold and first.close_time == t1
    assert first.close_price == pytest.approx(quote.mark_price * (1 + 25 / 1e4), rel=1e-12)
    assert first.close_underlying_price == pytest.approx(quote.underlying_price, rel=1e-12)


def test_spot_stale_flags_exactly_the_decisions_inside_a_bar_gap(market: SyntheticMarket) -> None:
    cfg = _cfg()
    times = CoveredCallSimulator(market, cfg).decision_times()
    lo, hi = times[3] - pd.Timedelta(minutes=30), times[4] + pd.Timedelta(minutes=30)
    s = CoveredCallSimulator(DropsHeldCall(market, gap=(lo, hi)), cfg)
    # asked and holding (never_sell), selling, and not asked while a call is open (always_sell)
    for policy in (never_sell(), always_sell()):
        res = s.simulate_policy(policy)
        assert [d.decision_time for d in res.decisions if d.spot_stale] == [times[3], times[4]]


def test_equity_vs_hodl_is_the_named_difference_of_the_two_curves(
    sim: CoveredCallSimulator,
) -> None:
    res = sim.simulate_policy(always_sell())
    assert res.equity_vs_hodl.name == "equity_vs_hodl" and res.hodl_curve.name == "hodl"
    diff = [e - h for e, h in zip(res.equity_curve, res.hodl_curve, strict=True)]
    np.testing.assert_allclose(res.equity_vs_hodl.to_numpy(), diff, rtol=0, atol=1e-9)


def test_an_expiry_without_any_bar_cannot_be_settled_and_says_what_was_tried(
    market: SyntheticMarket,
) -> None:
    s = CoveredCallSimulator(ProtocolOnly(market), _cfg())
    # 08:30 is on the 1m/5m/15m/30m grids but not on the 1h bars of the replay
    at = pd.Timestamp("2024-02-05 08:30", tz="UTC")
    s.source = DropsHeldCall(market, gap=(at, at))
    with pytest.raises(ValueError, match=r"expiring 2024-02-05T08:30:00\+00:00") as err:
        s._close_at(at)
    tried = str(err.value).split("(tried ")[1].split(" and the")[0]
    assert tried == "1m, 5m, 15m"  # the finer timeframes whose grid holds 08:30
    off_grid = {"08:20": "1m, 5m", "08:20:30": "none"}
    for hhmm, want in off_grid.items():
        at = pd.Timestamp(f"2024-02-05 {hhmm}", tz="UTC")
        s.source = DropsHeldCall(market, gap=(at, at))
        with pytest.raises(ValueError, match=f"tried {want} and the 1h bars"):
            s._close_at(at)
    assert "1h bars of the replay" in str(err.value)


class CountsOptionBars(ProtocolOnly):
    """Counts the option-bar requests the simulator makes."""

    def __init__(self, market) -> None:
        super().__init__(market)
        self.requests: list[tuple[str, pd.Timestamp, pd.Timestamp]] = []

    def get_option_ohlc(self, instrument_name, start, end, timeframe):
        self.requests.append((instrument_name, pd.Timestamp(start), pd.Timestamp(end)))
        return super().get_option_ohlc(instrument_name, start, end, timeframe)


def test_a_cached_mark_path_is_reused_only_when_it_covers_the_asked_bars(
    market: SyntheticMarket,
) -> None:
    src = CountsOptionBars(market)
    s = CoveredCallSimulator(src, _cfg())
    t = next(t for t in s.decision_times() if s.candidates(t))
    name = s.candidates(t)[0].instrument_name
    a = int(np.searchsorted(s.bar_ns, t.value))
    one = np.array([name])

    def load(lo: int, hi: int) -> None:
        s._ensure_paths(one, np.array([lo]), np.array([hi]))

    def covers(lo: int, hi: int) -> None:
        start, path = s._paths[name]
        assert start <= lo and start + len(path) - 1 >= hi
        bars = pd.to_datetime(s.bar_ns[lo : hi + 1], utc=True)
        want = market.get_option_ohlc(name, bars[0], bars[-1], "1h")["close"].reindex(bars)
        np.testing.assert_allclose(path[lo - start : hi - start + 1], want.to_numpy(), rtol=1e-12)

    src.requests.clear()
    load(a + 2, a + 5)
    covers(a + 2, a + 5)
    n = len(src.requests)
    assert n == 1
    for lo, hi in ((a + 2, a + 5), (a + 3, a + 4), (a + 2, a + 2), (a + 5, a + 5)):
        load(lo, hi)  # inside the cached range, at its edges included: no new request
    assert len(src.requests) == n
    for lo, hi in ((a + 2, a + 6), (a + 2, a + 8), (a + 1, a + 8), (a, a + 8)):
        load(lo, hi)  # one or two bars past either end: reloaded over the union
        n += 1
        assert len(src.requests) == n
        covers(lo, hi)
        covers(a + 2, a + 5)  # never shrinks


QUOTE_FIELDS = (
    "strike", "underlying_price", "mark_price", "bid_price", "ask_price", "mark_price_coin",
    "bid_price_coin", "ask_price_coin", "mark_iv", "bid_iv", "ask_iv", "delta", "open_interest",
)  # fmt: skip


def test_each_candidate_carries_its_chain_snapshots_own_quotes(
    sim: CoveredCallSimulator, market: SyntheticMarket
) -> None:
    checked = 0
    for t in sim.decision_times()[::15]:
        chain = {o.instrument_name: o for o in market.list_option_chain("BTC", t)}
        for c in sim.candidates(t):
            o = chain[c.instrument_name]
            for field in QUOTE_FIELDS:
                want, got = getattr(o, field), getattr(c, field)
                assert (got is None) == (want is None), (t, c.instrument_name, field)
                if want is not None:
                    assert got == pytest.approx(want, rel=1e-12), (t, c.instrument_name, field)
            assert c.ask_price is not None and c.ask_price > c.bid_price
            checked += 1
    assert checked >= 20


def test_candidates_frame_has_one_column_per_candidate_field_and_a_plain_row_index(
    sim: CoveredCallSimulator, market: SyntheticMarket
) -> None:
    from dataclasses import fields

    frame = sim.candidates_frame()
    hints = {"hist_count", "hist_reward"}  # per-decision history, not a quote of the call
    assert set(frame.columns) == {"decision_time"} | {f.name for f in fields(CallCandidate)} - hints
    assert frame.columns[0] == "decision_time"  # the key first, as candidates files show it
    assert list(frame.index) == list(range(len(frame))) and len(frame) > 0
    t = sim.decision_times()[40]
    rows = frame[frame["decision_time"] == t]
    chain = {o.instrument_name: o for o in market.list_option_chain("BTC", t)}
    assert len(rows) > 0
    for _, row in rows.iterrows():
        assert row["ask_price"] == pytest.approx(chain[row["instrument_name"]].ask_price, rel=1e-12)


class NoHistoryBefore(ProtocolOnly):
    """Spot bars only from `first` on: no warm-up history for the look-back features."""

    def __init__(self, market: SyntheticMarket, first: pd.Timestamp) -> None:
        super().__init__(market)
        self.first = first

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        bars = self.market.get_spot_ohlc(underlying, start, end, timeframe)
        return bars[bars.index >= self.first]


class RefusesHistoryBefore(NoHistoryBefore):
    """Raises ValueError for a range starting before `first`, as a source of limited span does."""

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        if pd.Timestamp(start) < self.first:
            raise ValueError(f"no spot data before {self.first}")
        return super().get_spot_ohlc(underlying, start, end, timeframe)


@pytest.mark.parametrize("source_type", [NoHistoryBefore, RefusesHistoryBefore])
def test_features_without_enough_history_reach_the_state_as_none(market, source_type) -> None:
    cfg = _cfg(end="2024-02-20")
    s = CoveredCallSimulator(source_type(market, cfg.start_ts), cfg)
    first = s.build_state(cfg.start_ts)
    assert (first.return_1d, first.return_7d, first.realized_vol_7d) == (None, None, None)
    assert first.realized_vol_30d is None and first.iv_rv_spread is None
    assert first.atm_iv is not None
    # one day in: the 1-day return exists (a plain ratio of the two hourly closes), 7-day not
    day = cfg.start_ts + pd.Timedelta(days=1)
    state = s.build_state(day)
    close = market.get_spot_ohlc("BTC", cfg.start_ts, day, "1h")["close"]
    assert state.return_1d == pytest.approx(close.loc[day] / close.loc[cfg.start_ts] - 1, rel=1e-9)
    assert state.return_7d is None and state.realized_vol_7d is None


def test_decision_records_note_no_candidates_exactly_when_none_were_offered(
    sim: CoveredCallSimulator,
) -> None:
    res = sim.simulate_policy(never_sell())
    empty = 0
    for d in res.decisions:
        assert d.decision_time.tz is not None and d.decision_time.utcoffset() == pd.Timedelta(0)
        offered = sim.candidates(d.decision_time)
        assert d.note == ("" if offered else "no candidates"), d.decision_time
        empty += not offered
    assert 0 < empty < len(res.decisions)
    # a seller also holds (not asked) between sale and expiry: those records are UTC too
    held = sim.simulate_policy(always_sell()).decisions
    assert any(not d.asked for d in held)
    assert all(d.decision_time.utcoffset() == pd.Timedelta(0) for d in held)


def test_history_hint_is_the_mean_realised_bps_of_settled_same_bucket_calls(
    sim: CoveredCallSimulator, market: SyntheticMarket
) -> None:
    from harness.engine.hints import DELTA_EDGES, DTE_EDGES

    def bucket_of(c: CallCandidate) -> tuple[int, int]:
        return (sum(c.delta >= e for e in DELTA_EDGES), sum(c.dte_days >= e for e in DTE_EDGES))

    def realised_bps(c: CallCandidate) -> float:
        # hold to expiry, per coin, by Deribit's fee rules, in bps of the spot at the sale
        s_t = market.settlement_price("BTC", c.expiry)
        payoff = max(s_t - c.strike, 0.0)
        fee = min(0.0003 * c.underlying_price, 0.125 * c.premium_usd)
        dfee = min(0.00015 * s_t, 0.125 * payoff) if payoff > 0 else 0.0
        return (c.premium_usd - fee - payoff - dfee) / c.underlying_price * 1e4

    times = sim.decision_times()
    offered = [(t, c) for t in times for c in sim.candidates(t)]
    checked = 0
    for t in times[len(times) // 2 :: 37]:
        for c in sim.candidates(t):
            past = [
                realised_bps(p)
                for _, p in offered
                if bucket_of(p) == bucket_of(c) and p.expiry < pd.Timestamp(t)
            ]
            assert c.hist_count == len(past), (t, c.instrument_name)
            if past:
                assert c.hist_reward == pytest.approx(sum(past) / len(past), rel=1e-9, abs=1e-9)
                checked += 1
            else:
                assert c.hist_reward is None
    assert checked >= 5


class LateOptionBars(ProtocolOnly):
    """Option bars of `name` start only at `first`: a leading gap after the sale."""

    def __init__(self, market: SyntheticMarket, name: str, first: pd.Timestamp) -> None:
        super().__init__(market)
        self.name, self.first = name, first

    def get_option_ohlc(self, instrument_name, start, end, timeframe):
        bars = super().get_option_ohlc(instrument_name, start, end, timeframe)
        if instrument_name == self.name:
            bars = bars[bars.index >= self.first]
        return bars


def test_a_leading_gap_in_option_bars_is_marked_at_the_sale_quote_carried_forward(
    market: SyntheticMarket,
) -> None:
    cfg = _cfg(end="2024-02-20")
    plain = CoveredCallSimulator(market, cfg)
    t0 = next(t for t in plain.decision_times() if plain.candidates(t))
    sold = plain.candidates(t0)[0].instrument_name
    first_bar = t0 + pd.Timedelta(hours=3)
    s = CoveredCallSimulator(LateOptionBars(market, sold, first_bar), cfg)

    def sell_once(state, candidates):
        if state.time == t0:
            return next(c for c in candidates if c.instrument_name == sold)
        return None

    res = s.simulate_policy(sell_once)
    trade = res.trades[0]
    quote = next(c for c in market.list_option_chain("BTC", t0) if c.instrument_name == sold)
    cash = trade.premium_usd - trade.open_fee_usd
    # before the first bar: the mark the seller saw at the sale, carried forward
    for h in range(3):
        t = t0 + pd.Timedelta(hours=h)
        want = cash - trade.size * quote.mark_price
        assert res.equity_vs_hodl.loc[t] == pytest.approx(want, rel=1e-9), t
    # from the first bar on: the call's own bar close
    close = float(market.get_option_ohlc(sold, first_bar, first_bar, "1h")["close"].loc[first_bar])
    want = cash - trade.size * close
    assert res.equity_vs_hodl.loc[first_bar] == pytest.approx(want, rel=1e-9)


def test_candidate_economics_follow_their_documented_definitions(
    sim: CoveredCallSimulator,
) -> None:
    """breakeven = strike + premium, premium % of spot, its 365-day yield, the strike's distance
    (mutation pass 5: a breakeven of strike - premium went unnoticed)."""
    checked = 0
    for t in sim.decision_times()[::15]:
        for c in sim.candidates(t):
            spot = c.underlying_price
            assert c.breakeven == pytest.approx(c.strike + c.premium_usd, rel=1e-12)
            assert c.premium_pct == pytest.approx(c.premium_usd / spot * 100, rel=1e-12)
            assert c.annualized_yield_pct == pytest.approx(
                c.premium_usd / spot * 100 * 365 / c.dte_days, rel=1e-12
            )
            assert c.strike_distance_pct == pytest.approx((c.strike / spot - 1) * 100, rel=1e-12)
            checked += 1
    assert checked >= 20


def test_a_span_shorter_than_the_target_tenor_has_no_decisions(market: SyntheticMarket) -> None:
    """No call of `target_dte` days fits between start and end: an empty, still named index."""
    cfg = _cfg(start="2024-02-01", end="2024-02-05", target_dte=7)
    times = CoveredCallSimulator(market, cfg).decision_times()
    assert len(times) == 0 and times.name == "decision_time" and str(times.tz) == "UTC"


def test_decision_times_are_a_named_utc_grid_of_the_decision_interval(
    sim: CoveredCallSimulator,
) -> None:
    times = sim.decision_times()
    assert times.name == "decision_time" and str(times.tz) == "UTC" and len(times) > 2
    step = sim.bar * sim.config.decision_interval_bars
    assert (np.diff(times.asi8) == step.value).all()
