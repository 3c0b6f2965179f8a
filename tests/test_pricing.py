"""Tests for harness.pricing: textbook values, real Deribit tickers, properties, vectorization."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.instruments import parse_instrument_name
from harness.pricing import (
    Greeks,
    black76_delta,
    black76_gamma,
    black76_greeks,
    black76_price,
    black76_theta,
    black76_vega,
    coin_price,
    implied_vol,
    usd_price,
    year_fraction,
)


def _ref_black76(f: float, k: float, t: float, sigma: float, is_call: bool, r: float) -> float:
    """Independent scalar Black-76 written with math.erf."""

    def n(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    v = sigma * math.sqrt(t)
    d1 = (math.log(f / k) + 0.5 * v * v) / v
    d2 = d1 - v
    df = math.exp(-r * t)
    if is_call:
        return df * (f * n(d1) - k * n(d2))
    return df * (k * n(-d2) - f * n(-d1))


# ---------------------------------------------------------------- textbook values


def test_hull_futures_option_example() -> None:
    # Hull, "Options, Futures and Other Derivatives", Black's model example: European put on
    # a futures price of 20, strike 20, r = 9%, 4 months, vol 25% -> about 1.12.
    put = black76_price(20.0, 20.0, 4.0 / 12.0, 0.25, False, r=0.09)
    call = black76_price(20.0, 20.0, 4.0 / 12.0, 0.25, True, r=0.09)
    assert put == pytest.approx(1.12, abs=0.005)
    assert put == pytest.approx(_ref_black76(20.0, 20.0, 4.0 / 12.0, 0.25, False, 0.09), rel=1e-12)
    # At F == K parity says call == put.
    assert call == pytest.approx(put, rel=1e-14)


def test_atm_closed_form_r0() -> None:
    # With r = 0 and F = K: C = F * (2 N(sigma sqrt(T) / 2) - 1) = F * erf(sigma sqrt(T) / (2 sqrt 2)).
    expected = 100.0 * math.erf(0.2 / (2.0 * math.sqrt(2.0)))
    assert black76_price(100.0, 100.0, 1.0, 0.2, True) == pytest.approx(expected, rel=1e-13)
    assert expected == pytest.approx(7.965567455405798, rel=1e-12)


@pytest.mark.parametrize(
    ("f", "k", "t", "sigma", "is_call", "r"),
    [
        (9440.73, 9250.0, 0.0118705, 0.6321, True, 0.0),
        (244.14, 270.0, 0.0053178, 0.7296, False, 0.0),
        (1.1367, 1.02, 0.0051427, 2.0964, True, 0.0),
        (50000.0, 80000.0, 1.5, 0.8, True, 0.03),
        (50000.0, 30000.0, 0.25, 0.4, False, -0.01),
    ],
)
def test_matches_math_erf_reference(
    f: float, k: float, t: float, sigma: float, is_call: bool, r: float
) -> None:
    assert black76_price(f, k, t, sigma, is_call, r) == pytest.approx(
        _ref_black76(f, k, t, sigma, is_call, r), rel=1e-11, abs=1e-12 * f
    )


# ---------------------------------------------------------------- real Deribit tickers


def _ticker_inputs(name: str, timestamp_ms: int) -> tuple[float, float, bool]:
    spec = parse_instrument_name(name)
    t = year_fraction(pd.Timestamp(timestamp_ms, unit="ms", tz="UTC"), spec.expiry)
    assert isinstance(t, float)
    return spec.strike, t, spec.is_call


def test_deribit_btc_inverse_call() -> None:
    # ticker.BTC-5JUN20-9250-C.raw at 1590969652595 ms (2020-06-01).
    f = 9440.73
    k, t, is_call = _ticker_inputs("BTC-5JUN20-9250-C", 1590969652595)
    g = black76_greeks(f, k, t, 0.6321, is_call)
    assert coin_price(g.price, f) == pytest.approx(0.03847784, abs=2e-6)
    assert g.delta == pytest.approx(0.62959, abs=2e-5)
    assert g.gamma == pytest.approx(0.00058, abs=5e-6)
    assert g.vega == pytest.approx(3.88497, rel=0.01)
    assert g.theta == pytest.approx(-28.34113, rel=0.01)
    # The recorded mark price inverts back to the recorded mark IV.
    iv = implied_vol(usd_price(0.03847784, f), f, k, t, is_call)
    assert iv == pytest.approx(0.6321, abs=1e-4)


def test_deribit_eth_far_otm_inverse_call() -> None:
    # ticker.ETH-10JUN20-270-C.raw at 1591608298178 ms (2020-06-08), delta 0.031.
    f = 244.14
    k, t, is_call = _ticker_inputs("ETH-10JUN20-270-C", 1591608298178)
    g = black76_greeks(f, k, t, 0.7296, is_call)
    assert coin_price(g.price, f) == pytest.approx(0.000632, abs=2e-6)
    assert g.delta == pytest.approx(0.03105, abs=2e-5)
    assert g.vega == pytest.approx(0.01246, rel=0.01)
    assert g.gamma == pytest.approx(0.00539, rel=0.01)


def test_deribit_matic_linear_call() -> None:
    # ticker.MATIC_USDC-9MAR24-1d02-C.raw at 1709809020064 ms: linear, priced in USDC directly.
    f = 1.1367
    k, t, is_call = _ticker_inputs("MATIC_USDC-9MAR24-1d02-C", 1709809020064)
    assert k == 1.02
    g = black76_greeks(f, k, t, 2.0964, is_call)
    assert g.price == pytest.approx(0.139, abs=2e-6)
    assert g.delta == pytest.approx(0.7869, abs=5e-5)  # published with 4 decimals
    assert g.theta == pytest.approx(-0.01323, rel=0.01)
    assert implied_vol(0.139, f, k, t, is_call) == pytest.approx(2.0964, abs=1e-3)


# ---------------------------------------------------------------- edge cases


def test_expired_and_zero_vol_give_intrinsic() -> None:
    assert black76_price(100.0, 90.0, 0.0, 0.5, True) == 10.0
    assert black76_price(100.0, 90.0, -0.1, 0.5, False) == 0.0
    assert black76_price(80.0, 90.0, 0.0, 0.5, False) == 10.0
    # sigma = 0 before expiry: discounted intrinsic.
    assert black76_price(100.0, 90.0, 1.0, 0.0, True, r=0.1) == pytest.approx(10.0 * math.exp(-0.1))
    out = black76_price(
        [100.0, 100.0, 100.0], [90.0, 100.0, 110.0], [0.0, -1.0, 0.0], 0.5, [True, True, False]
    )
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, [10.0, 0.0, 10.0])


def test_expired_greeks() -> None:
    f = np.array([110.0, 100.0, 90.0])
    np.testing.assert_array_equal(black76_delta(f, 100.0, 0.0, 0.5, True), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(black76_delta(f, 100.0, 0.0, 0.5, False), [0.0, -0.5, -1.0])
    for fn in (black76_gamma, black76_vega, black76_theta):
        np.testing.assert_array_equal(fn(f, 100.0, 0.0, 0.5, True), [0.0, 0.0, 0.0])
        np.testing.assert_array_equal(fn(f, 100.0, -1.0, 0.5, False), [0.0, 0.0, 0.0])


def test_scalar_inputs_return_numpy_scalars() -> None:
    for value in (
        black76_price(100.0, 100.0, 1.0, 0.5, True),
        black76_delta(100.0, 100.0, 1.0, 0.5, True),
        black76_gamma(100.0, 100.0, 1.0, 0.5, True),
        black76_vega(100.0, 100.0, 1.0, 0.5, True),
        black76_theta(100.0, 100.0, 1.0, 0.5, True),
        implied_vol(10.0, 100.0, 100.0, 1.0, True),
        coin_price(10.0, 100.0),
        usd_price(0.1, 100.0),
        *black76_greeks(100.0, 100.0, 1.0, 0.5, True),
    ):
        assert isinstance(value, np.float64)
        assert np.ndim(value) == 0


def test_broadcasting_shapes() -> None:
    f = np.linspace(50.0, 150.0, 5)[:, None]
    k = np.array([80.0, 100.0, 120.0])[None, :]
    g = black76_greeks(f, k, 0.5, 0.6, np.array([True, False, True]))
    for arr in g:
        assert arr.shape == (5, 3)
    iv = implied_vol(g.price, f, k, 0.5, np.array([True, False, True]))
    np.testing.assert_allclose(iv, 0.6, atol=1e-9)


def test_is_call_must_be_bool() -> None:
    with pytest.raises(TypeError, match="is_call"):
        black76_price(100.0, 100.0, 1.0, 0.5, "call")  # type: ignore[arg-type]


def test_greeks_tuple_matches_individual_functions() -> None:
    args = (np.array([90.0, 100.0, 120.0]), 100.0, 0.3, 0.7, np.array([True, False, True]), 0.05)
    g = black76_greeks(*args)
    assert isinstance(g, Greeks)
    np.testing.assert_array_equal(g.price, black76_price(*args))
    np.testing.assert_array_equal(g.delta, black76_delta(*args))
    np.testing.assert_array_equal(g.gamma, black76_gamma(*args))
    np.testing.assert_array_equal(g.vega, black76_vega(*args))
    np.testing.assert_array_equal(g.theta, black76_theta(*args))


@pytest.mark.parametrize("is_call", [True, False])
@pytest.mark.parametrize("r", [0.0, 0.07])
def test_greeks_match_finite_differences(is_call: bool, r: float) -> None:
    f, k, t, s = 30000.0, np.array([20000.0, 29000.0, 30000.0, 45000.0]), 0.2, 0.75
    g = black76_greeks(f, k, t, s, is_call, r)
    hf, hs, ht = 1e-4 * f, 1e-5, 1e-6

    def p(ff: float, tt: float, ss: float) -> np.ndarray:
        return black76_price(ff, k, tt, ss, is_call, r)

    np.testing.assert_allclose(g.delta, (p(f + hf, t, s) - p(f - hf, t, s)) / (2 * hf), atol=1e-7)
    gamma_fd = (p(f + hf, t, s) - 2 * p(f, t, s) + p(f - hf, t, s)) / hf**2
    np.testing.assert_allclose(g.gamma, gamma_fd, rtol=1e-4, atol=1e-12)
    vega_fd = (p(f, t, s + hs) - p(f, t, s - hs)) / (2 * hs) / 100.0
    np.testing.assert_allclose(g.vega, vega_fd, rtol=1e-6)
    theta_fd = -(p(f, t + ht, s) - p(f, t - ht, s)) / (2 * ht) / 365.0
    np.testing.assert_allclose(g.theta, theta_fd, rtol=1e-5)


def test_implied_vol_nan_cases() -> None:
    f, k, t = 100.0, 90.0, 1.0
    cases = [
        (9.0, True),  # below the call's intrinsic value 10
        (10.0, True),  # exactly intrinsic: no time value
        (100.0, True),  # at the call's upper bound F
        (120.0, True),  # above it
        (90.0, False),  # at the put's upper bound K
        (-1.0, False),  # negative price
    ]
    for price, is_call in cases:
        assert np.isnan(implied_vol(price, f, k, t, is_call)), (price, is_call)
    assert np.isnan(implied_vol(12.0, f, k, 0.0, True))
    assert np.isnan(implied_vol(12.0, f, k, -0.5, True))
    assert np.isnan(implied_vol(np.nan, f, k, t, True))
    assert np.isnan(implied_vol(12.0, np.inf, k, t, True))
    assert np.isnan(implied_vol(12.0, f, 0.0, t, True))
    # Discounted bounds: with r > 0 the call's intrinsic is exp(-rT)(F - K).
    intrinsic = math.exp(-0.1) * 10.0
    assert np.isnan(implied_vol(intrinsic * (1 - 1e-9), f, k, t, True, r=0.1))
    assert np.isfinite(implied_vol(intrinsic + 1.0, f, k, t, True, r=0.1))


def test_implied_vol_round_trip_grid() -> None:
    f = 1000.0
    sigma, t, m, is_call, r = np.meshgrid(
        np.geomspace(0.01, 5.0, 15),
        np.geomspace(1.0 / 8760.0, 2.0, 12),
        np.geomspace(0.3, 3.0, 17),
        np.array([True, False]),
        np.array([0.0, 0.05]),
        indexing="ij",
    )
    k = f * m
    price = black76_price(f, k, t, sigma, is_call, r)
    df = np.exp(-r * t)
    intrinsic = df * np.where(is_call, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0))
    vega = black76_vega(f, k, t, sigma, is_call, r)
    solvable = (price - intrinsic >= 1e-10 * f) & (vega >= 1e-10 * f)
    assert solvable.sum() > 3000
    iv = implied_vol(price, f, k, t, is_call, r)
    assert not np.isnan(iv[solvable]).any()
    np.testing.assert_allclose(iv[solvable], sigma[solvable], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- hypothesis properties

forwards = st.floats(1e-2, 1e6)
moneyness = st.floats(0.3, 3.0)
times = st.floats(1.0 / 8760.0, 3.0)
vols = st.floats(0.01, 5.0)
rates = st.floats(-0.05, 0.25)


@given(forwards, moneyness, times, vols, rates)
def test_put_call_parity(f: float, m: float, t: float, s: float, r: float) -> None:
    k = f * m
    call = black76_price(f, k, t, s, True, r)
    put = black76_price(f, k, t, s, False, r)
    assert call - put == pytest.approx(math.exp(-r * t) * (f - k), abs=1e-12 * (f + k))


@given(forwards, moneyness, times, vols, rates, st.floats(1e-4, 0.5))
def test_call_monotonicity(f: float, m: float, t: float, s: float, r: float, bump: float) -> None:
    k = f * m
    base = black76_price(f, k, t, s, True, r)
    noise = 1e-12 * (f + k)
    assert black76_price(f * (1 + bump), k, t, s, True, r) >= base - noise
    assert black76_price(f, k, t, s * (1 + bump), True, r) >= base - noise
    assert black76_price(f, k * (1 + bump), t, s, True, r) <= base + noise


@given(forwards, moneyness, times, vols, rates, st.floats(1e-4, 0.5))
def test_call_delta_bounds_and_monotone(
    f: float, m: float, t: float, s: float, r: float, bump: float
) -> None:
    k = f * m
    df = math.exp(-r * t)
    d = black76_delta(f, k, t, s, True, r)
    assert 0.0 <= d <= df * (1 + 1e-15)
    assert black76_delta(f * (1 + bump), k, t, s, True, r) >= d - 1e-15
    put_d = black76_delta(f, k, t, s, False, r)
    assert d - put_d == pytest.approx(df, rel=1e-12)


@settings(max_examples=200)
@given(forwards, moneyness, times, vols, st.booleans(), rates)
def test_implied_vol_round_trip(
    f: float, m: float, t: float, s: float, is_call: bool, r: float
) -> None:
    k = f * m
    price = black76_price(f, k, t, s, is_call, r)
    df = math.exp(-r * t)
    intrinsic = df * max(f - k, 0.0) if is_call else df * max(k - f, 0.0)
    iv = implied_vol(price, f, k, t, is_call, r)
    if price - intrinsic >= 1e-10 * f and black76_vega(f, k, t, s, is_call, r) >= 1e-10 * f:
        assert iv == pytest.approx(s, abs=1e-6)
    else:
        # Negligible time value: any answer must still reproduce the price.
        if not np.isnan(iv):
            repriced = black76_price(f, k, t, iv, is_call, r)
            assert repriced == pytest.approx(price, abs=1e-9 * f)


@given(forwards, moneyness, times, vols, st.booleans(), rates, st.floats(1e-9, 0.5))
def test_implied_vol_nan_below_intrinsic(
    f: float, m: float, t: float, s: float, is_call: bool, r: float, shortfall: float
) -> None:
    k = f * m
    df = math.exp(-r * t)
    intrinsic = df * (max(f - k, 0.0) if is_call else max(k - f, 0.0))
    price = intrinsic - shortfall * f
    assert np.isnan(implied_vol(price, f, k, t, is_call, r))


# ---------------------------------------------------------------- vectorization


def test_vectorized_equals_scalar_calls() -> None:
    rng = np.random.default_rng(20240307)
    n = 10_000
    f = np.exp(rng.uniform(np.log(0.5), np.log(1e5), n))
    k = f * np.exp(rng.uniform(np.log(0.3), np.log(3.0), n))
    t = np.exp(rng.uniform(np.log(1.0 / 8760.0), np.log(2.0), n))
    s = rng.uniform(0.05, 3.0, n)
    c = rng.random(n) < 0.5
    r = rng.uniform(0.0, 0.1, n)
    g = black76_greeks(f, k, t, s, c, r)
    iv = implied_vol(g.price, f, k, t, c, r)
    for i in range(n):
        gi = black76_greeks(f[i], k[i], t[i], s[i], bool(c[i]), r[i])
        for name in Greeks._fields:
            assert getattr(gi, name) == getattr(g, name)[i], (name, i)
    # A scalar implied_vol call costs ~1 ms (Newton loop overhead): check every 50th element.
    for i in range(0, n, 50):
        one = implied_vol(g.price[i], f[i], k[i], t[i], bool(c[i]), r[i])
        assert one == iv[i] or (np.isnan(one) and np.isnan(iv[i])), i


# ---------------------------------------------------------------- time and units


def test_year_fraction_inputs() -> None:
    expiry = pd.Timestamp("2020-06-05 08:00", tz="UTC")
    assert year_fraction(expiry - pd.Timedelta(days=365), expiry) == 1.0
    assert year_fraction(pd.Timestamp("2020-06-05 09:00", tz="UTC"), expiry) == pytest.approx(
        -1.0 / 8760.0
    )
    # Other time zones and naive (read as UTC) values.
    assert year_fraction(pd.Timestamp("2020-06-05 04:00", tz="America/New_York"), expiry) == 0.0
    assert year_fraction(np.datetime64("2020-06-04T08:00"), expiry) == pytest.approx(1.0 / 365.0)

    idx = pd.date_range("2020-06-01 08:00", periods=4, freq="D", tz="UTC")
    expected = np.array([4.0, 3.0, 2.0, 1.0]) / 365.0
    np.testing.assert_allclose(year_fraction(idx, expiry), expected, rtol=1e-15)
    np.testing.assert_allclose(year_fraction(pd.Series(idx), expiry), expected, rtol=1e-15)
    as_of = idx.tz_localize(None).to_numpy().astype("datetime64[s]")
    out = year_fraction(as_of, np.datetime64("2020-06-05T08:00"))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    with_nat = year_fraction(np.array(["2020-06-04T08:00", "NaT"], dtype="datetime64[ms]"), expiry)
    assert with_nat[0] == pytest.approx(1.0 / 365.0)
    assert np.isnan(with_nat[1])


def test_coin_usd_conversion() -> None:
    np.testing.assert_allclose(coin_price([363.26, 0.0], 9440.73), [363.26 / 9440.73, 0.0])
    assert usd_price(coin_price(123.45, 9440.73), 9440.73) == pytest.approx(123.45, rel=1e-15)
    np.testing.assert_allclose(usd_price(0.1, np.array([100.0, 200.0])), [10.0, 20.0])


# ---------------------------------------------------------------- defaults and odd inputs


def test_rate_defaults_to_zero_in_every_greek() -> None:
    # r omitted must mean r = 0: N(d1), the normal density terms and theta by hand at r = 0.
    f, k, t, s = 100.0, 110.0, 0.5, 0.6
    v = s * math.sqrt(t)
    d1 = (math.log(f / k) + 0.5 * v * v) / v
    pdf = math.exp(-0.5 * d1 * d1) / math.sqrt(2.0 * math.pi)
    assert black76_delta(f, k, t, s, True) == pytest.approx(
        0.5 * (1.0 + math.erf(d1 / math.sqrt(2.0))), rel=1e-12
    )
    assert black76_gamma(f, k, t, s, True) == pytest.approx(pdf / (f * v), rel=1e-12)
    assert black76_vega(f, k, t, s, True) == pytest.approx(f * pdf * math.sqrt(t) / 100, rel=1e-12)
    theta = -f * pdf * s / (2.0 * math.sqrt(t)) / 365.0
    assert black76_theta(f, k, t, s, True) == pytest.approx(theta, rel=1e-12)
    assert black76_price(f, k, t, s, True) == pytest.approx(_ref_black76(f, k, t, s, True, 0.0))


def test_implied_vol_is_nan_when_the_iteration_does_not_converge() -> None:
    # documented: no answer within max_iter steps is NaN, never a half-converged number
    price = black76_price(100.0, 130.0, 0.25, 0.8, True)
    assert np.isnan(implied_vol(price, 100.0, 130.0, 0.25, True, max_iter=0))
    both = implied_vol([price, price], 100.0, 130.0, 0.25, True, max_iter=0)
    assert np.isnan(both).all()
    assert implied_vol(price, 100.0, 130.0, 0.25, True) == pytest.approx(0.8, abs=1e-9)


def test_year_fraction_reads_strings_with_offsets_as_utc() -> None:
    # "10:00+02:00" is 08:00 UTC: one day before an 08:00 UTC expiry, whatever the array shape
    expiry = pd.Timestamp("2020-06-05 08:00", tz="UTC")
    as_of = np.array([["2020-06-04T10:00+02:00"], ["2020-06-03T10:00+02:00"]], dtype=object)
    out = year_fraction(as_of, expiry)
    assert isinstance(out, np.ndarray) and out.shape == (2, 1)
    np.testing.assert_allclose(out, [[1.0 / 365.0], [2.0 / 365.0]], rtol=1e-15)
    # pandas spellings numpy cannot parse on its own
    words = np.array(["2020-06-04 08:00 UTC", "2020-06-03 08:00 UTC"], dtype=object)
    np.testing.assert_allclose(year_fraction(words, expiry), [1.0 / 365.0, 2.0 / 365.0])


def test_year_fraction_of_a_missing_time_is_nan_and_a_float() -> None:
    expiry = pd.Timestamp("2020-06-05 08:00", tz="UTC")
    for missing in (pd.NaT, None):
        out = year_fraction(missing, expiry)
        assert isinstance(out, float) and math.isnan(out)
        back = year_fraction(expiry, missing)
        assert isinstance(back, float) and math.isnan(back)


def test_greeks_at_zero_vol_or_expiry_are_exact_and_silent() -> None:
    # the 0/0 of gamma at sigma = 0 or T = 0 is masked, never printed as a RuntimeWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = black76_greeks([100.0, 100.0, 90.0], 100.0, [1.0, 0.0, 0.0], [0.0, 0.5, 0.0], True)
        assert black76_gamma(100.0, 100.0, 1.0, 0.0, True) == 0.0
    np.testing.assert_array_equal(g.gamma, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(g.delta, [0.5, 0.5, 0.0])


def test_theta_at_zero_vol_is_the_discount_decay_and_zero_at_expiry() -> None:
    # sigma = 0 before expiry: price = exp(-rT)(F - K), so -dPrice/dT per day = r * price / 365
    r, t = 0.05, 0.5
    price = math.exp(-r * t) * 10.0
    assert black76_theta(110.0, 100.0, t, 0.0, True, r) == pytest.approx(r * price / 365.0)
    assert black76_theta(90.0, 100.0, t, 0.0, True, r) == 0.0
    # at expiry nothing decays any more, whatever the rate
    assert black76_theta(110.0, 100.0, 0.0, 0.5, True, r) == 0.0
    assert black76_theta(90.0, 100.0, 0.0, 0.5, False, r) == 0.0


def test_implied_vol_newton_starts_close_enough_to_converge_in_few_steps() -> None:
    # The docstring's claim: Newton from the value curve's inflection point sqrt(2|ln F/K|),
    # at the money from Brenner-Subrahmanyam sqrt(2 pi) * C / F, so a handful of steps suffice.
    # A worse start still converges by bisection, but only after many more steps.
    for s in (0.1, 0.5, 0.8):
        for t in (1.0 / 365.0, 0.25):
            price = black76_price(100.0, 100.0, t, s, True)
            assert implied_vol(price, 100.0, 100.0, t, True, max_iter=4) == pytest.approx(
                s, abs=1e-9
            ), (s, t)
    # Deribit-like quotes (vol 20-150%, one week to six months, strikes 0.7-1.5 F) with a time
    # value of at least one 0.0001 tick: today every one converges within 9 steps.
    f = 1000.0
    sigma, t, m = np.meshgrid(
        np.geomspace(0.2, 1.5, 8), np.geomspace(7.0 / 365.0, 0.5, 5), np.geomspace(0.7, 1.5, 9)
    )
    k = f * m
    price = black76_price(f, k, t, sigma, True)
    quoted = price - np.maximum(f - k, 0.0) >= 1e-4 * f
    assert quoted.sum() > 250
    iv = implied_vol(price[quoted], f, k[quoted], t[quoted], True, max_iter=10)
    np.testing.assert_allclose(iv, sigma[quoted], atol=1e-12)


def test_pricing_a_wide_grid_and_junk_inputs_prints_no_runtime_warning() -> None:
    # Expired, zero-vol, deep OTM and unsolvable inputs all go through masked arithmetic
    # (0/0, log 0): users must see NaN or 0 where documented, never a flood of warnings.
    f = 1000.0
    sigma, t, m, is_call = np.meshgrid(
        np.geomspace(0.01, 5.0, 8),
        np.array([0.0, 1.0 / 8760.0, 0.1, 2.0]),
        np.geomspace(0.3, 3.0, 9),
        np.array([True, False]),
        indexing="ij",
    )
    k = f * m
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        price = black76_price(f, k, t, sigma, is_call)
        black76_greeks(f, k, t, sigma, is_call)
        black76_greeks(f, k, t, 0.0, is_call, r=0.05)
        iv = implied_vol(price, f, k, t, is_call)
        junk = implied_vol(
            [0.0, 1e-300, 1e9, np.nan, 5.0], 100.0, [100.0, 1e6, 100.0, 100.0, 0.0], 1.0, True
        )
    assert np.isnan(junk[[0, 2, 3, 4]]).all()
    assert np.isnan(iv[t == 0.0]).all()


def test_year_fraction_reads_a_zero_dimensional_datetime_array_as_a_scalar() -> None:
    # np.array(np.datetime64(...)) used to raise TypeError in pd.Timestamp
    a = np.array(np.datetime64("2025-01-01T00:00"))
    e = np.array(np.datetime64("2025-01-02T12:00"))
    got = year_fraction(a, e)
    assert isinstance(got, float)
    assert got == pytest.approx(1.5 / 365.0, rel=1e-15)
    assert year_fraction("2025-01-01", e) == pytest.approx(1.5 / 365.0, rel=1e-15)
    assert math.isnan(year_fraction(a, np.array(np.datetime64("NaT"))))
