"""Rule-based covered-call policies: plain callables `policy(state, candidates)`.

Each factory returns a policy function with a readable `__name__`. `None` means do nothing;
with a call already open (only asked when `hold_to_expiry` is off) the rules keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harness.state import DecisionState
from harness.types import CallCandidate, OptionSnapshot

Policy = Callable[[DecisionState, Sequence[CallCandidate]], OptionSnapshot | None]


def nearest_delta(candidates: Sequence[CallCandidate], target_delta: float) -> CallCandidate | None:
    """The candidate whose delta is nearest `target_delta` (ties: lower strike, then earlier expiry)."""
    if not candidates:
        return None
    return min(candidates, key=lambda c: (abs(c.delta - target_delta), c.strike, c.expiry))


def always_sell(target_delta: float = 0.25) -> Policy:
    """Sell the candidate nearest `target_delta` whenever one is offered."""

    def policy(state: DecisionState, candidates: Sequence[CallCandidate]) -> CallCandidate | None:
        if state.position is not None:
            return None
        return nearest_delta(candidates, target_delta)

    policy.__name__ = "always_sell"
    return policy


def never_sell() -> Policy:
    """HODL: never sell a call."""

    def policy(state: DecisionState, candidates: Sequence[CallCandidate]) -> None:
        return None

    policy.__name__ = "never_sell"
    return policy


def iv_rich(threshold: float = 0.05, target_delta: float = 0.25) -> Policy:
    """Sell nearest `target_delta` only when ATM IV exceeds 7-day realized vol by > `threshold` (vol points as a fraction)."""

    def policy(state: DecisionState, candidates: Sequence[CallCandidate]) -> CallCandidate | None:
        spread = state.iv_rv_spread
        if state.position is not None or spread is None or spread <= threshold:
            return None
        return nearest_delta(candidates, target_delta)

    policy.__name__ = "iv_rich"
    return policy


def trend_pause(max_return_7d: float = 0.10, target_delta: float = 0.25) -> Policy:
    """Sell nearest `target_delta` unless spot rose more than `max_return_7d` (fraction) over 7 days."""

    def policy(state: DecisionState, candidates: Sequence[CallCandidate]) -> CallCandidate | None:
        r = state.return_7d
        if state.position is not None or (r is not None and r > max_return_7d):
            return None
        return nearest_delta(candidates, target_delta)

    policy.__name__ = "trend_pause"
    return policy


def from_bool(rule: Callable[[DecisionState], bool], target_delta: float = 0.25) -> Policy:
    """Adapt a boolean rule `state -> bool` (True = sell) to the candidate-choosing signature."""

    def policy(state: DecisionState, candidates: Sequence[CallCandidate]) -> CallCandidate | None:
        if state.position is not None or not rule(state):
            return None
        return nearest_delta(candidates, target_delta)

    policy.__name__ = getattr(rule, "__name__", "bool_rule")
    return policy


RULES: Mapping[str, Callable[..., Policy]] = {
    "always_sell": always_sell,
    "never_sell": never_sell,
    "iv_rich": iv_rich,
    "trend_pause": trend_pause,
}


def make_rule(name: str, params: Mapping[str, Any] | None = None) -> Policy:
    """Build a rule policy by name with keyword parameters; unknown names list the known ones."""
    try:
        factory = RULES[name]
    except KeyError:
        known = ", ".join(RULES)
        raise ValueError(
            f"unknown rule policy {name!r}; known rules: {known} (the hindsight oracles are "
            "built from labels by harness.policies.oracles)"
        ) from None
    try:
        return factory(**dict(params or {}))
    except TypeError as exc:
        raise ValueError(f"bad parameters for rule {name!r}: {exc}") from None
