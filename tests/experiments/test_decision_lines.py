"""DecisionLines: a row's line is exactly strict_json.dumps of the whole row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import strict_json
from harness.experiments import decision_lines
from harness.experiments.decision_lines import DecisionLines, own_text
from harness.state import DecisionState
from harness.types import CallCandidate

T0 = datetime(2024, 1, 1, tzinfo=UTC)
_num = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
_name = st.text(min_size=1, max_size=12)  # any unicode, quotes and backslashes included


def _candidate(name: str) -> CallCandidate:
    t = pd.Timestamp(T0)
    return CallCandidate(
        instrument_name=name,
        underlying="BTC",
        kind="call",
        strike=50_000.0,
        expiry=t + pd.Timedelta(days=7),
        as_of=t,
        underlying_price=45_000.0,
        mark_price=100.0,
        bid_price=95.0,
        ask_price=105.0,
        mark_iv=0.5,
        delta=0.25,
        gamma=0.0,
        vega=0.0,
        theta=0.0,
        dte_days=7.0,
        premium_usd=95.0,
        premium_pct=0.2,
        annualized_yield_pct=10.0,
        strike_distance_pct=11.0,
        breakeven=50_095.0,
    )


@st.composite
def _decisions(draw: st.DrawFn) -> tuple[list[tuple[DecisionState, list[CallCandidate]]], list]:
    n = draw(st.integers(1, 4))
    items = []
    for i in range(n):
        state = DecisionState(
            time=T0 + timedelta(hours=4 * i),
            underlying="BTC",
            spot=draw(st.floats(allow_nan=True, allow_infinity=True)),
            return_1d=draw(_num),
            return_7d=draw(_num),
            realized_vol_7d=draw(_num),
            realized_vol_30d=draw(_num),
            atm_iv=draw(_num),
            iv_rv_spread=draw(_num),
            spot_stale=draw(st.booleans()),
            coins_held=1.0,
            cash_usd=0.0,
        )
        cands = [_candidate(x) for x in draw(st.lists(_name, max_size=3))]
        items.append((state, cands))
    return items, [pd.Timestamp(T0 + timedelta(hours=4 * i)).isoformat() for i in range(n)]


_own = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["SELL_CALL", "DO_NOTHING"]),
        "instrument_name": st.one_of(st.none(), _name),
        "valid": st.booleans(),
        "invalid_reason": st.one_of(st.none(), st.text(max_size=20)),
        "error": st.one_of(st.none(), st.text(max_size=20)),
        "reward": st.floats(allow_nan=True, allow_infinity=True),
        "best_reward": st.floats(allow_nan=True, allow_infinity=True),
        "best_instrument": st.one_of(st.none(), _name),
        "regret": st.floats(allow_nan=True, allow_infinity=True),
        "llm": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "model": _name,
                    "cost_usd": _num,
                    "raw": st.text(max_size=30),
                    "latency_s": _num,
                    "when": st.just(pd.Timestamp(T0)),  # only `default=str` can write it
                }
            ),
        ),
    }
)


@given(_decisions(), _name, _own)
def test_every_line_is_strict_json_dumps_of_its_row(
    decisions: tuple[list, list], policy: str, own: dict[str, Any]
) -> None:
    items, times_iso = decisions
    lines = DecisionLines(items, times_iso)
    for i in range(len(items)):
        row = lines.row(i, policy, own)
        assert list(row)[:6] == [
            "decision_time",
            "policy",
            "spot",
            "spot_stale",
            "state",
            "candidates",
        ]
        text = lines.line(i, strict_json.dumps(policy), own)
        assert text == strict_json.dumps(row, default=str)
        json.loads(text, parse_constant=strict_json.reject_constant)  # strict


@given(_decisions(), _name, _own)
def test_a_second_run_over_the_same_states_reuses_their_part_and_writes_the_same_lines(
    decisions: tuple[list, list], policy: str, own: dict[str, Any]
) -> None:
    """Trials sharing state objects (a sweep worker) share each state's fields and text."""
    items, times_iso = decisions
    first = DecisionLines(items, times_iso)
    # the same states, other candidate lists (another delta band)
    other = [(state, list(reversed(cands))) for state, cands in items]
    second = DecisionLines(other, times_iso)
    for i in range(len(items)):
        assert second.states[i] is first.states[i]
        row = second.row(i, policy, own)
        text = second.line(i, strict_json.dumps(policy), own)
        assert text == strict_json.dumps(row, default=str)
        assert row["candidates"] == [c.instrument_name for c in other[i][1]]


