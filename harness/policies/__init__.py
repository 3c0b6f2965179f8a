"""Policies: rule-based ones and the LLM policy, all `policy(state, candidates) -> option | None`."""

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
    "always_sell",
    "best_schedule",
    "from_bool",
    "iv_rich",
    "make_rule",
    "nearest_delta",
    "never_sell",
    "oracle",
    "oracle_schedule",
    "trend_pause",
]
