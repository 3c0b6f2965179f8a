"""Hindsight bounds built from counterfactual labels: they see outcomes no policy can know.

`oracle` is the per-decision bound: at every decision it takes the best hold-to-expiry
reward, ignoring that a call it sells blocks the next decisions. `oracle_schedule` is the
portfolio bound: the best sequence of non-overlapping hold-to-expiry trades (dynamic
programming over decisions), which is what a replay holding one call at a time can reach.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness.policies.rules import Policy
from harness.state import DecisionState
from harness.types import CallCandidate


def _reward_column(labels: pd.DataFrame) -> str:
    return "reward" if "reward" in labels.columns else "pnl_vs_hodl"


def _pick_policy(picks: dict[int, str], name: str) -> Policy:
    """A policy selling `picks[decision ns]` when flat; with a call open it keeps it."""

    def policy(state: DecisionState, candidates: Sequence[CallCandidate]) -> CallCandidate | None:
        if state.position is not None:
            return None  # hold to expiry: the labels only price hold-to-expiry trades
        pick = picks.get(pd.Timestamp(state.time).as_unit("ns").value)
        if pick is None:
            return None
        for c in candidates:
            if c.instrument_name == pick:
                return c
        return None

    policy.__name__ = name
    return policy


def oracle(labels: pd.DataFrame) -> Policy:
    """Per-decision bound (hindsight): at each decision the candidate with the best reward if > 0.

    `labels` is `CoveredCallSimulator.counterfactual_labels()` (or a frame with
    decision_time, instrument_name, action and the reward column `reward` or `pnl_vs_hodl`).
    With a call open (roll mode) it keeps the call: rolling on hold-to-expiry labels would
    buy back and re-sell at almost every decision.
    """
    sells = labels[labels["action"] == "SELL_CALL"]
    col = _reward_column(labels)
    best: dict[int, tuple[str, float]] = {}
    for t, name, reward in zip(
        pd.DatetimeIndex(sells["decision_time"]).as_unit("ns").asi8,
        sells["instrument_name"],
        sells[col],
        strict=True,
    ):
        if reward > 0 and (t not in best or reward > best[t][1]):
            best[int(t)] = (str(name), float(reward))
    return _pick_policy({t: n for t, (n, _) in best.items()}, "oracle")


def best_schedule(labels: pd.DataFrame) -> pd.DataFrame:
    """The hindsight-optimal non-overlapping hold-to-expiry trades: one label row per trade.

    Dynamic programming from the last decision back: value(i) = max(value(i + 1),
    reward(c) + value(first decision at or after c's expiry)) over the candidates c of
    decision i, as the replay settles a call at the first decision at or after its expiry
    and may sell again there. Ties prefer doing nothing. Rewards in the labels' units.
    """
    col = _reward_column(labels)
    times = np.unique(pd.DatetimeIndex(labels["decision_time"]).as_unit("ns").asi8)
    sells = labels[labels["action"] == "SELL_CALL"].reset_index(drop=True)
    n = len(times)
    dec = np.searchsorted(times, pd.DatetimeIndex(sells["decision_time"]).as_unit("ns").asi8)
    nxt = np.searchsorted(times, pd.DatetimeIndex(sells["expiry"]).as_unit("ns").asi8, "left")
    reward = sells[col].to_numpy(dtype=float)
    order = np.argsort(dec, kind="stable")
    bounds = np.searchsorted(dec[order], np.arange(n + 1))
    value = np.zeros(n + 1)
    take = np.full(n, -1)
    for i in range(n - 1, -1, -1):
        value[i] = value[i + 1]
        rows = order[bounds[i] : bounds[i + 1]]
        if len(rows):
            total = reward[rows] + value[nxt[rows]]
            j = int(np.argmax(total))
            if total[j] > value[i]:
                value[i] = total[j]
                take[i] = rows[j]
    picked = []
    i = 0
    while i < n:
        if take[i] < 0:
            i += 1
            continue
        picked.append(take[i])
        i = max(int(nxt[take[i]]), i + 1)
    return sells.iloc[picked].reset_index(drop=True)


def oracle_schedule(labels: pd.DataFrame) -> Policy:
    """Portfolio bound (hindsight schedule): sells exactly the trades of `best_schedule(labels)`."""
    sched = best_schedule(labels)
    picks = dict(
        zip(
            pd.DatetimeIndex(sched["decision_time"]).as_unit("ns").asi8.tolist(),
            sched["instrument_name"].astype(str),
            strict=True,
        )
    )
    return _pick_policy(picks, "oracle_schedule")


ORACLES: Mapping[str, Callable[[pd.DataFrame], Policy]] = {
    "oracle": oracle,
    "oracle_schedule": oracle_schedule,
}
