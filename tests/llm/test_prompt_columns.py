"""Every number a shipped prompt shows for a candidate is the candidate field it claims to show.

Candidates here have a distinct value in every field (bid, mark, ask and the fill all differ),
so showing the mark where the fill belongs, or one column in another's place, is caught. Shown
numbers are parsed back and compared within the precision they were printed with.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pandas as pd
import pytest

from harness.llm.anonymize import Anchor, AnonymizedView, PlainView
from harness.llm.prompts import build_context, load_prompt
from harness.types import CallCandidate
from tests.llm.fixtures import make_candidates, make_state

SPOT = 60_000.0


def _candidates() -> list[CallCandidate]:
    state = make_state(spot=SPOT)
    out = []
    for i, c in enumerate(make_candidates(state, n=3)):
        bid = 700.0 - 150.0 * i
        fill = bid * 0.985  # as if sold at the bid less slippage: neither bid, mark nor ask
        pct = fill / SPOT * 100
        out.append(
            replace(
                c,
                bid_price=bid,
                mark_price=bid * 1.07,
                ask_price=bid * 1.15,
                premium_usd=fill,
                premium_pct=pct,
                annualized_yield_pct=pct * 365 / c.dte_days * 1.001,  # distinct from a recompute
                strike_distance_pct=(c.strike / SPOT - 1) * 100,
                breakeven=c.strike + fill,
                mark_iv=0.48 + 0.07 * i,
                delta=0.31 - 0.07 * i,
            )
        )
    return out


def _number(text: str) -> tuple[float, float]:
    """Parsed value of a shown number and half a unit of its last printed digit."""
    s = text.strip().rstrip("%x").replace(",", "")
    decimals = len(s.split(".")[1]) if "." in s else 0
    return float(s), 0.5 * 10.0**-decimals + 1e-12


def _shows(text: str, expected: float, what: str) -> None:
    value, tol = _number(text)
    assert abs(value - expected) <= tol, f"{what}: shown {text!r}, expected {expected}"


def _v1_table(user: str) -> list[dict[str, str]]:
    lines = [ln for ln in user.splitlines() if ln.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [x.strip() for x in ln.strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def test_v1_table_columns_show_their_fields() -> None:
    state = make_state(spot=SPOT)
    cands = _candidates()
    context, _ = build_context(state, cands, PlainView())
    _, user = load_prompt("covered_call_v1").render(context)
    rows = _v1_table(user)
    assert len(rows) == len(cands)
    for row, c in zip(rows, cands, strict=True):
        assert row["name"] == c.instrument_name
        _shows(row["strike"], c.strike, "strike")
        _shows(row["strike/spot"], c.strike / SPOT, "strike/spot")
        _shows(row["days to expiry"], c.dte_days, "days to expiry")
        _shows(row["delta"], c.delta, "delta")
        _shows(row["IV"], c.mark_iv * 100, "IV")
        # the premium is the fill the policy would get, not the mark (or the bid)
        _shows(row["premium"], c.premium_usd, "premium")
        assert abs(_number(row["premium"])[0] - c.mark_price) > 1
        _shows(row["premium % spot"], c.premium_pct, "premium % spot")
        _shows(row["annualized yield"], c.annualized_yield_pct, "annualized yield")


def test_v1_anonymized_table_indexes_prices_to_the_anchor() -> None:
    state = make_state(spot=SPOT)
    cands = _candidates()
    anchor = Anchor(state.time, 50_000.0)
    context, names = build_context(state, cands, AnonymizedView(anchor))
    _, user = load_prompt("covered_call_v1").render(context)
    rows = _v1_table(user)
    assert "strike" not in rows[0]
    for i, (row, c) in enumerate(zip(rows, cands, strict=True)):
        assert row["name"] == f"C{i + 1}" and names[row["name"]] == c.instrument_name
        _shows(row["premium"], c.premium_usd / 50_000.0 * 100, "indexed premium")
        _shows(row["strike/spot"], c.strike / SPOT, "strike/spot")
        for real in (c.instrument_name, f"{c.strike:,.0f}"):
            assert real not in user


_V2 = re.compile(
    r"^- (?P<name>\S+): strike (?P<strike>[\d,.]+), strike/spot (?P<moneyness>[\d.]+) "
    r"\((?P<distance>[+-][\d.]+)%\), (?P<dte>[\d.]+)d, delta (?P<delta>[\d.]+), "
    r"IV (?P<iv>[\d.]+)%, bid (?P<bid>[\d,.]+), premium (?P<premium_pct>[\d.]+)% of spot "
    r"\((?P<yield>[\d.]+)% annualized\), breakeven at (?P<breakeven>[\d.]+)x spot"
)


def test_v2_candidate_lines_show_their_fields() -> None:
    state = make_state(spot=SPOT)
    cands = _candidates()
    context, _ = build_context(state, cands, PlainView())
    _, user = load_prompt("covered_call_v2").render(context)
    found = [m.groupdict() for ln in user.splitlines() if (m := _V2.match(ln))]
    assert len(found) == len(cands), user
    for got, c in zip(found, cands, strict=True):
        assert got["name"] == c.instrument_name
        _shows(got["strike"], c.strike, "strike")
        _shows(got["moneyness"], c.strike / SPOT, "strike/spot")
        _shows(got["distance"], c.strike_distance_pct, "strike distance")
        _shows(got["dte"], c.dte_days, "days")
        _shows(got["delta"], c.delta, "delta")
        _shows(got["iv"], c.mark_iv * 100, "IV")
        _shows(got["bid"], c.bid_price, "bid")
        _shows(got["premium_pct"], c.premium_pct, "premium % of spot")
        _shows(got["yield"], c.annualized_yield_pct, "annualized yield")
        _shows(got["breakeven"], c.breakeven / SPOT, "breakeven / spot")


@pytest.mark.parametrize("prompt", ["covered_call_v1", "covered_call_v2"])
def test_market_lines_show_the_state(prompt: str) -> None:
    state = make_state(spot=SPOT)
    context, _ = build_context(state, _candidates(), PlainView())
    _, user = load_prompt(prompt).render(context)
    assert "60,000.00" in user
    assert f"{state.atm_iv * 100:.1f}%" in user
    assert f"{state.realized_vol_7d * 100:.1f}%" in user
    assert f"{state.realized_vol_30d * 100:.1f}%" in user
    assert f"{state.return_1d * 100:+.2f}%" in user
    assert f"{state.return_7d * 100:+.2f}%" in user


@pytest.mark.parametrize("prompt", ["covered_call_v1", "covered_call_v2"])
def test_unknown_features_show_as_n_a(prompt: str) -> None:
    state = make_state(spot=SPOT).model_copy(
        update={"return_7d": None, "realized_vol_30d": None, "atm_iv": None, "iv_rv_spread": None}
    )
    context, _ = build_context(state, _candidates(), PlainView())
    _, user = load_prompt(prompt).render(context)
    assert user.count("n/a") >= 3
    assert "None" not in user and "nan" not in user.lower()


def _with_position():
    from harness.state import PositionState

    state = make_state(spot=SPOT)
    c = _candidates()[0]
    pos = PositionState(
        instrument_name=c.instrument_name,
        strike=c.strike,
        expiry=c.expiry.to_pydatetime(),
        size=0.5,
        open_time=(c.as_of - pd.Timedelta(days=2)).to_pydatetime(),
        open_price=812.0,
        mark_price=431.0,
        unrealized_pnl=0.5 * (812.0 - 431.0) - 7.0,
        dte_days=4.25,
    )
    return state.model_copy(update={"position": pos}), c, pos


def test_context_fields_hold_the_candidate_and_position_values() -> None:
    state, c, _ = _with_position()
    context, _ = build_context(state, [c], PlainView())
    row = context["candidates"][0]
    assert (row["bid"], row["ask"], row["mark"]) == (c.bid_price, c.ask_price, c.mark_price)
    assert row["premium"] == c.premium_usd and row["breakeven"] == c.breakeven
    assert row["breakeven_moneyness"] == pytest.approx(c.breakeven / SPOT)
    p = context["position"]
    assert p["name"] == c.instrument_name and p["strike"] == c.strike
    assert p["moneyness"] == pytest.approx(c.strike / SPOT)
    assert (p["size"], p["dte_days"]) == (0.5, 4.25)
    assert (p["open_price"], p["mark_price"]) == (812.0, 431.0)
    assert p["unrealized_pnl"] == pytest.approx(183.5)
    assert p["opened"] == "2024-02-28 08:00 UTC"
    # anonymized: the open call is not named, prices are index points
    anon, _ = build_context(state, [c], AnonymizedView(Anchor(state.time, 50_000.0)))
    assert anon["position"]["name"] == "open call" and anon["position"]["strike"] is None
    assert anon["position"]["mark_price"] == pytest.approx(431.0 / 500.0)
    assert context["time"] == "2024-03-01 08:00 UTC"
    # no open call: no position block at all
    flat, _ = build_context(make_state(spot=SPOT), [c], PlainView())
    assert flat["position"] is None


@pytest.mark.parametrize("prompt", ["covered_call_v1", "covered_call_v2"])
def test_position_line_shows_the_open_call(prompt: str) -> None:
    state, c, _ = _with_position()
    context, _ = build_context(state, [c], PlainView())
    _, user = load_prompt(prompt).render(context)
    assert f"short {c.instrument_name}" in user or f"short {c.instrument_name}".lower() in user
    assert "4.2 days" in user or "4.2 days left" in user or "4.2d" in user
    assert f"{c.strike / SPOT:.3f}" in user
    flat_context, _ = build_context(make_state(spot=SPOT), [c], PlainView())
    _, flat = load_prompt(prompt).render(flat_context)
    assert c.instrument_name not in flat.split("Candidate")[0]
