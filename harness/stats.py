"""Paired statistics for policies scored on the same decisions.

Rewards of overlapping trades are autocorrelated (a 7-day call sold every 4 hours overlaps
~40 neighbours) and strongly left-skewed (small premiums, rare large payoffs), so intervals
are never i.i.d. ones. With ~50 independent trades a year and that skew, a t interval is
too narrow exactly when the rare losses are missing from the sample (mean high, spread low),
so Student-t batch means and the percentile block bootstrap call 15-25% of no-edge placebo
comparisons "significant" instead of 5%. `paired_comparison` therefore defaults to a
studentized bootstrap (bootstrap-t, skew-aware) over the means of contiguous batches one trade
life long, resampled by a circular block bootstrap in blocks of two batches (adjacent batches
share the trades that straddle their border). It is the interval of `arch`'s
`CircularBlockBootstrap(...).conf_int(method="studentized")`, drawn vectorized here because
arch resamples in a Python loop (0.26 s per comparison; the runner compares every pair); a
test pins the two together. docs/calibration.md has the placebo false-positive rate and the
rich_premium power of each method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

CIMethod = Literal["bootstrap_t", "batch_means", "block_bootstrap"]
CI_METHODS: tuple[str, ...] = ("bootstrap_t", "batch_means", "block_bootstrap")
DEFAULT_CI_METHOD: CIMethod = "bootstrap_t"
BATCH_FACTOR = 4  # batch_means: batch length = this many block lengths (trade lives)
T_BATCHES_PER_BLOCK = 2  # bootstrap_t: batches (one trade life each) per resampled block
T_RESAMPLES = 2000
# How reports name each interval (the text follows the method a comparison records).
CI_METHOD_LABELS: dict[str, str] = {
    "bootstrap_t": "studentized block bootstrap (bootstrap-t) over batches of one trade life",
    "batch_means": "Student-t batch means over batches of 4 trade lives",
    "block_bootstrap": "percentile moving-block bootstrap with blocks of one trade life",
}


def ci_method_label(method: str | None) -> str:
    """Readable name of a `ci_method` (the default's when None; unknown names as given)."""
    return CI_METHOD_LABELS.get(method or DEFAULT_CI_METHOD, str(method))


@dataclass(frozen=True)
class PairedComparison:
    """Policy vs baseline on the same decisions (reward units as given, usually USD)."""

    policy: str
    baseline: str
    n: int
    mean_diff: float  # mean of policy reward - baseline reward per decision
    ci_low: float  # 95% interval of mean_diff by `ci_method`
    ci_high: float
    wins: int
    losses: int
    ties: int
    agreement_rate: float  # share of decisions where both chose the same action
    block_length: int
    p_value: float = float("nan")  # two-sided p-value (of ci_method) of mean_diff == 0
    p_holm: float = float("nan")  # Holm-adjusted over the family it was compared in
    ci_method: str = DEFAULT_CI_METHOD

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


def batch_means(values: Sequence[float] | np.ndarray, *, batch_length: int) -> np.ndarray:
    """Means of contiguous batches of nearly equal length (n // batch_length of them, at least
    min(n, 3)); units as given."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return np.zeros(0)
    k = max(n // max(int(batch_length), 1), min(n, 3))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return np.add.reduceat(x, edges[:-1]) / np.diff(edges)


def bootstrap_t_test(
    values: Sequence[float] | np.ndarray,
    *,
    batch_length: int,
    n_resamples: int = T_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Studentized (bootstrap-t) CI of the mean and its two-sided p-value of "mean is 0".

    The series is cut into contiguous batches of `batch_length` (one trade life); their means
    are resampled by the circular block bootstrap in blocks of T_BATCHES_PER_BLOCK batches.
    Each resample gives t* = (mean* - mean) / se*, with se* = sd(batch means*) / sqrt(batches);
    the interval is mean - q(t*) x sd(mean*) at the upper and lower quantiles of t*, the
    convention of arch's `conf_int(method="studentized")`. Because t* uses each resample's own
    spread, a sample whose mean is high because its rare losses are missing gets a long lower
    tail (skew-aware, second-order accurate). p is twice the smaller share of t* beyond
    mean / sd(mean*), so the interval excludes 0 when p < 1 - confidence (up to ties). NaNs
    without data; fewer than 3 values or constant batch means give a zero-width interval and
    p 1 (0 when the mean is not 0). When more than a tail's share of resamples have no spread
    at all (sparse differences: most batches exactly 0), t* is unbounded in that tail and the
    studentized interval does not exist: the result is NaN, and `paired_comparison` then uses
    the batch-means interval (and says so). Deterministic for a seed.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"), float("nan"))
    mu = float(x.mean())
    means = batch_means(x, batch_length=batch_length)
    k = len(means)
    if k < 3 or np.all(means == means[0]):
        return (mu, mu, 1.0 if mu == 0 else 0.0)
    boot_mean, boot_se = _circular_block_resamples(means, n_resamples=n_resamples, seed=seed)
    center = float(means.mean())  # equals mu up to the rounding of batch lengths
    sd = float(boot_mean.std())
    if sd == 0:
        return (mu, mu, 1.0 if mu == 0 else 0.0)
    gap = boot_mean - center
    with np.errstate(divide="ignore", invalid="ignore"):
        # a resample of identical batch means away from the centre has an unbounded t*
        t_star = np.where(boot_se > 0, gap / boot_se, np.sign(gap) * np.inf)
    # finite stand-ins keep the percentile interpolation from inf - inf = NaN
    t_star = np.clip(t_star, -_T_CAP, _T_CAP)
    alpha = (1.0 - confidence) / 2.0
    q_lo, q_hi = np.percentile(t_star, [100 * alpha, 100 * (1.0 - alpha)])
    if max(abs(q_lo), abs(q_hi)) >= _T_CAP:
        return (float("nan"), float("nan"), float("nan"))
    t0 = center / sd
    p = float(min(1.0, 2.0 * min(np.mean(t_star >= t0), np.mean(t_star <= t0))))
    return (float(center - q_hi * sd), float(center - q_lo * sd), p)


_T_CAP = 1e300


def _circular_block_resamples(
    means: np.ndarray, *, n_resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of each circular-block resample of `means`."""
    k = len(means)
    b = min(T_BATCHES_PER_BLOCK, k)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, k, size=(n_resamples, -(-k // b)))
    idx = ((starts[:, :, None] + np.arange(b)) % k).reshape(n_resamples, -1)[:, :k]
    r = means[idx]
    return r.mean(axis=1), r.std(axis=1, ddof=1) / np.sqrt(k)


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
    ci_method: CIMethod = DEFAULT_CI_METHOD,
) -> PairedComparison:
    """Compare two reward series decision by decision (NaN pairs are dropped).

    `block_length` is the autocorrelation length in decisions (a trade's life over the
    decision spacing). `bootstrap_t` (default) is the studentized bootstrap over batches of one
    block length (`bootstrap_t_test`), replaced by `batch_means` (recorded in `ci_method`) when
    the differences are too sparse for a studentized interval to exist; `batch_means` a Student-t interval over batches of
    BATCH_FACTOR block lengths; `block_bootstrap` the percentile moving-block bootstrap with
    blocks of `block_length`. The last two undercover on skewed rewards (docs/calibration.md).
    """
    if ci_method not in CI_METHODS:
        raise ValueError(f"unknown ci_method {ci_method!r}; known: {', '.join(CI_METHODS)}")
    a = np.asarray(rewards, dtype=float)
    b = np.asarray(baseline_rewards, dtype=float)
    if a.shape != b.shape or len(choices) != len(a) or len(baseline_choices) != len(a):
        raise ValueError("paired series must have the same length")
    ok = np.isfinite(a) & np.isfinite(b)
    diff = (a - b)[ok]
    if ci_method == "bootstrap_t":
        lo, hi, p_value = bootstrap_t_test(diff, batch_length=block_length, seed=seed)
        if len(diff) and np.isnan(lo):
            ci_method = "batch_means"  # no studentized interval exists (see bootstrap_t_test)
    if ci_method == "batch_means":
        lo, hi, p_value = batch_means_test(diff, batch_length=BATCH_FACTOR * block_length)
    elif ci_method == "block_bootstrap":
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


def cluster_robust_mean(
    values: Sequence[float] | np.ndarray, clusters: Sequence[object] | np.ndarray
) -> tuple[float, float]:
    """Mean of `values` and its cluster-robust standard error (CR1), units as given.

    statsmodels' OLS on a constant with clustered covariance: the sandwich over cluster sums of
    deviations, scaled by G / (G - 1) for G clusters (the (n - 1) / (n - k) factor is 1 here).
    """
    import statsmodels.api as sm  # imported on use: only calibration checks need it

    x = np.asarray(values, dtype=float)
    groups = pd.factorize(np.asarray(clusters))[0]
    fit = sm.OLS(x, np.ones((len(x), 1))).fit(cov_type="cluster", cov_kwds={"groups": groups})
    return float(fit.params[0]), float(fit.bse[0])
