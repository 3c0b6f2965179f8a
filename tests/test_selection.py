"""Selection statistics against textbook examples and by their defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.selection import (
    adjust_pvalues,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    mean_pvalue,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)

# Benjamini & Hochberg (1995), section 4: fifteen p-values of a clinical trial.
BH_1995 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459,
           0.3240, 0.4262, 0.5719, 0.6528, 0.7590, 1.0000]  # fmt: skip


def test_holm_and_bh_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted p x (m - i), running max; BH: sorted p x m / rank, running min from the top
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_pvalues(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_bh_1995_example_rejections() -> None:
    # the paper: BH at q = 0.05 rejects the four smallest; Bonferroni-type (Holm) only three
    assert int((adjust_pvalues(BH_1995, "bh") <= 0.05).sum()) == 4
    assert int((adjust_pvalues(BH_1995, "holm") <= 0.05).sum()) == 3


def test_adjust_keeps_nan_out_of_the_family() -> None:
    out = adjust_pvalues([0.01, float("nan"), 0.04], "holm")
    assert math.isnan(out[1])
    assert out[[0, 2]] == pytest.approx([0.02, 0.04])


def test_dsr_paper_worked_example() -> None:
    # Bailey & Lopez de Prado (2014): annual SR 2.5 over T = 1250 daily returns, N = 100 trials
    # whose annualized Sharpes have variance 1/2, skew -3, kurtosis 10: DSR about 0.90.
    days = 250.0
    res = deflated_sharpe_ratio(
        2.5 / math.sqrt(days),
        n_obs=1250,
        n_trials=100,
        sharpe_variance=0.5 / days,
        skew=-3.0,
        kurtosis=10.0,
    )
    assert res.benchmark_sharpe * math.sqrt(days) == pytest.approx(1.79, abs=0.01)
    assert res.dsr == pytest.approx(0.90, abs=0.005)


def test_dsr_falls_with_more_trials() -> None:
    kw = {"n_obs": 500, "sharpe_variance": 0.002, "skew": 0.0, "kurtosis": 3.0}
    few = deflated_sharpe_ratio(0.15, n_trials=2, **kw).dsr
    many = deflated_sharpe_ratio(0.15, n_trials=1000, **kw).dsr
    assert few > many
    assert expected_max_sharpe(1, 0.01) == 0.0


def test_pbo_is_about_half_for_noise() -> None:
    rng = np.random.default_rng(0)
    runs = [
        probability_of_backtest_overfitting(rng.normal(0, 1, (400, 30)), n_blocks=10).pbo
        for _ in range(6)
    ]
    assert 0.35 < float(np.mean(runs)) < 0.65


def test_pbo_is_about_zero_when_one_trial_dominates() -> None:
    rng = np.random.default_rng(1)
    m = rng.normal(0, 1, (400, 30))
    m[:, 7] += 0.8  # a real edge in one trial
    res = probability_of_backtest_overfitting(m, n_blocks=10)
    assert res.pbo < 0.02
    assert res.n_splits == math.comb(10, 5)


def test_pbo_validates_its_input() -> None:
    with pytest.raises(ValueError, match="even"):
        probability_of_backtest_overfitting(np.zeros((20, 3)), n_blocks=5)
    with pytest.raises(ValueError, match="two trials"):
        probability_of_backtest_overfitting(np.zeros((20, 1)))


def test_mean_pvalue_and_sharpe() -> None:
    rng = np.random.default_rng(2)
    edge = rng.normal(0.5, 1.0, 300)
    noise = rng.normal(-0.2, 1.0, 300)
    assert mean_pvalue(edge, lags=5) < 0.001
    assert mean_pvalue(noise, lags=5) > 0.5
    assert mean_pvalue(np.zeros(10), lags=2) == 1.0
    assert sharpe_ratio(np.zeros(10)) == 0.0
    assert sharpe_ratio(edge) == pytest.approx(edge.mean() / edge.std(ddof=1))
