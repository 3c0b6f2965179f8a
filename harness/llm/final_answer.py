"""The model's final answer in its text: reasoning stripped, the last JSON object, the choice checked.

Standard library only, on purpose: training exports copy this file verbatim into the reward
module they ship (`reward.py`), so a trainer scores completions with exactly the parsing the
harness used when it ran the policy.

Rules, in order:
1. Reasoning is not the answer. `<think>...</think>` (also `<thinking>`, `<reasoning>`) blocks are
   cut out; text before a lone closing tag is reasoning too (chat templates of R1-style models
   open the tag in the prompt, so the completion starts inside it); an opening tag that is never
   closed means the model never got to its answer.
2. The answer is the last fenced code block holding a JSON object, else the last top-level JSON
   object in the text. A model that drafts an answer and then revises it means the revision.
3. A choice is valid when `action` is SELL_CALL or DO_NOTHING (case and blanks forgiven) and a
   SELL_CALL names one of the offered candidates (exactly, else the only case-insensitive match).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ACTIONS = ("SELL_CALL", "DO_NOTHING")
MAX_RATIONALE_CHARS = 2000

_TAGS = "think|thinking|reasoning"
_BLOCK = re.compile(rf"<({_TAGS})>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_LONE_CLOSE = re.compile(rf"</({_TAGS})>", re.IGNORECASE)
_OPEN = re.compile(rf"<({_TAGS})>", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Choice:
    """A parsed answer: `valid` with `action`/`instrument_name`, else `reason` says what is wrong."""

    valid: bool
    action: str | None = None
    instrument_name: str | None = None
    rationale: str = ""
    reason: str | None = None
    fields: dict[str, Any] | None = None


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split a completion into (reasoning or None, the text that may hold the answer)."""
    parts: list[str] = []

    def keep(match: re.Match[str]) -> str:
        parts.append(match.group(2).strip())
        return ""

    rest = _BLOCK.sub(keep, text)
    closes = list(_LONE_CLOSE.finditer(rest))
    if closes:
        close = closes[-1]
        parts.append(rest[: close.start()].strip())
        rest = rest[close.end() :]
    opened = _OPEN.search(rest)
    if opened is not None:
        # The reasoning never closed: whatever follows the tag is unfinished thinking.
        parts.append(rest[opened.end() :].strip())
        rest = rest[: opened.start()]
    reasoning = "\n\n".join(p for p in parts if p)
    return (reasoning or None), rest


def _objects(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object in `text`, in order."""
    found: list[dict[str, Any]] = []
    start = text.find("{")
    while start != -1:
        try:
            obj, end = _DECODER.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
            start = text.find("{", end)
        else:
            start = text.find("{", start + 1)
    return found


def extract_final_json(text: str) -> dict[str, Any] | None:
    """The final answer object of a completion (rules 1 and 2 of the module doc), or None."""
    _, answer = split_reasoning(text)
    for block in reversed([m.group(1) for m in _FENCE.finditer(answer)]):
        objects = _objects(block)
        if objects:
            return objects[-1]
    objects = _objects(answer)
    return objects[-1] if objects else None


def _match_candidate(name: str, candidate_names: Sequence[str]) -> str | None:
    if name in candidate_names:
        return name
    folded = name.casefold()
    matches = [c for c in candidate_names if c.casefold() == folded]
    return matches[0] if len(matches) == 1 else None


def check_choice(obj: dict[str, Any], candidate_names: Sequence[str]) -> Choice:
    """Check an answer object against the contract and the offered candidate names."""
    action = obj.get("action")
    action = action.strip().upper() if isinstance(action, str) else action
    if action not in ACTIONS:
        return Choice(
            False,
            reason=f"answer breaks the schema (action must be SELL_CALL or DO_NOTHING, got {action!r})",
        )
    rationale = obj.get("rationale", "")
    if rationale is None:
        rationale = ""
    if not isinstance(rationale, str):
        return Choice(False, reason="answer breaks the schema (rationale must be a string)")
    if len(rationale) > MAX_RATIONALE_CHARS:
        return Choice(
            False,
            reason=f"answer breaks the schema (rationale longer than {MAX_RATIONALE_CHARS} characters)",
        )
    name = obj.get("instrument_name")
    if isinstance(name, str):
        name = name.strip()
        if name.lower() in ("", "null", "none"):
            name = None
    elif name is not None:
        return Choice(
            False, reason="answer breaks the schema (instrument_name must be a string or null)"
        )
    if action == "DO_NOTHING":
        # An instrument next to DO_NOTHING is unambiguous noise: the action decides.
        return Choice(True, "DO_NOTHING", None, rationale, fields=obj)
    if name is None:
        return Choice(False, reason="SELL_CALL without an instrument_name")
    canonical = _match_candidate(name, candidate_names)
    if canonical is None:
        return Choice(False, reason=f"instrument {name!r} is not one of the candidates")
    return Choice(True, "SELL_CALL", canonical, rationale, fields=obj)


def parse_choice(text: str | None, candidate_names: Sequence[str]) -> Choice:
    """Parse a raw completion into a checked `Choice` (invalid ones carry the reason)."""
    if text is None or not text.strip():
        return Choice(False, reason="empty answer")
    obj = extract_final_json(text)
    if obj is None:
        reasoning, answer = split_reasoning(text)
        if reasoning and not answer.strip():
            return Choice(False, reason="no answer after the reasoning")
        return Choice(False, reason="no JSON object found in the answer")
    return check_choice(obj, candidate_names)
