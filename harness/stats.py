"""Paired statistics for policies scored on the same decisions.

Rewards of overlapping trades are autocorrelated (a 7-day call sold every 4 hours overlaps
~40 neighbours) and strongly left-skewed (small premiums, rare large payoffs), so intervals
are never i.i.d. ones. `paired_comparison` uses batch means by default: a Student-t interval
from the means of contiguous batches each BATCH_FACTOR trade lives long; on the placebo world
this halves the false-positive rate of the moving-block bootstrap with a block of one trade
life (docs/calibration.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
from scipy import stats as sps

CIMethod = Literal["batch_means", "block_bootstrap"]
BATCH_FACTOR = 4  # batch length = this many block lengths (trade lives)


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
    p_value: float = float("nan")  # two-sided p-value (of ci_method) of mean_diff == 0
    p_holm: float = float("nan")  # Holm-adjusted over the family it was compared in
    ci_method: str = "batch_means"

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)


def block_bootstrap_means(
    values: Sequence[float] | np.ndarray,
    *,
    block_length: int,
    n_resamples: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Means of `n_resamples` moving-block bootstrap resamples (deterministic for a seed)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return np.zeros(0)
    if n == 1 or np.all(x == x[0]):
        return np.full(n_resamples, float(x[0]))
    b = int(min(max(block_length, 1), n))
    n_blocks = int(np.ceil(n / b))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - b + 1, size=(n_resamples, n_blocks))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(n_resamples, -1)[:, :n]
    return x[idx].mean(axis=1)


def block_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    block_length: int,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of the mean by the moving-block bootstrap (deterministic for a seed)."""
    means = block_bootstrap_means(
        values, block_length=block_length, n_resamples=n_resamples, seed=seed
    )
    if len(means) == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def batch_means_ci(
    values: Sequence[float] | np.ndarray, *, batch_length: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Student-t CI of the mean from the means of contiguous, non-overlapping batches.

    Batches much longer than the autocorrelation are nearly independent; the t quantile with
    (batches - 1) degrees of freedom widens the interval when there are few of them. The
    series is cut into n // batch_length batches of nearly equal length, at least 3.
    """
    lo, hi, _ = batch_means_test(values, batch_length=batch_length, confidence=confidence)
    return (lo, hi)


def batch_means_test(
    values: Sequence[float] | np.ndarray, *, batch_length: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """`batch_means_ci` and the matching two-sided t-test p-value of "mean is 0".

    The interval excludes 0 exactly when p < 1 - confidence. NaNs without data; a constant
    series gives a zero-width interval and p 1 (0 when the constant is not 0).
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    if n < 3 or np.all(x == x[0]):
        mu = float(x.mean())
        return (mu, mu, 1.0 if mu == 0 else 0.0)
    k = max(min(n // max(int(batch_length), 1), n), 3)
    edges = np.linspace(0, n, k + 1).round().astype(int)
    means = np.add.reduceat(x, edges[:-1]) / np.diff(edges)
    se = float(means.std(ddof=1) / np.sqrt(k))
    t = float(sps.t.ppf(0.5 + confidence / 2.0, k - 1))
    mu = float(x.mean())
    if se == 0:
        return (mu, mu, 1.0 if mu == 0 else 0.0)
    p = float(2.0 * sps.t.sf(abs(mu) / se, k - 1))
    return (mu - t * se, mu + t * se, p)


def bootstrap_p_value(means: np.ndarray) -> float:
    """Two-sided p-value of "mean is 0" from bootstrap means, consistent with the percentile CI.

    Twice the smaller share of resampled means on either side of zero (so the 95% percentile
    interval excludes zero exactly when p < 0.05, up to resampling ties); NaN without data.
    """
    if len(means) == 0:
        return float("nan")
    if np.all(means == 0):
        return 1.0
    below = float(np.mean(means <= 0.0))
    above = float(np.mean(means >= 0.0))
    return float(min(1.0, 2.0 * min(below, above)))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control); NaN entries stay NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.tolist()


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
    ci_method: CIMethod = "batch_means",
) -> PairedComparison:
    """Compare two reward series decision by decision (NaN pairs are dropped).

    `block_length` is the autocorrelation length in decisions (a trade's life over the
    decision spacing). `batch_means` (default) uses batches of BATCH_FACTOR block lengths;
    `block_bootstrap` the moving-block bootstrap with blocks of `block_length`.
    """
    a = np.asarray(rewards, dtype=float)
    b = np.asarray(baseline_rewards, dtype=float)
    if a.shape != b.shape or len(choices) != len(a) or len(baseline_choices) != len(a):
        raise ValueError("paired series must have the same length")
    ok = np.isfinite(a) & np.isfinite(b)
    diff = (a - b)[ok]
    if ci_method == "batch_means":
        lo, hi, p_value = batch_means_test(diff, batch_length=BATCH_FACTOR * block_length)
    else:
        means = block_bootstrap_means(diff, block_length=block_length, seed=seed)
        if len(means):
            lo, hi = (float(q) for q in np.quantile(means, [0.025, 0.975]))
        else:
            lo = hi = float("nan")
        p_value = bootstrap_p_value(means)
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
        p_value=p_value,
        ci_method=ci_method,
    )


def all_pairs(
    rewards: dict[str, np.ndarray],
    choices: dict[str, Sequence[str | None]],
    *,
    block_length: int,
    seed: int = 0,
) -> list[PairedComparison]:
    """Every unordered pair (earlier name minus later, in the dict's order), Holm-adjusted.

    The Holm family is the pairs returned, so a difference that "survives Holm" survives the
    multiple-comparison correction over every pair shown together.
    """
    names = list(rewards)
    pairs = [
        paired_comparison(
            a,
            b,
            rewards[a],
            rewards[b],
            choices[a],
            choices[b],
            block_length=block_length,
            seed=seed,
        )
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    adjusted = holm_adjust([p.p_value for p in pairs])
    return [replace(p, p_holm=h) for p, h in zip(pairs, adjusted, strict=True)]
