"""Pinned simulator results on the synthetic market (seed 7): load-time work must not move them.

Values were computed before the load-time and memory work of issue #15 item 14 (narrower chain
store, vectorized listings). Candidates and decision states are pinned exactly (digests of every
value); labels and replays by weighted sums that any changed cent moves (tolerance 1e-12
relative, far below a cent), so bit-level reordering of sums elsewhere cannot fail them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.policies import always_sell
from harness.simulator import CoveredCallSimulator
from harness.state import DecisionState
from harness.types import CallCandidate, CallSimulationConfig
from tests.data.test_synthetic_pinned import digest

CONFIGS = {
    "btc_4h": CallSimulationConfig(
        underlying="BTC",
        start="2024-01-01",
        end="2024-04-01",
        timeframe="1h",
        decision_interval_bars=4,
    ),
    "btc_roll": CallSimulationConfig(
        underlying="BTC",
        start="2024-01-01",
        end="2024-04-01",
        timeframe="1h",
        decision_interval_bars=4,
        hold_to_expiry=False,
    ),
    "eth_21d_gated": CallSimulationConfig(
        underlying="ETH",
        start="2023-05-01",
        end="2023-07-15",
        timeframe="1h",
        decision_interval_bars=2,
        target_dte=21,
        dte_tolerance=0.5,
        target_delta=0.3,
        fill="mid",
        min_bid_usd=60.0,
        max_spread_pct=5.0,
    ),
    "btc_1d": CallSimulationConfig(
        underlying="BTC",
        start="2022-03-01",
        end="2022-05-01",
        timeframe="1d",
        decision_interval_bars=1,
        target_dte=14,
        dte_tolerance=5,
    ),
}


def roll_when_short(state: DecisionState, cands: Sequence[CallCandidate]) -> CallCandidate | None:
    """Sell the first candidate when flat; roll to the last one once the open call has < 3 days."""
    if state.position is None:
        return cands[0] if cands else None
    if state.position.dte_days < 3 and cands:
        return cands[-1]
    return None


def weighted(values: np.ndarray) -> tuple[float, float]:
    """Sum and position-weighted sum (catches reordering) of the finite values."""
    v = np.where(np.isfinite(values), values, 0.0)
    return float(v.sum()), float((v * np.arange(1, len(v) + 1)).sum())


def summary(name: str) -> dict:
    cfg = CONFIGS[name]
    sim = CoveredCallSimulator(SyntheticMarket(seed=7), cfg)
    states = [sim.build_state(t).model_dump() for t in sim.decision_times()]
    state_frame = pd.DataFrame(states).drop(columns=["position"])
    labels = sim.counterfactual_labels()
    policy = roll_when_short if not cfg.hold_to_expiry else always_sell()
    res = sim.simulate_policy(policy)
    trades = pd.DataFrame([dataclasses.asdict(t) for t in res.trades])
    money = ["premium", "fees", "payoff", "pnl_vs_hodl", "pnl_coin", "regret"]
    return {
        "gates": dataclasses.asdict(sim.gate_counts),
        "candidates": digest(sim.candidates_frame()),
        "states": digest(state_frame),
        "labels_rows": len(labels),
        "labels_names": digest(labels[["decision_time", "action", "instrument_name"]]),
        "labels_money": {c: weighted(labels[c].to_numpy(dtype=float)) for c in money},
        "labels_drawdown": weighted(labels["max_drawdown_pct"].to_numpy(dtype=float)),
        "trades": digest(trades[["instrument_name", "open_time", "close_time", "notes"]]),
        "trades_pnl": weighted(trades["pnl_vs_hodl"].to_numpy(dtype=float)),
        "trades_close_price": weighted(trades["close_price"].to_numpy(dtype=float)),
        "metrics": {k: float(v) for k, v in res.metrics.items()},
    }


PINNED: dict[str, dict] = {
    "btc_4h": {
        "gates": {
            "in_band": 870,
            "expires_after_end": 0,
            "no_bid": 0,
            "bid_below_min": 0,
            "crossed": 0,
            "spread_too_wide": 0,
            "unfillable": 0,
            "offered": 870,
        },
        "candidates": "a203e5c8de8ff2b1",
        "states": "e41e26e917b2190c",
        "labels_rows": 1375,
        "labels_names": "35ea30c3bb2a8246",
        "labels_money": {
            "premium": (194984.62049351842, 132966172.30696197),
            "fees": (6615.980959921268, 4473689.067076195),
            "payoff": (1672.899618214884, 1797872.8139521708),
            "pnl_vs_hodl": (186695.73991538226, 126694610.4259336),
            "pnl_coin": (7.4051299197642715, 5345.1018653272795),
            "regret": (166657.03526396153, 111557339.70691635),
        },
        "labels_drawdown": (5048.693003680413, 3386373.559656303),
        "trades": "4042fb8720f49595",
        "trades_pnl": (2847.788160591282, 17625.58237940933),
        "trades_close_price": (0.0, 0.0),
        "metrics": {
            "final_equity_usd": 24151.84613863508,
            "final_pnl_usd": -6734.329108872866,
            "final_pnl_coin": 0.13367350781368703,
            "pnl_vs_hodl_usd": 2847.7881605912808,
            "hodl_pnl_usd": -9582.117269464146,
            "total_return_pct": -21.803700376971168,
            "annualized_return_pct": -62.71183342023312,
            "hodl_return_pct": -31.023968467048313,
            "sharpe": -2.4629389569658833,
            "sortino": -3.3066837957496134,
            "max_drawdown_pct": 24.14619865871317,
            "hodl_max_drawdown_pct": 33.24888560859923,
            "n_trades": 12.0,
            "itm_share": 0.0,
            "win_rate_vs_hodl": 1.0,
            "premium_collected_usd": 2941.2595423540047,
            "fees_paid_usd": 93.47138176272212,
            "upside_given_up_usd": 0.0,
        },
    },
    "btc_roll": {
        "gates": {
            "in_band": 870,
            "expires_after_end": 0,
            "no_bid": 0,
            "bid_below_min": 0,
            "crossed": 0,
            "spread_too_wide": 0,
            "unfillable": 0,
            "offered": 870,
        },
        "candidates": "a203e5c8de8ff2b1",
        "states": "e41e26e917b2190c",
        "labels_rows": 1375,
        "labels_names": "35ea30c3bb2a8246",
        "labels_money": {
            "premium": (194984.62049351842, 132966172.30696197),
            "fees": (6615.980959921268, 4473689.067076195),
            "payoff": (1672.899618214884, 1797872.8139521708),
            "pnl_vs_hodl": (186695.73991538226, 126694610.4259336),
            "pnl_coin": (7.4051299197642715, 5345.1018653272795),
            "regret": (166657.03526396153, 111557339.70691635),
        },
        "labels_drawdown": (5048.693003680413, 3386373.559656303),
        "trades": "c3909a745fc158d1",
        "trades_pnl": (1991.9035316833338, 11067.873848499905),
        "trades_close_price": (120.12486162342248, 521.4566159266374),
        "metrics": {
            "final_equity_usd": 23295.96150972713,
            "final_pnl_usd": -7590.213737780814,
            "final_pnl_coin": 0.09349878477312679,
            "pnl_vs_hodl_usd": 1991.9035316833324,
            "hodl_pnl_usd": -9582.117269464146,
            "total_return_pct": -24.57479334024446,
            "annualized_return_pct": -67.73586228651732,
            "hodl_return_pct": -31.023968467048313,
            "sharpe": -2.733428409862653,
            "sortino": -3.6647854281060597,
            "max_drawdown_pct": 26.881953357739153,
            "hodl_max_drawdown_pct": 33.24888560859923,
            "n_trades": 12.0,
            "itm_share": 0.0,
            "win_rate_vs_hodl": 1.0,
            "premium_collected_usd": 2219.807210682404,
            "fees_paid_usd": 107.77881737564763,
            "upside_given_up_usd": 0.0,
        },
    },
    "eth_21d_gated": {
        "gates": {
            "in_band": 406,
            "expires_after_end": 0,
            "no_bid": 0,
            "bid_below_min": 76,
            "crossed": 0,
            "spread_too_wide": 232,
            "unfillable": 0,
            "offered": 98,
        },
        "candidates": "a4534705363fb60e",
        "states": "d5946278c0065c8a",
        "labels_rows": 747,
        "labels_names": "825b0e7c01388d97",
        "labels_money": {
            "premium": (11929.93006535107, 5268160.24734483),
            "fees": (95.71459656889456, 41458.97322802206),
            "payoff": (9375.514199631485, 3487310.5505456),
            "pnl_vs_hodl": (2458.7012691506907, 1739390.7235712071),
            "pnl_coin": (1.2574314534047293, 694.491007244802),
            "regret": (14740.16067115231, 5728494.422987582),
        },
        "labels_drawdown": (1513.9745267387873, 717387.856854294),
        "trades": "d1b85e4af01310c9",
        "trades_pnl": (-443.5487953253536, -886.0333387135639),
        "trades_close_price": (813.2744823962439, 1626.5489647924878),
        "metrics": {
            "final_equity_usd": 1825.0597926657924,
            "final_pnl_usd": -1639.6616336260518,
            "final_pnl_coin": -0.19551578781517187,
            "pnl_vs_hodl_usd": -443.5487953253537,
            "hodl_pnl_usd": -1196.112838300698,
            "total_return_pct": -47.32448678798738,
            "annualized_return_pct": -95.582640878682,
            "hodl_return_pct": -34.52262652991559,
            "sharpe": -5.215170097358788,
            "sortino": -6.898549162477163,
            "max_drawdown_pct": 47.38622581676992,
            "hodl_max_drawdown_pct": 38.19081147822642,
            "n_trades": 3.0,
            "itm_share": 0.3333333333333333,
            "win_rate_vs_hodl": 0.6666666666666666,
            "premium_collected_usd": 373.0273262609618,
            "fees_paid_usd": 3.3016391900714317,
            "upside_given_up_usd": 813.2744823962439,
        },
    },
    "btc_1d": {
        "gates": {
            "in_band": 472,
            "expires_after_end": 0,
            "no_bid": 0,
            "bid_below_min": 0,
            "crossed": 0,
            "spread_too_wide": 0,
            "unfillable": 0,
            "offered": 472,
        },
        "candidates": "2c1740c7c8fd1627",
        "states": "aeee05d2b4a376a0",
        "labels_rows": 520,
        "labels_names": "1a4546a6860c3307",
        "labels_money": {
            "premium": (565092.371754295, 154666738.77004656),
            "fees": (9595.447810442169, 2478971.811230707),
            "payoff": (3360.331982146934, 803621.8176394763),
            "pnl_vs_hodl": (552136.5919617058, 151384145.14117637),
            "pnl_coin": (8.1922005162623, 2261.3037996996386),
            "regret": (429103.3302724847, 115069365.27375413),
        },
        "labels_drawdown": (4320.462076164669, 1219032.9890956148),
        "trades": "a0b68843526a3997",
        "trades_pnl": (4638.934955418999, 12248.2408819225),
        "trades_close_price": (0.0, 0.0),
        "metrics": {
            "final_equity_usd": 70700.37427703849,
            "final_pnl_usd": 1190.3439816619066,
            "final_pnl_coin": 0.07022152413050509,
            "pnl_vs_hodl_usd": 4638.934955418998,
            "hodl_pnl_usd": -3448.590973757091,
            "total_return_pct": 1.7124780072798718,
            "annualized_return_pct": 10.694112211306939,
            "hodl_return_pct": -4.961285384429582,
            "sharpe": 0.4610282141758066,
            "sortino": 0.6901587915800229,
            "max_drawdown_pct": 16.95507819387787,
            "hodl_max_drawdown_pct": 22.24482790566623,
            "n_trades": 4.0,
            "itm_share": 0.0,
            "win_rate_vs_hodl": 1.0,
            "premium_collected_usd": 4723.4411615244935,
            "fees_paid_usd": 84.50620610549527,
            "upside_given_up_usd": 0.0,
        },
    },
}


def _same(got: object, want: object) -> bool:
    if isinstance(want, float):
        if math.isnan(want):
            return isinstance(got, float) and math.isnan(got)
        return got == pytest.approx(want, rel=1e-12, abs=1e-9)
    if isinstance(want, tuple | list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return got == want


@pytest.mark.parametrize("name", list(CONFIGS))
def test_simulation_is_pinned(name: str) -> None:
    got = summary(name)
    want = PINNED[name]
    bad = [k for k in want if not _same(got[k], want[k])]
    assert not bad, {k: (got[k], want[k]) for k in bad}
