"""Vectorized Black-76 pricing, greeks and implied volatility (Deribit conventions).

Conventions, chosen to reproduce Deribit's ticker fields:

- The model is Black-76 on the forward ``F``, which is the ticker's ``underlying_price`` (the
  synthetic future for that expiry), not the spot index.
- ``r`` is the continuously compounded rate (discount factor ``exp(-r*T)``); Deribit uses 0.
- ``t_years`` is the time to the 08:00 UTC expiry in years of 365 days of 86400 seconds
  (see `year_fraction`).
- Volatilities are fractions (0.6321 = 63.21%; Deribit's ``mark_iv`` is in percent).
- Prices are USD per 1 unit of the underlying. Inverse (coin-settled) options are quoted in
  coin = USD / F (`coin_price`); linear (USDC-settled) options are quoted in USD directly.
- Delta is the forward delta ``N(d1)`` (``N(d1) - 1`` for puts), times ``exp(-r*T)``, and is
  NOT premium-adjusted: this is what Deribit publishes for inverse and linear options alike.
- Gamma is per 1 USD move of F, vega is USD per 1 volatility point (1%), theta is USD per
  calendar day.

Every function broadcasts its inputs with numpy rules. When every input is a scalar the result
is a numpy float64 scalar, otherwise a float64 ndarray.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import ndtr

FloatArray = npt.NDArray[np.float64]
FloatResult = np.float64 | FloatArray
DatetimeLike = Any  # pd.Timestamp, datetime, np.datetime64, DatetimeIndex, Series, array

SECONDS_PER_YEAR = 365.0 * 86400.0
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
_EPS = np.finfo(np.float64).eps


class Greeks(NamedTuple):
    """Black-76 price and greeks, in the units documented in the module docstring."""

    price: FloatResult
    delta: FloatResult
    gamma: FloatResult
    vega: FloatResult
    theta: FloatResult


def _out(x: FloatArray) -> FloatResult:
    # x[()] turns a 0-d array into a numpy scalar and leaves n-d arrays untouched.
    return x[()]


def _as_bool(is_call: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    arr = np.asarray(is_call)
    if arr.dtype.kind not in "biu":
        raise TypeError(f"is_call must be a bool or bool array, got dtype {arr.dtype}")
    return arr.astype(bool)


def _npdf(x: FloatArray) -> FloatArray:
    return _INV_SQRT_2PI * np.exp(-0.5 * x * x)


class _Core(NamedTuple):
    forward: FloatArray
    strike: FloatArray
    t: FloatArray
    sigma: FloatArray
    is_call: npt.NDArray[np.bool_]
    r: FloatArray
    df: FloatArray
    live: npt.NDArray[np.bool_]
    sqrt_t: FloatArray
    d1: FloatArray
    d2: FloatArray
    price: FloatArray


def _core(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    r: npt.ArrayLike,
) -> _Core:
    f, k, t, s, c, rr = np.broadcast_arrays(
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(t_years, dtype=np.float64),
        np.asarray(sigma, dtype=np.float64),
        _as_bool(is_call),
        np.asarray(r, dtype=np.float64),
    )
    # An expired option is worth its intrinsic value now: never discount by a negative time.
    df = np.exp(-rr * np.maximum(t, 0.0))
    live = (t > 0.0) & (s > 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sqrt_t = np.sqrt(np.where(t > 0.0, t, 1.0))
        v = np.where(live, s, 1.0) * sqrt_t
        d1 = np.log(f / k) / v + 0.5 * v
        d2 = d1 - v
        # Price the out-of-the-money side and add intrinsic for the in-the-money side: the
        # direct formula for a deep ITM option loses the small time value to cancellation.
        otm_call = f * ndtr(d1) - k * ndtr(d2)
        otm_put = k * ndtr(-d2) - f * ndtr(-d1)
        time_value = np.where(f >= k, otm_put, otm_call)
        intrinsic = np.where(c, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0))
        price = df * (intrinsic + np.where(live, np.maximum(time_value, 0.0), 0.0))
    return _Core(f, k, t, s, c, rr, df, live, sqrt_t, d1, d2, price)


def _delta(c: _Core) -> FloatArray:
    # At expiry (or zero vol) the delta is the step function, 0.5 exactly at the money.
    step = np.where(c.forward > c.strike, 1.0, np.where(c.forward < c.strike, 0.0, 0.5))
    n_d1 = np.where(c.live, ndtr(c.d1), step)
    # -N(-d1) rather than N(d1) - 1 keeps precision for deep OTM puts.
    n_d1_put = np.where(c.live, -ndtr(-c.d1), step - 1.0)
    return c.df * np.where(c.is_call, n_d1, n_d1_put)


def black76_price(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    r: npt.ArrayLike = 0.0,
) -> FloatResult:
    """Black-76 option price in USD per 1 underlying (discounted intrinsic if T<=0 or sigma<=0)."""
    return _out(_core(forward, strike, t_years, sigma, is_call, r).price)


def black76_delta(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    r: npt.ArrayLike = 0.0,
) -> FloatResult:
    """Forward delta exp(-rT)*N(d1) (puts: exp(-rT)*(N(d1)-1)), not premium-adjusted."""
    return _out(_delta(_core(forward, strike, t_years, sigma, is_call, r)))


def _gamma(c: _Core) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        g = c.df * _npdf(c.d1) / (c.forward * c.sigma * c.sqrt_t)
    return np.where(c.live, g, 0.0)


def _vega(c: _Core) -> FloatArray:
    return np.where(c.live, c.df * c.forward * _npdf(c.d1) * c.sqrt_t / 100.0, 0.0)


def _theta(c: _Core) -> FloatArray:
    # theta = -dPrice/dT; the r*price term is the discount factor's own decay.
    with np.errstate(invalid="ignore"):
        decay = np.where(c.live, -c.df * c.forward * _npdf(c.d1) * c.sigma / (2.0 * c.sqrt_t), 0.0)
    return np.where(c.t > 0.0, (decay + c.r * c.price) / 365.0, 0.0)


def black76_gamma(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    r: npt.ArrayLike = 0.0,
) -> FloatResult:
    """Gamma: change of delta per 1 USD move of the forward (0 at T<=0)."""
    return _out(_gamma(_core(forward, strike, t_years, sigma, is_call, r)))


def black76_vega(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    r: npt.ArrayLike = 0.0,
) -> FloatResult:
    """Vega in USD per 1 volatility point, i.e. dPrice/dsigma / 100 (0 at T<=0)."""
    return _out(_vega(_core(forward, strike, t_years, sigma, is_call, r)))


def black76_theta(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    r: npt.ArrayLike = 0.0,
) -> FloatResult:
    """Theta in USD per calendar day as time passes (-dPrice/dT / 365; 0 at T<=0)."""
    return _out(_theta(_core(forward, strike, t_years, sigma, is_call, r)))


def black76_greeks(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    r: npt.ArrayLike = 0.0,
) -> Greeks:
    """Price (USD), delta, gamma (per USD), vega (USD/vol point), theta (USD/day) in one pass."""
    c = _core(forward, strike, t_years, sigma, is_call, r)
    return Greeks(
        price=_out(c.price),
        delta=_out(_delta(c)),
        gamma=_out(_gamma(c)),
        vega=_out(_vega(c)),
        theta=_out(_theta(c)),
    )


def _otm_value(f: FloatArray, k: FloatArray, v: FloatArray) -> FloatArray:
    # Undiscounted price of the out-of-the-money option at total volatility v = sigma*sqrt(T);
    # it equals the time value of both the call and the put at that strike.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d1 = np.log(f / k) / v + 0.5 * v
        d2 = d1 - v
        call = f * ndtr(d1) - k * ndtr(d2)
        put = k * ndtr(-d2) - f * ndtr(-d1)
    return np.maximum(np.where(f >= k, put, call), 0.0)


def _solve_total_vol(
    f: FloatArray, k: FloatArray, target: FloatArray, v_tol: FloatArray, max_iter: int
) -> FloatArray:
    """Total vol v with _otm_value(f, k, v) == target, NaN where not found (1-d inputs)."""
    n = f.size
    result = np.full(n, np.nan)
    log_target = np.log(target)
    log_fk = np.abs(np.log(f / k))

    # Bracket the root in v: the OTM value rises from 0 at v=0 to min(F, K) as v grows.
    lo = np.zeros(n)
    hi = np.ones(n)
    for _ in range(10):
        short = _otm_value(f, k, hi) < target
        if not short.any():
            break
        lo = np.where(short, hi, lo)
        hi = np.where(short, 2.0 * hi, hi)
    bracketed = _otm_value(f, k, hi) >= target

    # Start at the inflection point sqrt(2|ln F/K|) of the value curve, where Newton behaves
    # best; at the money use the Brenner-Subrahmanyam approximation instead.
    v = np.sqrt(2.0 * log_fk)
    atm_guess = np.sqrt(2.0 * np.pi) * target / np.minimum(f, k)
    v = np.where(v > 0.0, v, atm_guess)
    v = np.where((v > lo) & (v < hi), v, 0.5 * (lo + hi))
    prev_step = hi - lo

    idx = np.flatnonzero(bracketed)
    lo, hi, v, prev_step = lo[idx], hi[idx], v[idx], prev_step[idx]
    f, k, log_target, v_tol = f[idx], k[idx], log_target[idx], v_tol[idx]
    for _ in range(max_iter):
        if idx.size == 0:
            break
        value = _otm_value(f, k, v)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # Newton on log(value): the value is exponentially small for deep OTM strikes,
            # where plain Newton on the value crawls; log(value) is close to linear in 1/v.
            resid = np.log(value) - log_target
            d1 = np.log(f / k) / v + 0.5 * v
            dvalue_dv = f * _npdf(d1)
            newton = v - resid * value / dvalue_dv
        above = resid > 0.0
        hi = np.where(above, v, hi)
        lo = np.where(above, lo, v)
        # Bisect when Newton leaves the bracket or does not at least halve the last step.
        use_newton = (
            np.isfinite(newton)
            & (newton > lo)
            & (newton < hi)
            & (np.abs(newton - v) <= 0.5 * prev_step)
        )
        v_new = np.where(resid == 0.0, v, np.where(use_newton, newton, 0.5 * (lo + hi)))
        step = np.abs(v_new - v)
        # A small bisection step says nothing about the error, so only trust Newton's.
        done = (use_newton & (step <= v_tol)) | (hi - lo <= 2.0 * v_tol) | (resid == 0.0)
        result[idx[done]] = v_new[done]
        keep = ~done
        idx = idx[keep]
        lo, hi, v, prev_step = lo[keep], hi[keep], v_new[keep], step[keep]
        f, k, log_target, v_tol = f[keep], k[keep], log_target[keep], v_tol[keep]
    return result


def implied_vol(
    price: npt.ArrayLike,
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    is_call: npt.ArrayLike,
    r: npt.ArrayLike = 0.0,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> FloatResult:
    """Black-76 implied volatility (fraction) from a USD price; NaN where none exists.

    The solver works on the option's time value, which is the same for the call and the put at
    a strike, via the out-of-the-money option, so deep ITM prices invert as accurately as OTM
    ones. It runs a vectorized safeguarded Newton iteration on log(time value) in total
    volatility sigma*sqrt(T), falling back to bisection of a maintained bracket whenever Newton
    leaves the bracket or stalls. `tol` is the absolute tolerance on sigma.

    NaN is returned where:
    - any input is not finite, F <= 0, K <= 0 or T <= 0;
    - the price is at or below the discounted intrinsic value, within 8 ulps of the price
      (zero time value: sigma would be 0 or is undefined);
    - the price is at or above the upper bound exp(-rT)*F for calls / exp(-rT)*K for puts
      (sigma would be infinite), or so close to it that no finite sigma reproduces it;
    - the iteration did not converge within `max_iter` steps.
    """
    p, f, k, t, c, rr = np.broadcast_arrays(
        np.asarray(price, dtype=np.float64),
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(t_years, dtype=np.float64),
        _as_bool(is_call),
        np.asarray(r, dtype=np.float64),
    )
    shape = p.shape
    p, f, k, t, c, rr = (a.ravel() for a in (p, f, k, t, c, rr))
    out = np.full(p.shape, np.nan)

    with np.errstate(invalid="ignore", over="ignore"):
        df = np.exp(-rr * t)
        intrinsic = df * np.where(c, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0))
        # Undiscounted time value: the target for the out-of-the-money option's value.
        target = (p - intrinsic) / df
        upper = np.minimum(f, k)
        valid = (
            np.isfinite(p)
            & np.isfinite(f)
            & np.isfinite(k)
            & np.isfinite(t)
            & np.isfinite(rr)
            & (f > 0.0)
            & (k > 0.0)
            & (t > 0.0)
            & (p - intrinsic > 8.0 * _EPS * np.abs(p))
            & (target < upper)
        )
    idx = np.flatnonzero(valid)
    if idx.size:
        sqrt_t = np.sqrt(t[idx])
        v_tol = np.maximum(tol, 0.0) * sqrt_t
        v = _solve_total_vol(f[idx], k[idx], target[idx], v_tol, max_iter)
        out[idx] = v / sqrt_t
    return _out(out.reshape(shape))


def _to_utc_ns(x: DatetimeLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], bool]:
    # Naive values are read as UTC, like the rest of the harness.
    if isinstance(x, pd.Series | pd.Index | list | tuple):
        x = pd.DatetimeIndex(x)
    if isinstance(x, pd.DatetimeIndex):
        if x.tz is not None:
            x = x.tz_convert("UTC").tz_localize(None)
        arr = x.as_unit("ns").to_numpy()
        return arr.view(np.int64), np.isnat(arr), False
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x[()]  # a zero-dimensional array is a scalar: pd.Timestamp refuses the array itself
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "M":
            flat = pd.DatetimeIndex(pd.to_datetime(x.ravel(), utc=True)).tz_localize(None)
            arr = flat.as_unit("ns").to_numpy().reshape(x.shape)
        else:
            arr = x.astype("datetime64[ns]")
        return arr.view(np.int64), np.isnat(arr), False
    ts = pd.Timestamp(x)
    if ts is pd.NaT:
        return np.array(0, dtype=np.int64), np.array(True), True
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    arr = np.asarray(ts.as_unit("ns").to_datetime64())
    return arr.view(np.int64), np.isnat(arr), True


def year_fraction(as_of: DatetimeLike, expiry: DatetimeLike) -> float | FloatArray:
    """Time from `as_of` to `expiry` in years of 365 days (float, or ndarray for arrays)."""
    a_ns, a_nat, a_scalar = _to_utc_ns(as_of)
    e_ns, e_nat, e_scalar = _to_utc_ns(expiry)
    # Subtract integer nanoseconds before converting so long horizons keep full precision.
    years = (e_ns - a_ns).astype(np.float64) / 1e9 / SECONDS_PER_YEAR
    years = np.where(a_nat | e_nat, np.nan, years)
    if a_scalar and e_scalar:
        return float(years)
    return years


def coin_price(usd_price: npt.ArrayLike, forward: npt.ArrayLike) -> FloatResult:
    """Convert a USD price per 1 underlying into coin (inverse-option quote): usd / F."""
    return _out(np.asarray(usd_price, dtype=np.float64) / np.asarray(forward, dtype=np.float64))


def usd_price(coin_price: npt.ArrayLike, forward: npt.ArrayLike) -> FloatResult:
    """Convert a coin price (inverse-option quote) into USD per 1 underlying: coin * F."""
    return _out(np.asarray(coin_price, dtype=np.float64) * np.asarray(forward, dtype=np.float64))
