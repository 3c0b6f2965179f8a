"""flat_items: the states and candidates built in one pass are the ones built field by field."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.simulator import CoveredCallSimulator
from harness.state import DecisionState
from harness.types import CallCandidate, CallSimulationConfig


def _opt(x: float) -> float | None:
    return None if x != x else float(x)


def _candidate_by_field(sim: CoveredCallSimulator, k: int) -> CallCandidate:
    """One candidate read scalar by scalar from the store (the simulator's former way)."""
    st = sim.store
    r = int(sim.cand_row[k])
    col = st.columns
    f = sim.cand_fields
    hist_reward, hist_count = sim._history_hints()
    return CallCandidate(
        instrument_name=str(st.names[r]),
        underlying=sim.underlying,
        kind="call",
        strike=float(col["strike"][r]),
        expiry=pd.Timestamp(int(st.expiry_ns[r]), tz="UTC"),
        as_of=pd.Timestamp(int(st.as_of_ns[r]), tz="UTC"),
        underlying_price=float(col["underlying_price"][r]),
        mark_price=float(col["mark_price"][r]),
        bid_price=_opt(col["bid_price"][r]),
        ask_price=_opt(col["ask_price"][r]),
        mark_iv=float(col["mark_iv"][r]),
        delta=float(col["delta"][r]),
        gamma=float(col["gamma"][r]),
        vega=float(col["vega"][r]),
        theta=float(col["theta"][r]),
        open_interest=float(col["open_interest"][r]),
        mark_price_coin=_opt(col["mark_price_coin"][r]),
        bid_price_coin=_opt(col["bid_price_coin"][r]),
        ask_price_coin=_opt(col["ask_price_coin"][r]),
        bid_iv=_opt(col["bid_iv"][r]),
        ask_iv=_opt(col["ask_iv"][r]),
        dte_days=float(sim.cand_dte[k]),
        premium_usd=float(sim.cand_premium[k]),
        premium_pct=float(f["premium_pct"][k]),
        annualized_yield_pct=float(f["annualized_yield_pct"][k]),
        strike_distance_pct=float(f["strike_distance_pct"][k]),
        breakeven=float(f["breakeven"][k]),
        hist_reward=_opt(hist_reward[k]),
        hist_count=int(hist_count[k]),
    )


def _state_by_field(sim: CoveredCallSimulator, i: int) -> DecisionState:
    f = sim._features

    def val(name: str) -> float | None:
        x = f[name][i]
        return None if not np.isfinite(x) else float(x)

    iv, rv = val("atm_iv"), val("realized_vol_7d")
    as_of = sim._spot_as_of[i]
    return DecisionState(
        time=pd.Timestamp(int(sim.dec_ns[i]), tz="UTC").to_pydatetime(),
        underlying=sim.underlying,
        spot=float(f["spot"][i]),
        return_1d=val("return_1d"),
        return_7d=val("return_7d"),
        realized_vol_7d=rv,
        realized_vol_30d=val("realized_vol_30d"),
        atm_iv=iv,
        iv_rv_spread=None if iv is None or rv is None else iv - rv,
        spot_as_of=None
        if as_of == np.iinfo(np.int64).min
        else pd.Timestamp(int(as_of), tz="UTC").to_pydatetime(),
        spot_stale=bool(sim.spot_stale[i]),
        coins_held=sim.config.initial_spot_position,
        cash_usd=0.0,
    )


def _same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN, and the same types (a numpy scalar is not a float)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(
    "update",
    [
        {},  # the conftest config
        {"start": "2024-01-01", "target_delta": 0.35, "target_dte": 3, "hold_to_expiry": False},
    ],
)
def test_flat_items_are_the_field_by_field_states_and_candidates(
    market: SyntheticMarket, small_config: CallSimulationConfig, update: dict
) -> None:
    sim = CoveredCallSimulator(market, small_config.model_copy(update=update))
    items = sim.flat_items()
    times = sim.decision_times()
    assert len(items) == len(times) > 20
    n_cands = 0
    for i, ((state, cands), t) in enumerate(zip(items, times, strict=True)):
        want = _state_by_field(sim, i)
        assert state == want and state == sim.build_state(t)
        for k_field, v in want.model_dump().items():
            assert _same(getattr(state, k_field), v), (t, k_field)
        assert state.time.tzinfo == want.time.tzinfo
        assert cands == sim.candidates(t)
        ks = range(int(sim.cand_start[i]), int(sim.cand_stop[i]))
        assert len(cands) == len(ks)
        for c, k in zip(cands, ks, strict=True):
            ref = _candidate_by_field(sim, k)
            for name in CallCandidate.__dataclass_fields__:
                assert _same(getattr(c, name), getattr(ref, name)), (t, c.instrument_name, name)
            n_cands += 1
    assert n_cands > 50
    # the state objects are kept: a second call (another trial on this simulator) reuses them
    again = sim.flat_items()
    assert all(a[0] is b[0] for a, b in zip(items, again, strict=True))
    assert all(a[1] == b[1] and a[1] is not b[1] for a, b in zip(items, again, strict=True))


def test_flat_states_say_none_where_the_history_is_too_short(market: SyntheticMarket) -> None:
    cfg = CallSimulationConfig(
        underlying="BTC", start="2018-01-03", end="2018-01-20", timeframe="1h"
    )
    sim = CoveredCallSimulator(market, cfg)
    first = sim.flat_items()[0][0]
    assert (
        first.realized_vol_30d is None
        and first.iv_rv_spread == _state_by_field(sim, 0).iv_rv_spread
    )
