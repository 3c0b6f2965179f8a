"""Point-in-time spot features at exact bars, against plain-loop textbook computations.

Every expected value is computed here with a Python loop over a hand-made bar series (or the
source's own bars), never through `harness.engine.features`, so an error made consistently in
the engine (a bar off by one, a wrong annualisation) cannot pass.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.engine.features import spot_features

HOUR = pd.Timedelta(hours=1)
T0 = pd.Timestamp("2024-01-01T00:00Z")
N_BARS = 24 * 40  # 40 days of hourly bars: enough for the 30-day window


def _series() -> tuple[list[pd.Timestamp], list[float]]:
    """Hourly closes with a known, irregular log-return pattern (no two windows alike)."""
    labels = [T0 + k * HOUR for k in range(N_BARS)]
    closes = [100.0]
    for k in range(1, N_BARS):
        step = 0.01 * math.sin(k * 0.7) + 0.004 * ((k * 7) % 5 - 2)
        closes.append(closes[-1] * math.exp(step))
    return labels, closes


def _ns(ts: list[pd.Timestamp]) -> np.ndarray:
    return np.array([t.value for t in ts], dtype=np.int64)


def _loop_rv(closes: list[float], j: int, n_returns: int) -> float:
    """Textbook realized vol: sqrt(mean of squared hourly log returns * hours per 365-day year)."""
    sq = [math.log(closes[i] / closes[i - 1]) ** 2 for i in range(j - n_returns + 1, j + 1)]
    return math.sqrt(sum(sq) / n_returns * 365 * 24)


@pytest.mark.parametrize("j", [24 * 31, 24 * 31 + 5, 24 * 35 + 13, N_BARS - 1])
def test_every_feature_at_an_exact_bar_matches_a_plain_loop(j: int) -> None:
    labels, closes = _series()
    at = labels[j]
    f = spot_features(_ns(labels), np.array(closes), HOUR, _ns([at]))
    # spot at decision t is the close of the bar labeled t, never the next one
    assert f["spot"][0] == closes[j]
    assert f["return_1d"][0] == pytest.approx(closes[j] / closes[j - 24] - 1.0, rel=1e-12)
    assert f["return_7d"][0] == pytest.approx(closes[j] / closes[j - 168] - 1.0, rel=1e-12)
    assert f["realized_vol_7d"][0] == pytest.approx(_loop_rv(closes, j, 168), rel=1e-9)
    assert f["realized_vol_30d"][0] == pytest.approx(_loop_rv(closes, j, 720), rel=1e-9)


def test_spot_between_bars_is_the_last_closed_bar() -> None:
    labels, closes = _series()
    j = 24 * 32
    at = labels[j] + pd.Timedelta(minutes=59)  # bar j+1 is not closed yet
    f = spot_features(_ns(labels), np.array(closes), HOUR, _ns([at]))
    assert f["spot"][0] == closes[j]
    # a lag window counts only from an exact bar 1 day earlier: there is none at :59
    assert np.isnan(f["return_1d"][0])


def test_realized_vol_is_annualised_on_a_365_day_year() -> None:
    # alternating +-x log returns: every squared return is x^2, so RV = x * sqrt(365 * 24)
    x = 0.01
    labels = [T0 + k * HOUR for k in range(24 * 31 + 1)]
    closes = [100.0 * math.exp(x * (k % 2)) for k in range(len(labels))]
    f = spot_features(_ns(labels), np.array(closes), HOUR, _ns([labels[-1]]))
    assert f["realized_vol_7d"][0] == pytest.approx(x * math.sqrt(365 * 24), rel=1e-9)
    assert f["realized_vol_30d"][0] == pytest.approx(x * math.sqrt(365 * 24), rel=1e-9)
    # and on daily bars the same returns annualise with sqrt(365)
    days = [T0 + k * pd.Timedelta(days=1) for k in range(40)]
    daily = [100.0 * math.exp(x * (k % 2)) for k in range(40)]
    g = spot_features(_ns(days), np.array(daily), pd.Timedelta(days=1), _ns([days[-1]]))
    assert g["realized_vol_7d"][0] == pytest.approx(x * math.sqrt(365), rel=1e-9)


def test_features_are_none_when_history_is_short_or_has_a_gap() -> None:
    labels, closes = _series()
    j = 24 * 3
    f = spot_features(_ns(labels), np.array(closes), HOUR, _ns([labels[j]]))
    assert f["spot"][0] == closes[j]
    assert f["return_1d"][0] == pytest.approx(closes[j] / closes[j - 24] - 1.0)
    for name in ("return_7d", "realized_vol_7d", "realized_vol_30d"):
        assert np.isnan(f[name][0]), name
    # a missing bar inside the 7-day window: the window is incomplete, RV is absent
    j = 24 * 35
    keep = [k for k in range(N_BARS) if k != j - 10]
    f = spot_features(
        _ns([labels[k] for k in keep]),
        np.array([closes[k] for k in keep]),
        HOUR,
        _ns([labels[j]]),
    )
    assert np.isnan(f["realized_vol_7d"][0]) and np.isnan(f["realized_vol_30d"][0])
    assert f["return_1d"][0] == pytest.approx(closes[j] / closes[j - 24] - 1.0)
    # before the first bar nothing is known
    f = spot_features(_ns(labels), np.array(closes), HOUR, _ns([labels[0] - HOUR]))
    assert all(np.isnan(v[0]) for v in f.values())


def test_a_fresher_spot_replaces_the_stale_bar_in_spot_and_returns() -> None:
    # bars stop at J (a feed gap); at J + 5 hours the chain's underlying (123.0) is fresher
    labels, closes = _series()
    gap_end = 24 * 33
    keep = [k for k in range(N_BARS) if not gap_end - 5 < k <= gap_end]
    at = labels[gap_end]
    last = gap_end - 5
    f = spot_features(
        _ns([labels[k] for k in keep]),
        np.array([closes[k] for k in keep]),
        HOUR,
        _ns([at, at]),
        fresher_spot=np.array([123.0, np.nan]),
    )
    assert list(f["spot"]) == [123.0, closes[last]]
    assert f["return_1d"][0] == pytest.approx(123.0 / closes[gap_end - 24] - 1.0, rel=1e-12)
    assert f["return_7d"][0] == pytest.approx(123.0 / closes[gap_end - 168] - 1.0, rel=1e-12)
    assert f["return_1d"][1] == pytest.approx(closes[last] / closes[gap_end - 24] - 1.0)
    # realized vol comes from bars only: the complete window ending at the last bar
    for i in (0, 1):
        assert f["realized_vol_7d"][i] == pytest.approx(_loop_rv(closes, last, 168), rel=1e-9)
        assert f["realized_vol_30d"][i] == pytest.approx(_loop_rv(closes, last, 720), rel=1e-9)


def test_a_fresher_spot_before_the_first_bar_gives_a_spot_and_nothing_else() -> None:
    labels, closes = _series()
    f = spot_features(
        _ns(labels), np.array(closes), HOUR, _ns([labels[0] - HOUR]), fresher_spot=np.array([99.0])
    )
    assert f["spot"][0] == 99.0
    for name in ("return_1d", "return_7d", "realized_vol_7d", "realized_vol_30d"):
        assert np.isnan(f[name][0]), name


def test_features_at_many_times_at_once_match_one_at_a_time() -> None:
    # vectorised over decision times, each answer equals the plain loop at that bar
    labels, closes = _series()
    js = [24 * 31, 24 * 3, N_BARS - 1, 24 * 8, 0]
    f = spot_features(_ns(labels), np.array(closes), HOUR, _ns([labels[j] for j in js]))
    for i, j in enumerate(js):
        assert f["spot"][i] == closes[j]
        want_1d = closes[j] / closes[j - 24] - 1.0 if j >= 24 else np.nan
        want_7d = _loop_rv(closes, j, 168) if j >= 168 else np.nan
        np.testing.assert_allclose(f["return_1d"][i], want_1d, rtol=1e-12)
        np.testing.assert_allclose(f["realized_vol_7d"][i], want_7d, rtol=1e-9)


def test_a_lag_that_lands_on_the_very_first_bar_counts() -> None:
    labels, closes = _series()
    f = spot_features(_ns(labels), np.array(closes), HOUR, _ns([labels[24], labels[168]]))
    assert f["return_1d"][0] == pytest.approx(closes[24] / closes[0] - 1.0, rel=1e-12)
    assert f["return_7d"][1] == pytest.approx(closes[168] / closes[0] - 1.0, rel=1e-12)
    assert np.isnan(f["return_7d"][0])
    # likewise the first complete 7-day window: returns 1..168, the first bar as its base
    assert f["realized_vol_7d"][1] == pytest.approx(_loop_rv(closes, 168, 168), rel=1e-9)
    assert np.isnan(f["realized_vol_7d"][0])


def test_a_single_bar_gives_its_spot_and_no_returns() -> None:
    f = spot_features(_ns([T0]), np.array([100.0]), HOUR, _ns([T0, T0 + HOUR, T0 - HOUR]))
    np.testing.assert_array_equal(f["spot"], [100.0, 100.0, np.nan])
    for name in ("return_1d", "return_7d", "realized_vol_7d", "realized_vol_30d"):
        assert np.isnan(f[name]).all(), name


def test_weekly_bars_make_a_one_return_7d_window() -> None:
    # bar = 7 days: the 7-day window holds exactly one return, RV = |r| * sqrt(365 / 7)
    week = pd.Timedelta(days=7)
    labels = [T0 + k * week for k in range(6)]
    closes = [100.0, 104.0, 99.0, 101.0, 97.0, 103.0]
    f = spot_features(_ns(labels), np.array(closes), week, _ns([labels[3]]))
    r = math.log(closes[3] / closes[2])
    assert f["realized_vol_7d"][0] == pytest.approx(abs(r) * math.sqrt(365 / 7), rel=1e-12)
    assert f["return_7d"][0] == pytest.approx(closes[3] / closes[2] - 1.0, rel=1e-12)


def test_no_bars_gives_only_the_fresher_spot() -> None:
    # an empty bar series used to raise IndexError on close[0]; now NaN features, spot if fresh
    empty_ns = np.array([], dtype=np.int64)
    at = _ns([T0, T0 + HOUR])
    f = spot_features(empty_ns, np.array([]), HOUR, at, fresher_spot=np.array([101.0, np.nan]))
    np.testing.assert_array_equal(f["spot"], [101.0, np.nan])
    g = spot_features(empty_ns, np.array([]), HOUR, at)
    assert np.isnan(g["spot"]).all()
    for name in ("return_1d", "return_7d", "realized_vol_7d", "realized_vol_30d"):
        assert f[name].shape == (2,) and np.isnan(f[name]).all(), name
        assert np.isnan(g[name]).all(), name
