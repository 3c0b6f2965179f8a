"""Policies: rules, the LLM policy and the learned policy, all `policy(state, candidates) -> option | None`."""

from harness.policies.learned import LearnedPolicy, load_learned_policy
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
    "LearnedPolicy",
    "always_sell",
    "from_bool",
    "iv_rich",
    "load_learned_policy",
    "make_rule",
    "nearest_delta",
    "never_sell",
    "oracle",
    "trend_pause",
]
