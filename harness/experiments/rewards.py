"""Named reward functions over counterfactual labels (one value per label row).

`pnl_vs_hodl`: the trade's USD result against simply holding the coins (DO_NOTHING = 0).
`return_bps`: the same as basis points of the notional (size x spot at the decision).
Both accept `drawdown_penalty` (lambda): reward - lambda * max_drawdown_pct, where
max_drawdown_pct is the covered position's worst peak-to-trough fall during the trade, in
percent; DO_NOTHING carries no drawdown penalty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd

RewardKind = Literal["pnl_vs_hodl", "return_bps"]


def _penalty(labels: pd.DataFrame, drawdown_penalty: float) -> np.ndarray:
    dd = labels["max_drawdown_pct"].to_numpy(dtype=float)
    return drawdown_penalty * np.nan_to_num(dd, nan=0.0)


def pnl_vs_hodl(labels: pd.DataFrame, drawdown_penalty: float = 0.0) -> np.ndarray:
    """Reward in USD: PnL of the option leg vs HODL minus `drawdown_penalty` x drawdown %."""
    return labels["pnl_vs_hodl"].to_numpy(dtype=float) - _penalty(labels, drawdown_penalty)


def return_bps(labels: pd.DataFrame, drawdown_penalty: float = 0.0) -> np.ndarray:
    """Reward in basis points of notional (size x spot at decision) minus the drawdown penalty."""
    return labels["return_bps"].to_numpy(dtype=float) - _penalty(labels, drawdown_penalty)


REWARDS: dict[str, Callable[[pd.DataFrame, float], np.ndarray]] = {
    "pnl_vs_hodl": pnl_vs_hodl,
    "return_bps": return_bps,
}

REWARD_UNITS = {"pnl_vs_hodl": "USD", "return_bps": "bps"}


def with_reward(
    labels: pd.DataFrame, kind: RewardKind, drawdown_penalty: float = 0.0
) -> pd.DataFrame:
    """Labels with a `reward` column and per-decision `best_reward` and `reward_regret`."""
    try:
        fn = REWARDS[kind]
    except KeyError:
        raise ValueError(f"unknown reward {kind!r}; use one of {', '.join(REWARDS)}") from None
    out = labels.copy()
    out["reward"] = fn(labels, drawdown_penalty)
    out["best_reward"] = out.groupby("decision_time")["reward"].transform("max")
    out["reward_regret"] = out["best_reward"] - out["reward"]
    return out
