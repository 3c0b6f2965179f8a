"""The report's decisions table of a fresh run's plain rows, from the runner's own arrays.

A plain row is a valid decision without error or LLM answer (every row of a rule, python or
model policy that chose only offered calls). Its report columns follow from the decision (time,
number of candidates, best reward) and the policy's choice and reward alone, so the runner
hands those instead of having `decisions_frame` read ~4,000 row dicts field by field (a third
of a sweep trial's report). The table is the one `decisions_frame` makes of the same rows
(tests/reports/test_rule_decisions.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.reports.report import DECISION_COLUMNS, decisions_frame, decisions_table


@dataclass(frozen=True)
class PlainChoices:
    """One policy's plain rows: its choice (instrument name or None) and reward per decision."""

    policy: str
    choices: Sequence[str | None]
    rewards: np.ndarray


def _finite(values: np.ndarray) -> np.ndarray:
    # the report reads null, NaN and +-inf alike as undefined (NaN)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values), values, np.nan)


def plain_decisions_frame(
    times_iso: Sequence[str],
    n_candidates: Sequence[int],
    best_rewards: Sequence[float],
    policies: Sequence[PlainChoices],
) -> pd.DataFrame:
    """`decisions_frame` of the rows a runner wrote for `policies` (in this order), each with
    one plain row per decision: time `times_iso[i]`, `n_candidates[i]` offered calls, best
    reward in hindsight `best_rewards[i]`; a row's action is SELL_CALL when its choice is a
    non-empty name, and its regret is best reward minus reward, as the runner writes them."""
    if not times_iso or not policies:
        return decisions_frame([])  # no rows (the columns' empty dtypes)
    times = pd.to_datetime(list(times_iso), utc=True, format="ISO8601")
    names = [p.policy for p in policies]
    if len(set(names)) < len(names) or not times.is_monotonic_increasing or not times.is_unique:
        # the table's own order (sorted, duplicates dropped) from the rows in file order
        return decisions_table(_columns(times, n_candidates, best_rewards, policies))
    # already in the table's order: time by time, policies by name (as its stable sort)
    ordered = sorted(policies, key=lambda p: p.policy)
    columns = _columns(times, n_candidates, best_rewards, ordered, interleave=True)
    return pd.DataFrame(columns, columns=DECISION_COLUMNS)


def _columns(
    times: pd.DatetimeIndex,
    n_candidates: Sequence[int],
    best_rewards: Sequence[float],
    policies: Sequence[PlainChoices],
    *,
    interleave: bool = False,
) -> dict[str, object]:
    """DECISION_COLUMNS of the rows, policy after policy (file order), or with `interleave`
    decision after decision (each decision's rows in `policies` order)."""
    n_times, n_pol = len(times), len(policies)
    n = n_times * n_pol
    best = np.asarray(best_rewards, dtype=float)
    with np.errstate(invalid="ignore", over="ignore"):
        rewards = np.asarray([p.rewards for p in policies], dtype=float).reshape(n_pol, n_times)
        regrets = best[None, :] - rewards
    choices = [list(p.choices) for p in policies]
    labels = [[c or "DO_NOTHING" for c in cs] for cs in choices]
    if interleave:

        def flat(per_policy: list[list]) -> list:
            return [x for row in zip(*per_policy, strict=True) for x in row]

        def numbers(a: np.ndarray) -> np.ndarray:
            return _finite(a.T.ravel())

        at = np.repeat(np.arange(n_times), n_pol)
        policy_col = [p.policy for p in policies] * n_times
    else:

        def flat(per_policy: list[list]) -> list:
            return [x for row in per_policy for x in row]

        def numbers(a: np.ndarray) -> np.ndarray:
            return _finite(a.ravel())

        at = np.tile(np.arange(n_times), n_pol)
        policy_col = [p.policy for p in policies for _ in range(n_times)]
    chosen, names = flat(labels), flat(choices)
    none: list[None] = [None] * n
    return {
        "n_candidates": np.asarray(n_candidates, dtype=float)[at],
        "rationale": none,
        "decision_time": times[at],
        "policy": policy_col,
        "action": ["SELL_CALL" if c else "DO_NOTHING" for c in names],
        "instrument_name": names,
        "choice": chosen,
        "label": chosen,
        "valid": np.ones(n, dtype=bool),
        "error": none,
        "reward": numbers(rewards),
        "best_reward": _finite(best)[at],
        "regret": numbers(regrets),
        "is_llm": np.zeros(n, dtype=bool),
        "llm_cost_usd": np.zeros(n),
        "llm_cost_saved_usd": np.zeros(n),
        "llm_calls_made": np.zeros(n),
        "llm_cache_hit": np.zeros(n, dtype=bool),
        "prompt_id": none,
        "model": none,
    }
