"""decisions.jsonl lines, encoded with the decision's shared part written once per run.

Every policy's row at one decision repeats the decision's time, spot, state features and
offered candidate names; `DecisionLines` encodes that part once per decision and each row
only encodes its policy's own fields. The text is exactly `strict_json.dumps(row,
default=str)` of the whole row (same key order, separators and nulls for non-finite floats;
tests/experiments/test_decision_lines.py checks it).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from harness import strict_json
from harness.state import DecisionState
from harness.types import CallCandidate

STATE_FIELDS = (
    "return_1d",
    "return_7d",
    "realized_vol_7d",
    "realized_vol_30d",
    "atm_iv",
    "iv_rv_spread",
)  # the features a row records under "state"


def _clean(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _text(x: Any) -> str:
    return strict_json.dumps(x, default=str)


def _string(text: str) -> str:
    """`json.dumps` of a str (ASCII escapes, as every line is written)."""
    return json.encoder.encode_basestring_ascii(text)  # type: ignore[no-any-return]


# A policy's own fields of a row, in the order the runner writes them (`own_text`'s fast path).
OWN_FIELDS = (
    "action",
    "instrument_name",
    "valid",
    "invalid_reason",
    "error",
    "reward",
    "best_reward",
    "best_instrument",
    "regret",
    "llm",
)


def own_text(own: dict[str, Any]) -> str:
    """`strict_json.dumps(own, default=str)` without its opening brace.

    A valid rule decision's fields (finite floats, names or null, no error, no LLM object:
    nearly every row of a sweep) are formatted directly, a third of the encoder's time; any
    other row takes the encoder. The text is the same (hypothesis test).
    """
    if tuple(own) == OWN_FIELDS:
        action, name, valid, reason, error, reward, best, best_name, regret, llm = own.values()
        if valid is True and reason is None and error is None and llm is None:
            text = _plain_own_text(action, name, reward, best, best_name, regret)
            if text is not None:
                return text
    return _text(own)[1:]


def _plain_own_text(
    action: Any, name: Any, reward: Any, best: Any, best_name: Any, regret: Any
) -> str | None:
    """The own fields' text of a valid row without error or LLM object, or None when a value
    is not a plain str, None or finite float (the encoder's job then)."""
    if (
        type(action) is str
        and type(reward) is float
        and type(best) is float
        and type(regret) is float
        # any NaN or infinity makes the sum non-finite (strict JSON writes those as null)
        and math.isfinite(reward + best + regret)
        and (name is None or type(name) is str)
        and (best_name is None or type(best_name) is str)
    ):
        return (
            f'"action": {_string(action)}, "instrument_name": '
            f"{'null' if name is None else _string(name)}, "
            f'"valid": true, "invalid_reason": null, "error": null, "reward": {reward!r}, '
            f'"best_reward": {best!r}, "best_instrument": '
            f"{'null' if best_name is None else _string(best_name)}, "
            f'"regret": {regret!r}, "llm": null}}'
        )
    return None


# The state part of each decision's rows, per state object: flat states are shared by the
# trials of a sweep worker whose decisions and features are equal (SimulatorCaches.states),
# so their fields and text are made once per state, not once per run. States are frozen; an
# entry holds its state, so its id is not reused while the entry lives. Least recently used
# entries go first: a sweep's trials cycle through one state list per DTE (the inner grid
# axis), and clearing the whole table when full (as before) dropped every list before its
# next use, so no trial ever hit.
_STATE_PARTS: OrderedDict[int, tuple[DecisionState, dict[str, float | None], str]] = OrderedDict()
# ~15 state lists of a year at 4h decisions (~0.73 KB each with its text, ~24 MB in all)
_MAX_STATE_PARTS = 32_768


def _state_part(state: DecisionState) -> tuple[dict[str, float | None], str]:
    """(the row's "state" fields, the text of its "spot", "spot_stale" and "state" items)."""
    key = id(state)
    hit = _STATE_PARTS.get(key)
    if hit is not None and hit[0] is state:
        _STATE_PARTS.move_to_end(key)
        return hit[1], hit[2]
    fields = {k: _clean(getattr(state, k)) for k in STATE_FIELDS}
    text = _text({"spot": state.spot, "spot_stale": state.spot_stale, "state": fields})[1:-1]
    _STATE_PARTS[key] = (state, fields, text)
    _STATE_PARTS.move_to_end(key)  # a stale entry of a freed state with the same id
    while len(_STATE_PARTS) > _MAX_STATE_PARTS:
        _STATE_PARTS.popitem(last=False)
    return fields, text


class DecisionLines:
    """Per decision of a run: the row's shared objects and their JSON text, made once."""

    def __init__(
        self, items: Sequence[tuple[DecisionState, Sequence[CallCandidate]]], times_iso: list[str]
    ) -> None:
        self.items = items
        self.times_iso = times_iso
        self.states: list[dict[str, float | None]] = []
        self.names: list[list[str]] = []
        self._before_policy: list[str] = []
        self._after_policy: list[str] = []
        for (state, cands), t_iso in zip(items, times_iso, strict=True):
            fields, state_text = _state_part(state)
            names = [c.instrument_name for c in cands]
            self.states.append(fields)
            self.names.append(names)
            self._before_policy.append('{"decision_time": ' + _string(t_iso) + ', "policy": ')
            # a dict's text without its braces is its items' text: the row's middle part is
            # the state's items, then the candidates' (the text of the dict of all of them)
            self._after_policy.append(", " + state_text + ', "candidates": ' + _text(names) + ", ")

    def row(self, i: int, policy: str, own: dict[str, Any]) -> dict[str, Any]:
        """The row object of decision `i` for `policy`; `own` are its fields after "candidates"."""
        state, _ = self.items[i]
        return {
            "decision_time": self.times_iso[i],
            "policy": policy,
            "spot": state.spot,
            "spot_stale": state.spot_stale,
            "state": self.states[i],
            "candidates": self.names[i],
            **own,
        }

    def line(self, i: int, policy_text: str, own: dict[str, Any]) -> str:
        """`strict_json.dumps` of the row of decision `i`: `policy_text` is the policy name's
        JSON text, `own` the row's fields after "candidates" (a non-empty dict)."""
        return self._before_policy[i] + policy_text + self._after_policy[i] + own_text(own)

    def plain_row(
        self,
        i: int,
        policy: str,
        name: str | None,
        reward: float,
        best: float,
        best_name: str | None,
    ) -> dict[str, Any]:
        """The row object of a valid decision without error or LLM answer: `row` of its
        `plain_own` fields (a runner makes it only when something reads it)."""
        return self.row(i, policy, plain_own(name, reward, best, best_name))

    def plain_line(
        self,
        i: int,
        policy_text: str,
        name: str | None,
        reward: float,
        best: float,
        best_name: str | None,
    ) -> str:
        """`line` of `plain_row`'s fields, formatted without making the fields' dict when its
        values are plain (nearly every row of a sweep)."""
        action = "SELL_CALL" if name else "DO_NOTHING"
        text = _plain_own_text(action, name, reward, best, best_name, best - reward)
        if text is None:
            text = _text(plain_own(name, reward, best, best_name))[1:]
        return self._before_policy[i] + policy_text + self._after_policy[i] + text


def plain_own(
    name: str | None, reward: float, best: float, best_name: str | None
) -> dict[str, Any]:
    """The own fields the runner writes for a valid decision without error or LLM answer:
    action from the chosen `name`, `reward` and `best` (reward units), regret `best - reward`."""
    values = (
        "SELL_CALL" if name else "DO_NOTHING",
        name,
        True,
        None,
        None,
        reward,
        best,
        best_name,
        best - reward,
        None,
    )
    return dict(zip(OWN_FIELDS, values, strict=True))
