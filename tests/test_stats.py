"""Paired statistics: bootstrap intervals and win/loss/tie counting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.stats import block_bootstrap_ci, paired_comparison


def test_ci_contains_mean_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 500)
    lo, hi = block_bootstrap_ci(x, block_length=10, seed=3)
    assert lo < x.mean() < hi
    assert (lo, hi) == block_bootstrap_ci(x, block_length=10, seed=3)
    assert hi - lo < 0.5


def test_blocks_widen_the_interval_for_autocorrelated_rewards() -> None:
    rng = np.random.default_rng(2)
    # strongly autocorrelated series: overlapping trades
    x = np.convolve(rng.normal(0, 1, 2000), np.ones(40) / 40, mode="valid")
    iid = block_bootstrap_ci(x, block_length=1, seed=0)
    blk = block_bootstrap_ci(x, block_length=40, seed=0)
    assert (blk[1] - blk[0]) > 2 * (iid[1] - iid[0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=60), st.integers(1, 10))
def test_ci_brackets_are_ordered_and_within_range(xs: list[float], b: int) -> None:
    lo, hi = block_bootstrap_ci(xs, block_length=b, n_resamples=200)
    assert min(xs) - 1e-9 <= lo <= hi <= max(xs) + 1e-9


def test_paired_counts_and_agreement() -> None:
    a = np.array([1.0, 2.0, 0.0, -1.0, np.nan])
    b = np.array([0.0, 2.0, 1.0, -1.0, 3.0])
    res = paired_comparison(
        "p", "base", a, b, ["X", "Y", None, "Z", "Q"], ["W", "Y", "V", "Z", "Q"], block_length=2
    )
    assert (res.wins, res.losses, res.ties, res.n) == (1, 1, 2, 4)
    assert res.mean_diff == pytest.approx(0.0)
    assert res.agreement_rate == pytest.approx(0.5)
    with pytest.raises(ValueError):
        paired_comparison("p", "b", a[:2], b, [], [], block_length=1)


def test_batch_means_interval_covers_and_widens_with_few_batches() -> None:
    from harness.stats import batch_means_ci

    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 600)
    lo, hi = batch_means_ci(x, batch_length=20)
    assert lo < x.mean() < hi and lo < 1.0 < hi
    lo3, hi3 = batch_means_ci(x, batch_length=200)  # 3 batches: t with 2 df
    assert hi3 - lo3 > hi - lo
    assert batch_means_ci([2.0, 2.0, 2.0], batch_length=1) == (2.0, 2.0)


def test_paired_comparison_defaults_to_bootstrap_t_and_keeps_the_older_methods() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    names = [None] * 400
    bt = paired_comparison("p", "b", a, b, names, names, block_length=10)
    bm = paired_comparison("p", "b", a, b, names, names, block_length=10, ci_method="batch_means")
    bb = paired_comparison(
        "p", "b", a, b, names, names, block_length=10, ci_method="block_bootstrap"
    )
    assert (bt.ci_method, bm.ci_method, bb.ci_method) == (
        "bootstrap_t",
        "batch_means",
        "block_bootstrap",
    )
    assert len({(c.ci_low, c.ci_high) for c in (bt, bm, bb)}) == 3
    for c in (bt, bm, bb):
        assert c.ci_low < c.mean_diff < c.ci_high


def test_holm_adjustment_matches_hand_computation() -> None:
    from harness.stats import holm_adjust

    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); NaN stays NaN
    assert holm_adjust([0.04, 0.01, float("nan"), 0.02]) == pytest.approx(
        [0.04, 0.03, float("nan"), 0.04], nan_ok=True
    )
    # monotone: a larger raw p never gets a smaller adjusted p
    assert holm_adjust([0.001, 0.5, 0.02]) == pytest.approx([0.003, 0.5, 0.04])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_is_bounded_and_never_below_raw(ps: list[float]) -> None:
    from harness.stats import holm_adjust

    adj = holm_adjust(ps)
    for p, a in zip(ps, adj, strict=True):
        assert p - 1e-12 <= a <= 1.0


def test_p_value_agrees_with_the_interval_and_all_pairs() -> None:
    from harness.stats import all_pairs

    rng = np.random.default_rng(5)
    n = 400
    base = rng.normal(0.0, 1.0, n)
    rewards = {"a": base + 0.5, "b": base, "c": base + rng.normal(0, 0.01, n)}
    choices = {k: ["x"] * n for k in rewards}
    pairs = all_pairs(rewards, choices, block_length=5)
    assert [(p.policy, p.baseline) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    for p in pairs:
        excludes_zero = p.ci_low > 0 or p.ci_high < 0
        assert excludes_zero == (p.p_value < 0.05)
        assert p.p_holm >= p.p_value
    assert pairs[0].p_holm < 0.05  # a is 0.5 better on every decision
    assert pairs[2].p_value > 0.05  # b vs c: noise around zero
