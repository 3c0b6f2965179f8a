"""call_candidates: the column-wise builder gives the objects the constructor gives."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from harness.types import CallCandidate, call_candidates


def _rows() -> list[dict]:
    t0 = pd.Timestamp("2024-03-01 08:00", tz="UTC")
    out = []
    for j in range(5):
        out.append(
            dict(
                instrument_name=f"BTC-8MAR24-{60000 + 1000 * j}-C",
                underlying="BTC",
                kind="call",
                strike=60000.0 + 1000 * j,
                expiry=t0 + pd.Timedelta(days=7),
                as_of=t0 + pd.Timedelta(hours=j),
                underlying_price=58000.5,
                mark_price=900.0 - 50 * j,
                bid_price=None if j == 2 else 880.0 - 50 * j,
                ask_price=920.0 - 50 * j,
                mark_iv=0.55 + j / 100,
                delta=0.3 - j / 50,
                gamma=1e-5,
                vega=30.0,
                theta=-50.0,
                open_interest=float(j),
                mark_price_coin=0.015,
                bid_price_coin=None,
                ask_price_coin=0.016,
                bid_iv=0.54,
                ask_iv=None,
                dte_days=7.0 - j / 24,
                premium_usd=880.0 - 50 * j,
                premium_pct=1.5,
                annualized_yield_pct=78.0,
                strike_distance_pct=3.4 + j,
                breakeven=61000.0 + 1000 * j,
                hist_reward=None if j % 2 else 12.5,
                hist_count=j,
            )
        )
    return out


def test_columns_give_the_constructors_objects() -> None:
    rows = _rows()
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    made = call_candidates(columns)
    want = [CallCandidate(**r) for r in rows]
    assert made == want
    assert [hash(c) for c in made] == [hash(c) for c in want]
    for c, r in zip(made, rows, strict=True):
        assert type(c) is CallCandidate
        for name, v in r.items():
            assert getattr(c, name) is v  # the very values given, not copies or conversions
        assert dataclasses.replace(c) == c
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.strike = 1.0  # type: ignore[misc]


def test_every_field_is_required_and_columns_align() -> None:
    rows = _rows()
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    with pytest.raises(ValueError, match="missing fields \\['hist_count'\\]"):
        call_candidates({k: v for k, v in columns.items() if k != "hist_count"})
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        call_candidates({**columns, "colour": ["red"] * len(rows)})
    with pytest.raises(ValueError, match="differ in length"):
        call_candidates({**columns, "strike": columns["strike"][:-1]})
    assert call_candidates({k: [] for k in columns}) == []