_finite = st.floats(allow_nan=False, allow_infinity=False)
# mostly the fast path's shape (a valid rule row), with every way out of it drawn too
_rule_own = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["SELL_CALL", "DO_NOTHING"]),
        "instrument_name": st.one_of(st.none(), _name),
        "valid": st.sampled_from([True, True, True, False, 1]),
        "invalid_reason": st.one_of(st.none(), st.none(), st.text(max_size=5)),
        "error": st.one_of(st.none(), st.none(), st.text(max_size=5)),
        "reward": st.one_of(_finite, _finite, st.floats(), st.integers(-5, 5)),
        "best_reward": st.one_of(_finite, _finite, st.floats(), st.just(np.float64(1.5))),
        "best_instrument": st.one_of(st.none(), _name),
        "regret": st.one_of(_finite, _finite, st.floats(), st.floats(1e308, 1.7e308)),
        "llm": st.one_of(st.none(), st.none(), st.just({"model": "m"})),
    }
)


@given(_rule_own, st.booleans())
def test_own_text_is_the_encoders_text_of_the_own_fields(
    own: dict[str, Any], reorder: bool
) -> None:
    if reorder:  # other key orders are the encoder's
        own = dict(reversed(own.items()))
    assert own_text(own) == strict_json.dumps(own, default=str)[1:]


def test_own_text_formats_a_plain_rule_row_without_the_encoder(monkeypatch) -> None:
    own = {
        "action": "SELL_CALL",
        "instrument_name": "BTC-5JAN24-32000-C",
        "valid": True,
        "invalid_reason": None,
        "error": None,
        "reward": 276.4214035256031,
        "best_reward": 305.77313495032865,
        "best_instrument": "BTC-4JAN24-31500-C",
        "regret": -0.0,
        "llm": None,
    }
    expected = strict_json.dumps(own)[1:]
    monkeypatch.setattr(decision_lines, "_text", lambda x: pytest.fail("encoder used"))
    assert own_text(own) == expected
    assert (
        own_text({**own, "instrument_name": None, "best_instrument": None})
        == (strict_json.dumps({**own, "instrument_name": None, "best_instrument": None})[1:])
    )


@given(
    _decisions(),
    _name,
    st.one_of(st.none(), st.just(""), _name),
    st.one_of(_finite, st.floats()),
    st.one_of(_finite, st.floats()),
    st.one_of(st.none(), _name),
)
def test_a_plain_row_and_line_are_those_of_its_own_fields(
    decisions: tuple[list, list],
    policy: str,
    name: str | None,
    reward: float,
    best: float,
    best_name: str | None,
) -> None:
    """`DecisionLines.plain_row` and `plain_line` (the runner's valid rule rows) = `row` and
    `line` of the own fields the runner builds for such a decision."""
    items, times_iso = decisions
    lines = DecisionLines(items, times_iso)
    own = {
        "action": "SELL_CALL" if name else "DO_NOTHING",
        "instrument_name": name,
        "valid": True,
        "invalid_reason": None,
        "error": None,
        "reward": reward,
        "best_reward": best,
        "best_instrument": best_name,
        "regret": best - reward,
        "llm": None,
    }
    for i in range(len(items)):
        row = lines.plain_row(i, policy, name, reward, best, best_name)
        line = lines.plain_line(i, strict_json.dumps(policy), name, reward, best, best_name)
        want = lines.row(i, policy, own)
        assert list(row) == list(want)
        assert strict_json.dumps(row) == strict_json.dumps(want)
        assert line == lines.line(i, strict_json.dumps(policy), own)
        assert line == strict_json.dumps(want, default=str)


def test_state_parts_keep_the_recently_used_states_when_full(monkeypatch) -> None:
    """Trials cycling through more state lists than fit keep the newest ones (least recently
    used go first), so a sweep worker's next trial of a DTE finds its states again."""
    monkeypatch.setattr(decision_lines, "_STATE_PARTS", decision_lines.OrderedDict())
    monkeypatch.setattr(decision_lines, "_MAX_STATE_PARTS", 4)
    states = [
        DecisionState(
            time=T0 + timedelta(hours=4 * i),
            underlying="BTC",
            spot=100.0 + i,
            return_1d=None,
            return_7d=None,
            realized_vol_7d=None,
            realized_vol_30d=None,
            atm_iv=0.5,
            iv_rv_spread=None,
            coins_held=1.0,
            cash_usd=0.0,
        )
        for i in range(6)
    ]
    made = {id(s): decision_lines._state_part(s)[0] for s in states[:4]}
    decision_lines._state_part(states[0])  # used again: now the newest
    decision_lines._state_part(states[4])  # full: states[1], the least recently used, goes
    assert decision_lines._state_part(states[0])[0] is made[id(states[0])]
    assert decision_lines._state_part(states[2])[0] is made[id(states[2])]
    assert id(states[1]) not in decision_lines._STATE_PARTS
    assert len(decision_lines._STATE_PARTS) == 4
