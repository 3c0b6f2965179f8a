"""Final-answer extraction: reasoning is never the answer; the last object (or fenced block) wins."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from harness.llm import final_answer
from harness.llm.final_answer import check_choice, extract_final_json, parse_choice, split_reasoning

NAMES = ["BTC-08MAR24-63000-C", "BTC-08MAR24-65000-C"]


def _answer(action: str, name: str | None, rationale: str = "r") -> str:
    return json.dumps({"action": action, "instrument_name": name, "rationale": rationale})


def test_a_draft_inside_think_never_beats_the_final_answer() -> None:
    for tag in ("think", "thinking", "reasoning", "THINK"):
        text = (
            f"<{tag}>Maybe {_answer('SELL_CALL', NAMES[0])}? No, too close to spot.</{tag}>\n"
            f"{_answer('SELL_CALL', NAMES[1])}"
        )
        choice = parse_choice(text, NAMES)
        assert choice.valid and choice.instrument_name == NAMES[1], tag
        reasoning, rest = split_reasoning(text)
        assert reasoning is not None and "too close to spot" in reasoning
        assert NAMES[0] not in rest


def test_completion_that_starts_inside_the_reasoning() -> None:
    # R1-style chat templates put <think> in the prompt: the completion only closes it.
    text = f"draft {_answer('DO_NOTHING', None)}\n</think>\n\n{_answer('SELL_CALL', NAMES[0])}"
    assert parse_choice(text, NAMES).instrument_name == NAMES[0]


def test_unclosed_reasoning_has_no_answer() -> None:
    text = f"<think>I could say {_answer('SELL_CALL', NAMES[0])} but let me check the"
    choice = parse_choice(text, NAMES)
    assert not choice.valid and choice.reason == "no answer after the reasoning"
    assert split_reasoning(text)[1] == ""


def test_the_last_object_and_the_last_fenced_block_win() -> None:
    drafts = f"First {_answer('SELL_CALL', NAMES[0])}. Revised: {_answer('DO_NOTHING', None)}"
    assert parse_choice(drafts, NAMES).action == "DO_NOTHING"
    fenced = (
        f"```json\n{_answer('DO_NOTHING', None)}\n```\nthen\n"
        f'```json\n{_answer("SELL_CALL", NAMES[1])}\n```\ntrailing {{"x": 1}}'
    )
    assert parse_choice(fenced, NAMES).instrument_name == NAMES[1]
    # Nested objects are part of their parent, not separate answers.
    nested = '{"action": "DO_NOTHING", "analysis": {"iv": 0.5}, "instrument_name": null}'
    assert extract_final_json(nested) == json.loads(nested)


def test_invalid_choices_say_why() -> None:
    assert parse_choice(None, NAMES).reason == "empty answer"
    assert parse_choice("  ", NAMES).reason == "empty answer"
    assert parse_choice("no json here", NAMES).reason == "no JSON object found in the answer"
    assert (
        "not one of the candidates"
        in check_choice({"action": "SELL_CALL", "instrument_name": "BTC-X"}, NAMES).reason
    )
    assert check_choice({"action": "SELL_CALL"}, NAMES).reason == (
        "SELL_CALL without an instrument_name"
    )
    assert "action must be" in check_choice({"action": "BUY"}, NAMES).reason
    assert check_choice({"action": "DO_NOTHING", "rationale": 3}, NAMES).reason == (
        "answer breaks the schema (rationale must be a string)"
    )


def test_normalisation_of_action_name_and_case() -> None:
    c = check_choice({"action": " sell_call ", "instrument_name": NAMES[0].lower()}, NAMES)
    assert c.valid and (c.action, c.instrument_name) == ("SELL_CALL", NAMES[0])
    c = check_choice({"action": "DO_NOTHING", "instrument_name": NAMES[0]}, NAMES)
    assert c.valid and c.instrument_name is None
    c = check_choice({"action": "SELL_CALL", "instrument_name": "null"}, NAMES)
    assert not c.valid


@given(
    prose=st.text(alphabet=st.characters(blacklist_characters="{}<>`"), max_size=60),
    pick=st.sampled_from([*NAMES, None]),
    draft=st.sampled_from([*NAMES, None]),
)
def test_property_final_answer_after_any_reasoning_and_prose(
    prose: str, pick: str | None, draft: str | None
) -> None:
    final = _answer("SELL_CALL" if pick else "DO_NOTHING", pick)
    first = _answer("SELL_CALL" if draft else "DO_NOTHING", draft)
    text = f"<think>{prose} {first}</think>{prose}\n{final}\n{prose}"
    choice = parse_choice(text, NAMES)
    assert choice.valid and choice.instrument_name == pick


def test_the_module_uses_the_standard_library_only() -> None:
    # Training exports copy this file into reward.py, which must run without the harness.
    tree = ast.parse(Path(final_answer.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "json", "re", "collections", "dataclasses", "typing"}
