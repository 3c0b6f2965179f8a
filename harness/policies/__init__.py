"""Policies: rule-based ones and the LLM policy, all `policy(state, candidates) -> option | None`."""

from harness.policies.rules import (
    RULES,
    always_sell,
    from_bool,
    iv_rich,
    make_rule,
    nearest_delta,
    never_sell,
    oracle,
    trend_pause,
)

__all__ = [
    "RULES",
    "always_sell",
    "from_bool",
    "iv_rich",
    "make_rule",
    "nearest_delta",
    "never_sell",
    "oracle",
    "trend_pause",
]
