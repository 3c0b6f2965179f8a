"""Paired statistics for policies scored on the same decisions.

Rewards of overlapping trades are autocorrelated (a 7-day call sold every 4 hours overlaps
~40 neighbours), so confidence intervals use a moving-block bootstrap over contiguous
decisions, not an i.i.d. one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """Policy vs baseline on the same decisions (reward units as given, usually USD)."""

    policy: str
    baseline: str
    n: int
    mean_diff: float  # mean of policy reward - baseline reward per decision
    ci_low: float  # 95% block-bootstrap interval of mean_diff
    ci_high: float
    wins: int
    losses: int
    ties: int
    agreement_rate: float  # share of decisions where both chose the same action
    block_length: int

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)


def block_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    block_length: int,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of the mean by the moving-block bootstrap (deterministic for a seed)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return (float("nan"), float("nan"))
    if n == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    b = int(min(max(block_length, 1), n))
    n_blocks = int(np.ceil(n / b))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - b + 1, size=(n_resamples, n_blocks))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(n_resamples, -1)[:, :n]
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def paired_comparison(
    policy: str,
    baseline: str,
    rewards: np.ndarray,
    baseline_rewards: np.ndarray,
    choices: Sequence[str | None],
    baseline_choices: Sequence[str | None],
    *,
    block_length: int,
    tie_tolerance: float = 1e-9,
    seed: int = 0,
) -> PairedComparison:
    """Compare two reward series decision by decision (NaN pairs are dropped)."""
    a = np.asarray(rewards, dtype=float)
    b = np.asarray(baseline_rewards, dtype=float)
    if a.shape != b.shape or len(choices) != len(a) or len(baseline_choices) != len(a):
        raise ValueError("paired series must have the same length")
    ok = np.isfinite(a) & np.isfinite(b)
    diff = (a - b)[ok]
    lo, hi = block_bootstrap_ci(diff, block_length=block_length, seed=seed)
    same = [x == y for x, y, k in zip(choices, baseline_choices, ok, strict=True) if k]
    return PairedComparison(
        policy=policy,
        baseline=baseline,
        n=int(ok.sum()),
        mean_diff=float(diff.mean()) if len(diff) else float("nan"),
        ci_low=lo,
        ci_high=hi,
        wins=int((diff > tie_tolerance).sum()),
        losses=int((diff < -tie_tolerance).sum()),
        ties=int((np.abs(diff) <= tie_tolerance).sum()),
        agreement_rate=float(np.mean(same)) if same else float("nan"),
        block_length=int(block_length),
    )
