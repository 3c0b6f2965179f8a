"""Synthetic worlds and anchors: the documented span, no year-end pinning, calibration worlds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.data.worlds import BTC_LEVELS, WORLDS
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig


@pytest.mark.parametrize(
    ("start", "end"), [("2019-01-01", "2019-01-20"), ("2030-12-10", "2030-12-31")]
)
def test_the_documented_span_works_at_both_ends(start: str, end: str) -> None:
    cfg = CallSimulationConfig(underlying="BTC", start=start, end=end, decision_interval_bars=6)
    sim = CoveredCallSimulator(SyntheticMarket(seed=2), cfg)
    assert len(sim.cand_row) > 0


def test_year_start_price_is_the_path_at_jan_1(market: SyntheticMarket) -> None:
    t = pd.Timestamp("2024-01-01", tz="UTC")
    assert market.year_start_price("BTC", 2024) == pytest.approx(market.spot_at("BTC", [t])[0])


def test_the_last_week_of_a_year_is_not_predictable_from_public_levels() -> None:
    # before issue #15 the Jan-1 price was pinned to the documented level: the last week's
    # log return was predicted from public prices with R^2 0.92
    predicted, actual = [], []
    for seed in range(6):
        m = SyntheticMarket(seed=seed)
        for year in (2022, 2023):
            week = m.spot_at("BTC", [pd.Timestamp(f"{year}-12-25", tz="UTC")])[0]
            jan1 = m.year_start_price("BTC", year + 1)
            predicted.append(np.log(BTC_LEVELS[year + 1] / week))
            actual.append(np.log(jan1 / week))
    r = np.corrcoef(predicted, actual)[0, 1]
    assert r**2 < 0.5
    assert all(abs(a) > 1e-6 for a in actual)


def test_anchor_historical_follows_eras_and_none_does_not() -> None:
    def mean_2020_return(anchor: str) -> float:
        rets = []
        for seed in range(12):
            m = SyntheticMarket(seed=seed, anchor=anchor)  # type: ignore[arg-type]
            rets.append(np.log(m.year_start_price("BTC", 2021) / m.year_start_price("BTC", 2020)))
        return float(np.mean(rets))

    history = np.log(BTC_LEVELS[2021] / BTC_LEVELS[2020])  # +1.39
    assert mean_2020_return("historical") == pytest.approx(history, abs=0.5)
    assert abs(mean_2020_return("none")) < 0.5


def test_worlds_and_their_errors() -> None:
    assert set(WORLDS) == {"realistic", "placebo", "rich_premium"}
    with pytest.raises(ValueError, match="known worlds: realistic, placebo, rich_premium"):
        SyntheticMarket(world="bubble")
    with pytest.raises(ValueError, match="martingale"):
        SyntheticMarket(world="placebo", anchor="historical")
    assert SyntheticMarket(seed=3, world="placebo").fingerprint() == (
        "synthetic(seed=3, world=placebo, anchor=none)"
    )
    assert SyntheticMarket(seed=3).fingerprint() == "synthetic(seed=3)"


def _chain(world: str) -> pd.DataFrame:
    m = SyntheticMarket(seed=4, world=world)
    frame = m.chain_frame("ETH", pd.DatetimeIndex(["2024-05-01T08:00Z"]), kinds=("call",))
    return frame[frame["expiry"] <= pd.Timestamp("2024-07-01", tz="UTC")]


def test_placebo_is_flat_at_the_true_vol_and_rich_premium_adds_a_constant_variance() -> None:
    true_vol = WORLDS["placebo"].coins["ETH"].mean_vol
    placebo = _chain("placebo")
    np.testing.assert_allclose(placebo["mark_iv"], true_vol, rtol=1e-12)
    rich = _chain("rich_premium")
    premium = WORLDS["rich_premium"].surface.variance_premium
    np.testing.assert_allclose(rich["mark_iv"] ** 2 - true_vol**2, premium, rtol=1e-9)
    # constant volatility: hourly log returns have the true vol, no jumps
    bars = SyntheticMarket(seed=4, world="placebo").get_spot_ohlc(
        "ETH", "2024-01-01", "2024-12-31", "1h"
    )
    rv = np.log(bars["close"]).diff().std() * np.sqrt(365 * 24)
    assert rv == pytest.approx(true_vol, rel=0.03)


def test_placebo_mark_sales_have_no_edge_on_average() -> None:
    # fill at mark, no fees: the mean pnl vs HODL of every candidate is zero within noise
    pnl = []
    for seed in range(2):
        cfg = CallSimulationConfig(
            underlying="BTC",
            start="2024-01-01",
            end="2024-04-30",
            decision_interval_bars=24,
            fill="mark",
            fee_rate=0.0,
            delivery_fee_rate=0.0,
        )
        sim = CoveredCallSimulator(SyntheticMarket(seed=seed, world="placebo"), cfg)
        lab = sim.counterfactual_labels()
        sells = lab[lab["action"] == "SELL_CALL"]
        pnl.extend(sells["pnl_vs_hodl"])
    pnl_a = np.asarray(pnl)
    # overlapping 7-day trades sold daily: ~7 per independent outcome
    se = pnl_a.std() / np.sqrt(len(pnl_a) / 7)
    assert abs(pnl_a.mean()) < 3 * se


def test_config_names_the_world_and_anchor() -> None:
    from harness.experiments.config import MarketConfig
    from harness.experiments.markets import build_market

    m = build_market(MarketConfig(seed=5, world="rich_premium"))
    assert isinstance(m, SyntheticMarket) and m.world == "rich_premium" and m.anchor == "none"
    m = build_market(MarketConfig(seed=5, anchor="none"))
    assert isinstance(m, SyntheticMarket) and m.world == "realistic" and m.anchor == "none"
    with pytest.raises(ValueError, match="unknown synthetic world"):
        MarketConfig(world="bubble")
