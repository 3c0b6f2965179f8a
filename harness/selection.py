"""Selection statistics for picking the best of many trials: what survives having looked at all.

- `adjust_pvalues`: Holm (family-wise error) and Benjamini-Hochberg (false discovery rate)
  adjusted p-values, from statsmodels' `multipletests` (a maintained, tested implementation).
- `mean_pvalue`: one-sided p-value of "mean > 0" for an autocorrelated series (overlapping
  trades), from a Newey-West (HAC) t-statistic (statsmodels OLS on a constant).
- `deflated_sharpe_ratio`: Bailey and Lopez de Prado (2014): the probability that the selected
  trial's true Sharpe ratio exceeds the best Sharpe that N trials of pure noise would show.
- `probability_of_backtest_overfitting`: Bailey, Borwein, Lopez de Prado and Zhu (2017) by
  combinatorially symmetric cross-validation (CSCV) over contiguous time blocks.

Sharpe ratios here are per observation (not annualized) unless a caller annualizes them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

EULER_GAMMA = 0.5772156649015329
AdjustMethod = Literal["holm", "bh"]
_METHODS = {"holm": "holm", "bh": "fdr_bh"}


def adjust_pvalues(pvalues: np.ndarray | list[float], method: AdjustMethod) -> np.ndarray:
    """Multiple-testing adjusted p-values (`holm` or `bh`); NaN entries stay NaN, not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=_METHODS[method])[1]
    return out


def mean_pvalue(values: np.ndarray, *, lags: int) -> float:
    """One-sided p-value of H0 mean <= 0 vs mean > 0, Newey-West t-statistic with `lags` lags."""
    # the module itself, not statsmodels.api: that imports formula support (~0.4 s) unused here
    from statsmodels.regression.linear_model import OLS

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 3:
        return float("nan")
    if np.allclose(x, x[0]):
        return 0.0 if x[0] > 0 else 1.0
    lags = int(min(max(lags, 0), len(x) - 2))
    fit = OLS(x, np.ones(len(x))).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
    return float(sps.norm.sf(float(fit.tvalues[0])))


def sharpe_ratio(values: np.ndarray) -> float:
    """Mean over standard deviation (ddof=1) of a series, per observation; 0 when flat."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return float("nan")
    sd = float(x.std(ddof=1))
    return float(x.mean() / sd) if sd > 0 else 0.0


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """Expected maximum Sharpe of `n_trials` zero-skill trials whose Sharpes have this variance."""
    if n_trials < 2:
        return 0.0
    z1 = sps.norm.ppf(1.0 - 1.0 / n_trials)
    z2 = sps.norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(math.sqrt(sharpe_variance) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2))


@dataclass(frozen=True)
class DeflatedSharpe:
    """The Deflated Sharpe Ratio of a selected trial (Sharpes per observation)."""

    sharpe: float  # observed Sharpe of the selected trial
    benchmark_sharpe: float  # SR0: expected best Sharpe of n_trials noise trials
    n_obs: float
    n_trials: int
    skew: float
    kurtosis: float  # not excess: 3 for a normal distribution
    dsr: float  # P(true Sharpe > SR0), in [0, 1]

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)


def deflated_sharpe_ratio(
    sharpe: float,
    *,
    n_obs: float,
    n_trials: int,
    sharpe_variance: float,
    skew: float = 0.0,
    kurtosis: float = 3.0,
) -> DeflatedSharpe:
    """DSR: the Probabilistic Sharpe Ratio of `sharpe` against the expected max of N noise trials.

    `sharpe` and `sharpe_variance` are per observation (divide an annual Sharpe by the square
    root of observations per year); `kurtosis` is the plain (non-excess) kurtosis.
    """
    sr0 = expected_max_sharpe(n_trials, sharpe_variance)
    denom = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if n_obs <= 1 or denom <= 0 or not math.isfinite(sharpe):
        dsr = float("nan")
    else:
        dsr = float(sps.norm.cdf((sharpe - sr0) * math.sqrt(n_obs - 1.0) / math.sqrt(denom)))
    return DeflatedSharpe(
        sharpe=float(sharpe),
        benchmark_sharpe=sr0,
        n_obs=float(n_obs),
        n_trials=int(n_trials),
        skew=float(skew),
        kurtosis=float(kurtosis),
        dsr=dsr,
    )


@dataclass(frozen=True)
class BacktestOverfitting:
    """CSCV result: PBO and the logits of the in-sample winner's out-of-sample relative rank."""

    pbo: float  # share of splits where the in-sample best ranks in the bottom half out of sample
    n_blocks: int
    n_splits: int
    logits: tuple[float, ...]

    def to_dict(self) -> dict:
        """Plain-dict form for JSON (without the logits)."""
        return {"pbo": self.pbo, "n_blocks": self.n_blocks, "n_splits": self.n_splits}


def _block_sharpes(
    sums: np.ndarray, squares: np.ndarray, counts: np.ndarray, pick: np.ndarray
) -> np.ndarray:
    """Sharpe per (split, trial) of the blocks `pick` (splits x blocks, 0/1) selects."""
    n = pick @ counts  # (splits,)
    s = pick @ sums  # (splits, trials)
    q = pick @ squares
    mean = s / n[:, None]
    var = np.maximum(q / n[:, None] - mean**2, 0.0) * n[:, None] / np.maximum(n[:, None] - 1, 1)
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, mean / np.where(sd > 0, sd, 1.0), 0.0)


def probability_of_backtest_overfitting(
    performance: np.ndarray, *, n_blocks: int = 10
) -> BacktestOverfitting:
    """PBO by CSCV: `performance` is (time, trials) per-period results; Sharpe is the yardstick.

    Rows are cut into `n_blocks` contiguous blocks (even); every half of the blocks is once the
    in-sample set and its complement the out-of-sample set. PBO is the share of those splits
    where the in-sample best trial's out-of-sample rank is at or below the median.
    """
    m = np.asarray(performance, dtype=float)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError("PBO needs a (time, trials) matrix with at least two trials")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be even and >= 2, got {n_blocks}")
    if m.shape[0] < n_blocks:
        raise ValueError(f"PBO needs at least {n_blocks} rows (one per block), got {m.shape[0]}")
    m = np.nan_to_num(m, nan=0.0)
    edges = np.linspace(0, m.shape[0], n_blocks + 1).round().astype(int)
    sums = np.add.reduceat(m, edges[:-1], axis=0)
    squares = np.add.reduceat(m * m, edges[:-1], axis=0)
    counts = np.diff(edges).astype(float)
    combos = list(itertools.combinations(range(n_blocks), n_blocks // 2))
    pick = np.zeros((len(combos), n_blocks))
    for i, c in enumerate(combos):
        pick[i, list(c)] = 1.0
    is_sr = _block_sharpes(sums, squares, counts, pick)
    oos_sr = _block_sharpes(sums, squares, counts, 1.0 - pick)
    best = is_sr.argmax(axis=1)
    n_trials = m.shape[1]
    # relative rank of the in-sample winner out of sample, ties averaged, in (0, 1)
    ranks = sps.rankdata(oos_sr, axis=1, method="average")
    omega = ranks[np.arange(len(combos)), best] / (n_trials + 1.0)
    logits = np.log(omega / (1.0 - omega))
    return BacktestOverfitting(
        pbo=float(np.mean(logits <= 0.0)),
        n_blocks=n_blocks,
        n_splits=len(combos),
        logits=tuple(float(x) for x in logits),
    )
