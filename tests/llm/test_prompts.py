from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from harness.llm.anonymize import Anchor, AnonymizedView, PlainView
from harness.llm.prompts import (
    CONTEXT_VARIABLES,
    PromptTemplate,
    build_context,
    default_prompts_dir,
    load_prompt,
)
from harness.state import PositionState
from tests.llm.fixtures import START, make_candidates, make_state

PROMPTS = default_prompts_dir()


def _render(name: str, state, candidates, view=None) -> tuple[str, str]:
    context, _ = build_context(state, candidates, view or PlainView())
    return load_prompt(name).render(context)


def test_shipped_prompts_load_with_name_and_hash_ids() -> None:
    v1, v2 = load_prompt("covered_call_v1"), load_prompt("covered_call_v2")
    assert re.fullmatch(r"covered_call_v1@[0-9a-f]{12}", v1.prompt_id)
    assert v1.prompt_id != v2.prompt_id
    assert v1.content_hash.startswith(v1.prompt_id.split("@")[1])


def test_prompt_id_follows_content(tmp_path: Path) -> None:
    for suffix in (".system.j2", ".user.j2"):
        (tmp_path / f"mine{suffix}").write_text((PROMPTS / f"covered_call_v1{suffix}").read_text())
    same = load_prompt("mine", tmp_path)
    assert same.content_hash == load_prompt("covered_call_v1").content_hash
    (tmp_path / "mine.user.j2").write_text(
        (tmp_path / "mine.user.j2").read_text() + "\nBe careful."
    )
    assert load_prompt("mine", tmp_path).content_hash != same.content_hash
    # A path stem works too.
    assert load_prompt(str(tmp_path / "mine")).name == "mine"


def test_missing_prompt_lists_available_ones() -> None:
    with pytest.raises(FileNotFoundError, match=r"covered_call_v1.*covered_call_v2"):
        load_prompt("covered_call_v9")


def test_render_shows_features_candidates_and_contract() -> None:
    state = make_state()
    candidates = make_candidates(state)
    system, user = _render("covered_call_v1", state, candidates)
    assert "SELL_CALL" in system and "DO_NOTHING" in system and "instrument_name" in system
    assert "2024-03-01 08:00 UTC" in user and "60,000.00" in user
    for c in candidates:
        assert c.instrument_name in user
    assert "55.0%" in user  # ATM IV in percent
    assert "Open position: none." in user


def test_v2_is_a_different_variant_that_weighs_iv_rv_and_trend() -> None:
    state = make_state()
    system1, user1 = _render("covered_call_v1", state, make_candidates(state))
    system2, user2 = _render("covered_call_v2", state, make_candidates(state))
    assert system1 != system2 and user1 != user2
    assert "IV - RV" in system2 and "Trend" in system2
    assert "+10.0%" in user2  # the IV - RV spread is shown explicitly


def test_prompt_ignores_cash_and_coins_held() -> None:
    base = make_state()
    other = make_state(cash_usd=12_345.0, coins_held=0.93)
    for name in ("covered_call_v1", "covered_call_v2"):
        assert _render(name, base, make_candidates(base)) == _render(
            name, other, make_candidates(other)
        )


def test_position_is_rendered_when_open() -> None:
    position = PositionState(
        instrument_name="BTC-08MAR24-63000-C",
        strike=63_000,
        expiry=(START + pd.Timedelta(days=7)).to_pydatetime(),
        size=1.0,
        open_time=(START - pd.Timedelta(days=1)).to_pydatetime(),
        open_price=600.0,
        mark_price=450.0,
        unrealized_pnl=130.0,
        dte_days=6.0,
    )
    state = make_state(position=position)
    _, user = _render("covered_call_v2", state, make_candidates(state))
    assert "Currently short BTC-08MAR24-63000-C" in user and "2024-02-29 08:00 UTC" in user


def test_missing_values_render_as_na() -> None:
    state = make_state().model_copy(
        update={"return_7d": None, "atm_iv": None, "iv_rv_spread": None}
    )
    _, user = _render("covered_call_v2", state, make_candidates(state))
    assert "ATM implied vol: n/a" in user and "n/a" in user


def test_undefined_variables_and_syntax_errors_fail_loudly() -> None:
    template = PromptTemplate.from_sources("t", "{{ nope }}", "x")
    with pytest.raises(ValueError, match="nope"):
        template.render({})
    with pytest.raises(ValueError, match="syntax"):
        PromptTemplate.from_sources("t", "{% if %}", "x")


def test_readme_documents_every_variable() -> None:
    readme = (PROMPTS / "README.md").read_text()
    state = make_state()
    context, _ = build_context(state, make_candidates(state), PlainView())
    assert set(context) == set(CONTEXT_VARIABLES)
    documented = set(re.findall(r"`([a-z_0-9]+)`", readme))
    missing = set(context) | set(context["market"]) | set(context["candidates"][0])
    missing -= documented
    assert not missing, f"prompts/README.md does not document {sorted(missing)}"


def test_anonymized_prompt_hides_dates_levels_and_names() -> None:
    state = make_state(START + pd.Timedelta(days=40, hours=4), spot=66_000.0)
    candidates = make_candidates(state)
    view = AnonymizedView(Anchor(START, 60_000.0))
    context, names = build_context(state, candidates, view)
    for name in ("covered_call_v1", "covered_call_v2"):
        system, user = load_prompt(name).render(context)
        text = system + user
        assert "day 40, 12:00 UTC" in user
        assert "110.00" in user  # 66,000 on a 60,000 = 100 index
        assert not re.search(r"20\d\d", text), "a year leaked"
        assert "MAR" not in text and "APR" not in text
        for c in candidates:
            assert c.instrument_name not in text
            assert f"{c.strike:,.0f}" not in text and str(int(c.strike)) not in text
        assert "66,000" not in text
    assert names == {f"C{i + 1}": c.instrument_name for i, c in enumerate(candidates)}
    assert context["candidates"][0]["strike"] is None
    assert context["candidates"][0]["moneyness"] == pytest.approx(candidates[0].strike / 66_000)


def test_anchor_validates() -> None:
    with pytest.raises(ValueError):
        Anchor(START, 0.0)
    assert Anchor("2024-03-01", 1.0).time == pd.Timestamp("2024-03-01", tz="UTC")


# Mutation pass 5 (docs/testing.md): the Jinja environment is built once at import, so mutmut
# only sees its edits through a fresh `_environment()`; the context's action names.


def test_the_prompt_environment_trims_block_lines_and_formats_numbers() -> None:
    from harness.llm.prompts import _environment

    template = (
        "{% for x in xs %}\n  {% if x %}\n- {{ x|num(1) }} {{ x|pct(signed=True) }}\n"
        "  {% endif %}\n{% endfor %}\n"
    )
    text = _environment().from_string(template).render(xs=[1234.56, None])
    assert text == "- 1,234.6 +1234.6%\n"
    assert _environment().from_string("{{ '<b>' }}").render() == "<b>"  # no HTML escaping


def test_the_context_offers_exactly_the_two_contract_actions() -> None:
    from harness.llm.prompts import build_context

    state = make_state()
    context, _ = build_context(state, make_candidates(state), PlainView())
    assert context["actions"] == ["SELL_CALL", "DO_NOTHING"]
