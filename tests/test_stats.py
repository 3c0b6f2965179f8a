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


# Mutation pass 5 (docs/testing.md): each test below kills a survivor of the seeded sample,
# against a hand computation or the documented convention, not another path of stats.py.


def test_batch_means_test_of_two_values_is_their_mean_with_a_zero_width_interval() -> None:
    from harness.stats import batch_means_test

    assert batch_means_test([1.0, 3.0], batch_length=1) == (2.0, 2.0, 0.0)
    assert batch_means_test([-1.0, 1.0], batch_length=1) == (0.0, 0.0, 1.0)


def test_batch_means_test_of_a_constant_series_is_exactly_its_mean() -> None:
    """Batches of 3, 4 and 3 values of 0.1 have means that differ in the last bit (0.3 / 3 is
    not 0.4 / 4 in floats): a constant series must still give the zero-width interval."""
    from harness.stats import batch_means_test

    x = [0.1] * 10
    mu = float(np.mean(x))
    assert batch_means_test(x, batch_length=3) == (mu, mu, 0.0)


def test_batch_means_test_matches_the_textbook_t_test_on_batch_means() -> None:
    from scipy.stats import t as student_t

    from harness.stats import batch_means_test

    x = [3.0, -1.0, 2.0, 5.0, -2.0, 4.0, 1.0, 0.0, 6.0, -3.0, 2.0, 1.0]
    length = 3  # 12 values: four batches of three
    means = [sum(x[i : i + length]) / length for i in range(0, len(x), length)]
    k = len(means)
    m = sum(means) / k
    sd = (sum((b - m) ** 2 for b in means) / (k - 1)) ** 0.5
    se = sd / k**0.5
    half = student_t.ppf(0.975, k - 1) * se
    p = 2.0 * student_t.sf(abs(m) / se, k - 1)
    lo, hi, p_value = batch_means_test(x, batch_length=length)
    assert lo == pytest.approx(m - half, rel=1e-12)
    assert hi == pytest.approx(m + half, rel=1e-12)
    assert p_value == pytest.approx(p, rel=1e-12)


def test_bootstrap_t_with_exactly_three_batches_gives_a_real_interval() -> None:
    from harness.stats import bootstrap_t_test

    lo, hi, _ = bootstrap_t_test([1.0, 2.0, 4.0], batch_length=1, n_resamples=400)
    assert lo < 7.0 / 3.0 < hi


def test_bootstrap_t_is_deterministic_for_its_seed() -> None:
    from harness.stats import bootstrap_t_test

    x = np.random.default_rng(4).normal(0.2, 1.0, 60)
    first = bootstrap_t_test(x, batch_length=3, n_resamples=300, seed=11)
    assert first == bootstrap_t_test(x, batch_length=3, n_resamples=300, seed=11)
    assert first != bootstrap_t_test(x, batch_length=3, n_resamples=300, seed=12)


def test_bootstrap_t_of_mostly_zero_batches_is_nan() -> None:
    """Nine zero batches and one 5: about 0.8**5 = 33% of resamples (5 blocks of 2 avoiding the
    5) have no spread, far more than a 2.5% tail, so the studentized interval does not exist."""
    from harness.stats import bootstrap_t_test

    out = bootstrap_t_test([0.0] * 9 + [5.0], batch_length=1, n_resamples=500)
    assert all(np.isnan(v) for v in out)


def test_ci_method_label_names_unknown_methods_as_given() -> None:
    from harness.stats import CI_METHOD_LABELS, DEFAULT_CI_METHOD, ci_method_label

    assert ci_method_label("my_own_interval") == "my_own_interval"
    assert ci_method_label(None) == CI_METHOD_LABELS[DEFAULT_CI_METHOD]


def test_block_bootstrap_comparison_without_any_finite_pair_is_nan() -> None:
    nan = float("nan")
    c = paired_comparison(
        "p", "b", np.array([nan, 1.0]), np.array([0.0, nan]), ["A", "B"], ["A", "B"],
        block_length=1, ci_method="block_bootstrap",
    )  # fmt: skip
    assert c.n == 0 and c.wins == c.losses == c.ties == 0
    assert all(isinstance(v, float) and np.isnan(v) for v in (c.ci_low, c.ci_high, c.p_value))
    assert np.isnan(c.mean_diff) and np.isnan(c.agreement_rate)


# Mutation pass 7 (docs/testing.md): survivors of a fresh seed, each against a hand figure.


def test_all_pairs_uses_its_seed_for_every_pair() -> None:
    """Each pair is the paired comparison at the seed given: reports are reproducible."""
    from harness.stats import all_pairs

    rng = np.random.default_rng(11)
    n = 120
    rewards = {k: rng.normal(0.1 * i, 1.0, n) for i, k in enumerate("abc")}
    choices = {k: ["x"] * n for k in rewards}
    first = all_pairs(rewards, choices, block_length=4, seed=7)
    assert first == all_pairs(rewards, choices, block_length=4, seed=7)
    for p in first:
        alone = paired_comparison(
            p.policy,
            p.baseline,
            rewards[p.policy],
            rewards[p.baseline],
            choices[p.policy],
            choices[p.baseline],
            block_length=4,
            seed=7,
        )
        assert (p.ci_low, p.ci_high, p.p_value) == (alone.ci_low, alone.ci_high, alone.p_value)


def test_block_bootstrap_means_default_seed_is_zero() -> None:
    from harness.stats import block_bootstrap_means

    x = np.random.default_rng(3).normal(size=50)
    plain = block_bootstrap_means(x, block_length=5, n_resamples=300)
    np.testing.assert_array_equal(plain, block_bootstrap_means(x, block_length=5, n_resamples=300))
    seeded = block_bootstrap_means(x, block_length=5, n_resamples=300, seed=0)
    np.testing.assert_array_equal(plain, seeded)
    other = block_bootstrap_means(x, block_length=5, n_resamples=300, seed=1)
    assert not np.array_equal(plain, other)


def test_cluster_robust_mean_is_the_cr1_sandwich_by_hand() -> None:
    """Mean, and SE = sqrt(G / (G - 1) * sum over clusters of (sum of deviations)^2) / n."""
    from harness.stats import cluster_robust_mean

    values = [1.0, 2.0, 3.0, 4.0, 10.0, 12.0, -1.0]
    clusters = ["a", "a", "b", "b", "c", "c", "a"]
    n, mean = len(values), sum(values) / len(values)
    sums: dict[str, float] = {}
    for v, g in zip(values, clusters, strict=True):
        sums[g] = sums.get(g, 0.0) + (v - mean)
    g_count = len(sums)
    se = (g_count / (g_count - 1) * sum(s * s for s in sums.values())) ** 0.5 / n
    got_mean, got_se = cluster_robust_mean(values, clusters)
    assert got_mean == pytest.approx(mean, rel=1e-12)
    assert got_se == pytest.approx(se, rel=1e-10)
