"""The answer contract: one JSON object choosing SELL_CALL of a listed candidate or DO_NOTHING.

`{"analysis": "...", "action": ..., "instrument_name": ..., "rationale": "..."}`: the free-text
`analysis` (first, so the model reasons before deciding) is optional when validating; only
`action` and `instrument_name` decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.llm.final_answer import MAX_RATIONALE_CHARS, parse_choice

Action = Literal["SELL_CALL", "DO_NOTHING"]
SCHEMA_NAME = "covered_call_decision"


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
    # `analysis` comes first on purpose: strict-mode decoding writes properties in schema order,
    # so the model reasons before it commits to an action (inside the JSON-only contract).
    return {
        "type": "object",
        "properties": {
            "analysis": {
                "type": "string",
                "description": "Your reasoning, written before deciding: the checks you made.",
            },
            "action": {"type": "string", "enum": ["SELL_CALL", "DO_NOTHING"]},
            "instrument_name": instrument,
            "rationale": {"type": "string", "description": "One or two short sentences."},
        },
        "required": ["analysis", "action", "instrument_name", "rationale"],
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


def validate_answer(text: str | None, candidate_names: Sequence[str]) -> AnswerCheck:
    """Parse and check a raw model answer against the contract and the offered candidates.

    The final answer is found by `harness.llm.final_answer` (reasoning stripped, the last JSON
    object or fenced block), the same code training exports ship as their reward parser.
    """
    choice = parse_choice(text, candidate_names)
    if not choice.valid:
        return AnswerCheck(False, reason=choice.reason)
    answer = LLMAnswer(
        action=choice.action,  # type: ignore[arg-type]
        instrument_name=choice.instrument_name,
        rationale=choice.rationale,
    )
    return AnswerCheck(True, answer=answer)
