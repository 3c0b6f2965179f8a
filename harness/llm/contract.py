"""The answer contract: one JSON object choosing SELL_CALL of a listed candidate or DO_NOTHING."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Action = Literal["SELL_CALL", "DO_NOTHING"]
SCHEMA_NAME = "covered_call_decision"
MAX_RATIONALE_CHARS = 2000


class LLMAnswer(BaseModel):
    """What the model must answer; `instrument_name` is one of the candidates or null."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    action: Action
    instrument_name: str | None = None
    rationale: str = Field(default="", max_length=MAX_RATIONALE_CHARS)

    @field_validator("action", mode="before")
    @classmethod
    def _normalise_action(cls, value: object) -> object:
        # Models write "sell_call" or " SELL_CALL " often enough that refusing them would only
        # add noise; anything else still fails the Literal check.
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("instrument_name", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none"):
            return None
        return value.strip() if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    """Outcome of validating one raw answer: `answer` is set iff `valid`, else `reason` says why.

    For a valid SELL_CALL, `answer.instrument_name` is the candidate's exact name as listed.
    """

    valid: bool
    answer: LLMAnswer | None = None
    reason: str | None = None


def answer_json_schema(candidate_names: Sequence[str]) -> dict[str, Any]:
    """JSON schema of the answer with the candidate names as an enum (OpenAI strict-mode rules)."""
    names = list(dict.fromkeys(candidate_names))
    instrument: dict[str, Any] = (
        {"anyOf": [{"type": "string", "enum": names}, {"type": "null"}]}
        if names
        else {"type": "null"}
    )
    instrument["description"] = "The candidate to sell for SELL_CALL, null for DO_NOTHING."
    return {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["SELL_CALL", "DO_NOTHING"]},
            "instrument_name": instrument,
            "rationale": {"type": "string", "description": "One or two short sentences."},
        },
        "required": ["action", "instrument_name", "rationale"],
        "additionalProperties": False,
    }


def response_format_for(candidate_names: Sequence[str]) -> dict[str, Any]:
    """The `response_format` request field asking for the strict answer schema."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": SCHEMA_NAME,
            "strict": True,
            "schema": answer_json_schema(candidate_names),
        },
    }


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def extract_first_json_object(text: str) -> dict[str, Any] | None:
    """Return the first JSON object found in `text` (fenced or inline), or None."""
    # Fenced blocks first: a model that explains itself and then fences the answer usually
    # means the fenced object, not a `{...}` it quoted in prose.
    for chunk in [*(m.group(1) for m in _FENCE.finditer(text)), text]:
        start = chunk.find("{")
        while start != -1:
            try:
                obj, _ = _DECODER.raw_decode(chunk, start)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                return obj
            start = chunk.find("{", start + 1)
    return None


def validate_answer(text: str | None, candidate_names: Sequence[str]) -> AnswerCheck:
    """Parse and check a raw model answer against the contract and the offered candidates."""
    if text is None or not text.strip():
        return AnswerCheck(False, reason="empty answer")
    obj = extract_first_json_object(text)
    if obj is None:
        return AnswerCheck(False, reason="no JSON object found in the answer")
    try:
        answer = LLMAnswer.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'answer'}: {err['msg']}"
            for err in exc.errors()
        )
        return AnswerCheck(False, reason=f"answer breaks the schema ({problems})")
    if answer.action == "DO_NOTHING":
        # An instrument next to DO_NOTHING is unambiguous noise: the action decides.
        return AnswerCheck(True, answer=answer.model_copy(update={"instrument_name": None}))
    if answer.instrument_name is None:
        return AnswerCheck(False, reason="SELL_CALL without an instrument_name")
    canonical = _match_candidate(answer.instrument_name, candidate_names)
    if canonical is None:
        return AnswerCheck(
            False, reason=f"instrument {answer.instrument_name!r} is not one of the candidates"
        )
    return AnswerCheck(True, answer=answer.model_copy(update={"instrument_name": canonical}))


def _match_candidate(name: str, candidate_names: Sequence[str]) -> str | None:
    if name in candidate_names:
        return name
    folded = name.casefold()
    matches = [c for c in candidate_names if c.casefold() == folded]
    return matches[0] if len(matches) == 1 else None
