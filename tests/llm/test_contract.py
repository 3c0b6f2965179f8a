from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from harness.llm.contract import (
    LLMAnswer,
    answer_json_schema,
    response_format_for,
    validate_answer,
)
from harness.llm.final_answer import extract_final_json

NAMES = ["BTC-08MAR24-63000-C", "BTC-08MAR24-66000-C"]


def _json(action: str, name: str | None, rationale: str = "ok") -> str:
    return json.dumps({"action": action, "instrument_name": name, "rationale": rationale})


def test_valid_sell_and_do_nothing() -> None:
    check = validate_answer(_json("SELL_CALL", NAMES[1]), NAMES)
    assert check.valid and check.answer is not None
    assert check.answer.action == "SELL_CALL"
    assert check.answer.instrument_name == NAMES[1]
    assert check.reason is None

    check = validate_answer(_json("DO_NOTHING", None, "too cheap"), NAMES)
    assert check.valid and check.answer == LLMAnswer(action="DO_NOTHING", rationale="too cheap")


def test_tolerant_extraction_from_prose_and_fences() -> None:
    fenced = f"Let me think.\n```json\n{_json('SELL_CALL', NAMES[0])}\n```\nDone."
    assert validate_answer(fenced, NAMES).answer.instrument_name == NAMES[0]
    inline = f"My answer: {_json('DO_NOTHING', None)} -- hope that helps {{not json}}"
    assert validate_answer(inline, NAMES).answer.action == "DO_NOTHING"
    # A brace in prose before the object does not derail the scan.
    assert extract_final_json('use {braces} carefully {"a": {"b": 1}}') == {"a": {"b": 1}}
    # Fenced object wins over one quoted earlier in prose.
    text = 'e.g. {"action": "X"} but really:\n```\n{"action": "DO_NOTHING"}\n```'
    assert extract_final_json(text) == {"action": "DO_NOTHING"}


def test_action_case_and_blank_instrument_are_normalised() -> None:
    check = validate_answer(
        '{"action": " sell_call ", "instrument_name": "BTC-08MAR24-63000-C"}', NAMES
    )
    assert check.valid and check.answer.action == "SELL_CALL" and check.answer.rationale == ""
    check = validate_answer('{"action": "DO_NOTHING", "instrument_name": ""}', NAMES)
    assert check.valid and check.answer.instrument_name is None
    # Case-folded instrument names map to the listed spelling.
    check = validate_answer(_json("SELL_CALL", NAMES[0].lower()), NAMES)
    assert check.valid and check.answer.instrument_name == NAMES[0]


def test_do_nothing_with_an_instrument_is_do_nothing() -> None:
    check = validate_answer(_json("DO_NOTHING", NAMES[0]), NAMES)
    assert check.valid and check.answer.instrument_name is None


def test_invalid_answers_carry_a_reason() -> None:
    cases = {
        "": "empty answer",
        "   ": "empty answer",
        "I would sell the 63000 call.": "no JSON object",
        '{"action": "BUY_CALL", "instrument_name": null}': "breaks the schema",
        '{"instrument_name": null}': "breaks the schema",
        '{"action": "SELL_CALL", "instrument_name": null}': "without an instrument_name",
        _json("SELL_CALL", "BTC-08MAR24-99000-C"): "not one of the candidates",
        '{"action": "SELL_CALL", "instrument_name": 5}': "breaks the schema",
        "[1, 2, 3]": "no JSON object",
    }
    for text, reason in cases.items():
        check = validate_answer(text, NAMES)
        assert not check.valid and check.answer is None, text
        assert reason in (check.reason or ""), (text, check.reason)
    assert validate_answer(None, NAMES).reason == "empty answer"


def test_schema_is_strict_with_candidate_enum() -> None:
    schema = answer_json_schema(NAMES)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"analysis", "action", "instrument_name", "rationale"}
    # The order on the wire is the order of decoding in strict mode: reasoning first.
    assert list(schema["properties"]) == ["analysis", "action", "instrument_name", "rationale"]
    assert schema["properties"]["instrument_name"]["anyOf"][0]["enum"] == NAMES
    assert schema["properties"]["action"]["enum"] == ["SELL_CALL", "DO_NOTHING"]
    fmt = response_format_for(NAMES)
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    # No candidates: the only possible instrument is null.
    assert answer_json_schema([])["properties"]["instrument_name"]["type"] == "null"


@given(st.text(max_size=300))
def test_validation_never_raises(text: str) -> None:
    check = validate_answer(text, NAMES)
    assert check.valid == (check.answer is not None)
    assert check.valid or check.reason


@given(st.sampled_from(NAMES), st.text(max_size=50), st.text(max_size=50))
def test_valid_answer_survives_surrounding_noise(name: str, before: str, after: str) -> None:
    # noise holds no JSON object, fence or reasoning tag: any of those after the answer is a
    # later answer by the contract (the last JSON object after the reasoning counts)
    before, after = (
        x.replace("{", "(").replace("`", "'").replace("<", "[") for x in (before, after)
    )
    check = validate_answer(before + _json("SELL_CALL", name) + after, NAMES)
    assert check.valid and check.answer.instrument_name == name
