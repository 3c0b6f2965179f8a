"""Policies: rules, the LLM policy and the learned policy, all `policy(state, candidates) -> option | None`."""

from harness.policies.learned import LearnedPolicy, load_learned_policy
from harness.policies.oracles import ORACLES, best_schedule, oracle, oracle_schedule
from harness.policies.rules import (
    RULES,
    always_sell,
    from_bool,
    iv_rich,
    make_rule,
    nearest_delta,
    never_sell,
    trend_pause,
)

__all__ = [
    "ORACLES",
    "RULES",
    "LearnedPolicy",
    "always_sell",
    "best_schedule",
    "from_bool",
    "iv_rich",
    "load_learned_policy",
    "make_rule",
    "nearest_delta",
    "never_sell",
    "oracle",
    "oracle_schedule",
    "trend_pause",
]
