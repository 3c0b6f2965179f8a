"""The embedded synthetic Deribit-style market: deterministic for a seed, no network.

This is a *synthetic* market, not history. Spot follows a stochastic-volatility
process with jumps on a 1-minute grid, bridged through approximate year-start price
levels so each era's prices look plausible. Options are listed on Deribit's schedule
(dailies, Friday weeklies, last-Friday monthlies and quarterlies, all expiring at
08:00 UTC), with strike grids whose increments widen with tenor and distance from spot,
and are quoted off an implied-volatility surface (ATM level following the current
volatility state plus a variance risk premium, term structure and smile) priced with
Black-76. See docs/synthetic_market.md for the model and every parameter.
"""

from __future__ import annotations

import functools
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from harness.coins import coin, coin_of_instrument_underlying
from harness.data.chain_scan import VALUE_COLUMNS, ChainColumns, empty_columns
from harness.data.chain_select import ChainSelection
from harness.data.source import (
    empty_chain_frame,
    empty_ohlc,
    frame_to_snapshots,
    inclusive_range,
    normalize_chain_frame,
    range_positions,
)
from harness.data.worlds import ANCHOR_PULL, Anchor, CoinParams, SurfaceParams, get_world
from harness.instruments import format_expiry_code, format_strike, parse_instrument_name
from harness.pricing import black76_delta, black76_greeks, black76_price
from harness.timestamps import TimestampLike, as_ns, to_utc
from harness.types import OptionSnapshot, Timeframe, timeframe_delta

EPOCH = pd.Timestamp("2019-01-01", tz="UTC")  # the documented span starts here
LAST_YEAR = 2030  # ... and ends with this year: replays may use EPOCH .. end of LAST_YEAR
# The simulated path runs one year further on each side, so lookbacks before a 2019 start
# and listings (and settlements) past a 2030 end exist.
PATH_START = pd.Timestamp("2018-01-01", tz="UTC")
PATH_LAST_YEAR = LAST_YEAR + 1
MINUTE = pd.Timedelta(minutes=1)
_MINUTES_PER_YEAR = 365.0 * 24 * 60
_NS_PER_MINUTE = 60 * 10**9
EXPIRY_HOUR = 8

# Listing schedule: how many upcoming expiries of each series are listed at any time.
LISTED_DAILIES = 4
LISTED_WEEKLIES = 3
LISTED_MONTHLIES = 3
LISTED_QUARTERLIES = 4


def _year_start(year: int) -> pd.Timestamp:
    return pd.Timestamp(year=year, month=1, day=1, tz="UTC")


def _minute_of(ts: pd.Timestamp) -> int:
    """Minutes since PATH_START."""
    return int((ts - PATH_START) // MINUTE)


def _nice_increment(x: float) -> float:
    """Nearest (in log terms) of 1, 2, 2.5, 5 times a power of ten."""
    exp = np.floor(np.log10(x))
    ladder = np.array([1.0, 2.0, 2.5, 5.0, 10.0]) * 10.0**exp
    return float(ladder[np.argmin(np.abs(np.log(ladder / x)))])


_LADDER = np.array([1.0, 2.0, 2.5, 5.0, 10.0])


def _nice_increments(x: np.ndarray) -> np.ndarray:
    """`_nice_increment` of every element (same arithmetic, one pass)."""
    exp = np.floor(np.log10(x))
    # powers of ten through the scalar operator the one-at-a-time version used
    uniq, inv = np.unique(exp, return_inverse=True)
    pow10 = np.array([10.0**e for e in uniq])[inv]
    ladder = _LADDER[None, :] * pow10[:, None]
    pick = np.argmin(np.abs(np.log(ladder / x[:, None])), axis=1)
    return ladder[np.arange(len(x)), pick]


def _expiry_calendar() -> tuple[np.ndarray, np.ndarray]:
    """Every daily 08:00 expiry of the path and when it was first listed, as ns arrays.

    An expiry is listed LISTED_DAILIES days ahead; a Friday LISTED_WEEKLIES weeks ahead; a
    last Friday of a month from the last Friday LISTED_MONTHLIES months earlier, and of a
    quarter-end month LISTED_QUARTERLIES quarters earlier: the earliest of its series.
    """
    day0 = np.datetime64(PATH_START.date(), "D")
    day1 = np.datetime64(_year_start(PATH_LAST_YEAR + 1).date(), "D")
    days = np.arange(day0, day1 + 1)
    months = np.arange(
        np.datetime64(f"{PATH_START.year - 2}-01", "M"),
        np.datetime64(f"{PATH_LAST_YEAR + 2}-01", "M"),
    )
    last_day = (months + 1).astype("datetime64[D]") - 1
    last_friday = last_day - (_weekday(last_day) - 4) % 7
    month = days.astype("datetime64[M]")
    m_idx = (month - months[0]).astype(np.int64)
    friday = _weekday(days) == 4
    is_last = friday & (days == last_friday[m_idx])
    quarter_end = (month.astype(np.int64) % 12 + 1) % 3 == 0
    created = days - LISTED_DAILIES
    created = np.where(friday, np.minimum(created, days - 7 * LISTED_WEEKLIES), created)
    created = np.where(is_last, np.minimum(created, last_friday[m_idx - LISTED_MONTHLIES]), created)
    q = is_last & quarter_end
    created = np.where(q, np.minimum(created, last_friday[m_idx - 3 * LISTED_QUARTERLIES]), created)
    created = np.maximum(created, day0)
    hour = np.timedelta64(EXPIRY_HOUR, "h")
    return (
        (days + hour).astype("datetime64[ns]").astype(np.int64),
        (created + hour).astype("datetime64[ns]").astype(np.int64),
    )


def _weekday(days: np.ndarray) -> np.ndarray:
    """Monday = 0 of datetime64[D] values (1970-01-01 was a Thursday)."""
    return (days.astype(np.int64) + 3) % 7


def _ranges(first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ranges first[i] .. first[i] + counts[i] - 1."""
    total = int(counts.sum())
    return np.arange(total) + np.repeat(first - (np.cumsum(counts) - counts), counts)


def _blocks(counts: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Consecutive index ranges [a, b) whose counts add up to about `size` each."""
    ends = np.searchsorted(np.cumsum(counts), np.arange(size, int(counts.sum()) + size, size))
    bounds = np.unique(np.r_[0, np.minimum(ends + 1, len(counts)), len(counts)])
    return list(itertools.pairwise(bounds.tolist()))


@dataclass(frozen=True)
class _Expiry:
    expiry: pd.Timestamp
    created: pd.Timestamp
    strikes: np.ndarray  # sorted strikes ever listed
    strike_listed: np.ndarray  # datetime64[ns] when each strike was first listed


_MAX_WINDOWS = 4  # selection windows kept per market (a year of 4h decisions: ~1-2 MB each)


@dataclass
class _SelectionWindow:
    """A selective load's band-independent part (see `SyntheticMarket._selection_window`):
    calls in the DTE window as (instrument, time) index pairs with their deltas, and the ATM
    rows as keys time * n_instruments + instrument."""

    t: np.ndarray
    exps: list[pd.Timestamp]
    strike: np.ndarray
    exp_id: np.ndarray
    exp_ns: np.ndarray
    stop: np.ndarray
    w_inst: np.ndarray
    w_t: np.ndarray
    delta: np.ndarray
    atm_keys: np.ndarray
    # instrument i's Deribit name, formatted the first time a load keeps one of its rows
    names: np.ndarray | None = None
    heads: list[str] | None = None  # per expiry: the names' "BTC-27DEC24-" part

    def names_of(self, u: str, inst: np.ndarray) -> np.ndarray:
        """Names of instruments `inst` (object array), each formatted once per window."""
        if self.names is None:
            self.names = np.full(len(self.strike), None, dtype=object)
        got = self.names[inst]
        lack = np.flatnonzero(np.equal(got, None))
        if len(lack):
            if self.heads is None:
                prefix = coin(u).instrument_prefix
                self.heads = [f"{prefix}-{format_expiry_code(e)}-" for e in self.exps]
            heads = self.heads
            which = inst[lack]
            got[lack] = [
                f"{heads[e]}{format_strike(k)}-C"
                for e, k in zip(self.exp_id[which].tolist(), self.strike[which], strict=True)
            ]
            self.names[which] = got[lack]
        return got


@dataclass
class SyntheticMarket:
    """Deterministic synthetic Deribit-style BTC/ETH market (2019-2030), no network.

    `world` picks the model (`realistic`, `placebo`, `rich_premium`; see
    harness/data/worlds.py); `anchor` ties price levels loosely to history (`historical`) or
    not at all (`none`); None takes the world's default. Implements `MarketDataSource`, the
    `BulkChainSource` fast path, `SelectiveChainSource` (the simulator's narrow path) and
    `SettlementSource`.
    """

    seed: int = 7
    world: str = "realistic"
    anchor: Anchor | None = None
    coins: dict[str, CoinParams] | None = None  # overrides the world's coins
    surface: SurfaceParams | None = None  # overrides the world's surface

    def __post_init__(self) -> None:
        w = get_world(self.world)
        if self.anchor is None:
            self.anchor = w.anchor
        if self.anchor not in w.anchors_allowed:
            raise ValueError(
                f"synthetic world {self.world!r} allows anchor {', '.join(w.anchors_allowed)}; "
                f"got {self.anchor!r} (its price must stay a martingale)"
            )
        self.coins = dict(self.coins if self.coins is not None else w.coins)
        self.surface = self.surface if self.surface is not None else w.surface
        self._year_cache: dict[tuple[str, int], np.ndarray] = {}
        self._expiry_cache: dict[tuple[str, pd.Timestamp], _Expiry] = {}
        self._vol_cache: dict[str, np.ndarray] = {}
        self._level_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._names_cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        # instrument name -> its parsed facts (a sweep's mark requests repeat the same names)
        self._resolved: dict[str, tuple[str, float, pd.Timestamp, bool, pd.Timestamp]] = {}
        self._windows: OrderedDict[tuple, _SelectionWindow] = OrderedDict()

    # ---------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """A short string that identifies this market's data (for run manifests)."""
        if self.world == "realistic" and self.anchor == "historical":
            return f"synthetic(seed={self.seed})"
        return f"synthetic(seed={self.seed}, world={self.world}, anchor={self.anchor})"

    def _coin(self, underlying: str) -> CoinParams:
        assert self.coins is not None
        try:
            return self.coins[underlying.upper()]
        except KeyError:
            raise ValueError(
                f"the synthetic market has no underlying {underlying!r}; "
                f"available: {', '.join(sorted(self.coins))}"
            ) from None

    # ---------------------------------------------------------------- spot path
    def _log_vol_hourly(self, underlying: str) -> np.ndarray:
        """Hourly log realized-vol state over the whole simulated path (an AR(1))."""
        cached = self._vol_cache.get(underlying)
        if cached is not None:
            return cached
        p = self._coin(underlying)
        n = int((_year_start(PATH_LAST_YEAR + 1) - PATH_START) / pd.Timedelta(hours=1)) + 1
        rng = np.random.default_rng([self.seed, p.code, 0])
        dt = 1.0 / (365.0 * 24.0)
        a = np.exp(-p.vol_mean_reversion * dt)
        b = p.vol_of_vol * np.sqrt((1 - a * a) / (2 * p.vol_mean_reversion))
        mu = np.log(p.mean_vol) - 0.5 * p.vol_of_vol**2 / (2 * p.vol_mean_reversion)
        shocks = b * rng.standard_normal(n)
        dev = lfilter([1.0], [1.0, -a], shocks)
        self._vol_cache[underlying] = mu + dev
        return self._vol_cache[underlying]

    def _year_levels(self, underlying: str) -> tuple[np.ndarray, np.ndarray]:
        """Log price at each Jan 1 (PATH_START's year .. PATH_LAST_YEAR + 1) and each year's drift.

        Year y's log return is its drift m_y plus Z_y, Z_y ~ N(-V_y / 2, V_y) with V_y the
        year's model variance (diffusion from the hourly vol state plus jumps), drawn from its
        own stream so no year needs another's minute path. With `anchor: historical`
        m_y = (h_{y+1} - h_y) - ANCHOR_PULL * (x_y - h_y), h the log documented levels: the
        path is pulled toward the era's level but never pinned to it. With `none`, m_y = 0.
        """
        cached = self._level_cache.get(underlying)
        if cached is not None:
            return cached
        p = self._coin(underlying)
        years = list(range(PATH_START.year, PATH_LAST_YEAR + 2))
        known = sorted(p.year_start_prices)
        h = np.log([p.year_start_prices[min(max(y, known[0]), known[-1])] for y in years])
        logvol = self._log_vol_hourly(underlying)
        hour0 = [int((_year_start(y) - PATH_START) / pd.Timedelta(hours=1)) for y in years]
        var = np.array(
            [
                np.sum(np.exp(2.0 * logvol[a:b])) / 8760.0
                + p.jumps_per_year * (p.jump_mean**2 + p.jump_std**2)
                for a, b in itertools.pairwise(hour0)
            ]
        )
        rng = np.random.default_rng([self.seed, p.code, 1])
        z = -0.5 * var + np.sqrt(var) * rng.standard_normal(len(var))
        x = np.empty(len(years))
        drift = np.zeros(len(var))
        x[0] = h[0]
        for i in range(len(var)):
            if self.anchor == "historical":
                drift[i] = (h[i + 1] - h[i]) - ANCHOR_PULL * (x[i] - h[i])
            x[i + 1] = x[i] + drift[i] + z[i]
        self._level_cache[underlying] = (x, drift)
        return x, drift

    def year_start_price(self, underlying: str, year: int) -> float:
        """Spot USD at Jan 1 00:00 UTC of `year` (cheap: no minute path is built)."""
        x, _ = self._year_levels(underlying.upper())
        i = year - PATH_START.year
        if not 0 <= i < len(x):
            raise ValueError(f"the synthetic path has no Jan 1 of {year}")
        return float(np.exp(x[i]))

    def _year_path(self, underlying: str, year: int) -> np.ndarray:
        """Log prices at every minute instant of `year`, both Jan-1 instants included."""
        key = (underlying, year)
        cached = self._year_cache.get(key)
        if cached is not None:
            return cached
        p = self._coin(underlying)
        y0, y1 = _year_start(year), _year_start(year + 1)
        m0, m1 = _minute_of(y0), _minute_of(y1)
        n = m1 - m0
        rng = np.random.default_rng([self.seed, p.code, year])
        hour_of_minute = np.arange(m0, m1, dtype=np.int64) // 60
        vol = np.exp(self._log_vol_hourly(underlying)[hour_of_minute])
        dt = 1.0 / _MINUTES_PER_YEAR
        steps = vol * np.sqrt(dt) * rng.standard_normal(n) - 0.5 * vol * vol * dt
        jumps = rng.random(n) < p.jumps_per_year * dt
        steps[jumps] += rng.normal(p.jump_mean, p.jump_std, int(jumps.sum()))
        walk = np.concatenate([[0.0], np.cumsum(steps)])
        frac = np.linspace(0.0, 1.0, n + 1)
        x, _ = self._year_levels(underlying)
        i = year - PATH_START.year
        # The minute walk shapes the year; its end is replaced by the year's own random
        # return (so the next Jan-1 level is unknown in advance) plus the drift.
        path = x[i] + walk + frac * (x[i + 1] - x[i] - walk[-1])
        if len(self._year_cache) >= 8:
            self._year_cache.pop(next(iter(self._year_cache)))
        self._year_cache[key] = path
        return path

    def _check_span(self, start: pd.Timestamp, end: pd.Timestamp) -> None:
        last = _year_start(PATH_LAST_YEAR + 1)
        if start < PATH_START or end > last:
            raise ValueError(
                f"the synthetic market covers {EPOCH.date()} to {_year_start(LAST_YEAR + 1).date()} "
                f"for replays (its path runs {PATH_START.date()} to {last.date()}); "
                f"asked for {start.isoformat()} .. {end.isoformat()}"
            )

    def minute_prices(self, underlying: str, first_minute: int, last_minute: int) -> np.ndarray:
        """Spot USD at minute instants first..last (minutes since PATH_START), inclusive."""
        out = np.empty(last_minute - first_minute + 1)
        pos = first_minute
        while pos <= last_minute:
            year = (PATH_START + pos * MINUTE).year
            y_m0 = _minute_of(_year_start(year))
            y_m1 = _minute_of(_year_start(year + 1))
            if year > PATH_LAST_YEAR:
                # the single instant at the very end of the simulated path
                path = self._year_path(underlying, PATH_LAST_YEAR)
                out[pos - first_minute :] = np.exp(path[-1])
                break
            stop = min(last_minute, y_m1 - 1)
            path = self._year_path(underlying, year)
            out[pos - first_minute : stop - first_minute + 1] = np.exp(
                path[pos - y_m0 : stop - y_m0 + 1]
            )
            pos = stop + 1
        return out

    def spot_at(self, underlying: str, times: pd.DatetimeIndex | Sequence) -> np.ndarray:
        """Spot USD at each instant (the last 1-minute price at or before it)."""
        return self._spot_at_ns(underlying, as_ns(pd.DatetimeIndex(times)))

    def _spot_at_ns(self, underlying: str, t_ns: np.ndarray) -> np.ndarray:
        """`spot_at` of instants given as int64 ns since the epoch (no index is built)."""
        if len(t_ns) == 0:
            return np.empty(0)
        self._check_span(
            pd.Timestamp(int(t_ns.min()), tz="UTC"), pd.Timestamp(int(t_ns.max()), tz="UTC")
        )
        minutes = ((t_ns - PATH_START.value) // _NS_PER_MINUTE).astype(np.int64)
        return self._prices_at_minutes(underlying, minutes)

    def _prices_at_minutes(self, underlying: str, minutes: np.ndarray) -> np.ndarray:
        """`minute_prices` at the given minutes only (each price is exp of its path value, so
        the same numbers; a year's decisions need ~2,000 of its ~525,000 minutes)."""
        log_price = np.empty(len(minutes))
        lo, hi = int(minutes.min()), int(minutes.max())
        year = (PATH_START + lo * MINUTE).year
        while year <= (PATH_START + hi * MINUTE).year:
            y_m0, y_m1 = _minute_of(_year_start(year)), _minute_of(_year_start(year + 1))
            if year > PATH_LAST_YEAR:
                # the single instant at the very end of the simulated path
                last = self._year_path(underlying, PATH_LAST_YEAR)[-1]
                log_price[minutes >= y_m0] = last
                break
            here = (minutes >= y_m0) & (minutes < y_m1)
            if here.any():
                log_price[here] = self._year_path(underlying, year)[minutes[here] - y_m0]
            year += 1
        return np.exp(log_price)

    def vol_state_at(self, underlying: str, times: pd.DatetimeIndex | Sequence) -> np.ndarray:
        """The model's current realized-vol state (annualized fraction) at each instant."""
        return self._vol_state_at_ns(underlying, as_ns(pd.DatetimeIndex(times)))

    def _vol_state_at_ns(self, underlying: str, t_ns: np.ndarray) -> np.ndarray:
        """`vol_state_at` of instants given as int64 ns since the epoch."""
        hours = ((t_ns - PATH_START.value) // (3600 * 10**9)).astype(np.int64)
        return np.exp(self._log_vol_hourly(underlying.upper())[hours])

    def get_spot_ohlc(
        self, underlying: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Spot bars in USD labeled by close time; bar t covers (t - timeframe, t]."""
        s, e = inclusive_range(start, end)
        step = timeframe_delta(timeframe)
        first = s.ceil(step)
        last = e.floor(step)
        if last < first:
            return empty_ohlc()
        self._check_span(first - step, last)
        k = int(step / MINUTE)
        n_bars = int((last - first) / step) + 1
        m_first = _minute_of(first - step)
        prices = self.minute_prices(underlying.upper(), m_first, m_first + n_bars * k)
        opens = prices[0:-1:k]
        closes = prices[k::k]
        inner = prices[1:].reshape(n_bars, k)
        highs = np.maximum(inner.max(axis=1), opens)
        lows = np.minimum(inner.min(axis=1), opens)
        rets = np.abs(np.diff(np.log(prices))).reshape(n_bars, k)
        base = self._coin(underlying).base_volume
        volume = (base * (1.0 + 400.0 * rets)).sum(axis=1)
        idx = pd.date_range(first, last, freq=step, name="timestamp")
        return pd.DataFrame(
            {"open": opens, "high": highs, "low": lows, "close": closes, "volume": volume},
            index=idx,
        )

    def settlement_price(self, underlying: str, expiry: pd.Timestamp) -> float | None:
        """Deribit-style delivery price: average of the 1-minute index over the 30 minutes to expiry."""
        exp = to_utc(expiry)
        m = _minute_of(exp)
        return float(self.minute_prices(underlying.upper(), m - 29, m).mean())

    # ---------------------------------------------------------------- listings
    @functools.cached_property
    def _expiry_calendar(self) -> tuple[np.ndarray, np.ndarray]:
        """Every expiry of the covered span and when it was listed, as ns arrays (vectorized)."""
        return _expiry_calendar()

    def _expiry_dates(self, lo: pd.Timestamp, hi: pd.Timestamp) -> list[pd.Timestamp]:
        """All expiries E (08:00 UTC) with lo < E and created(E) <= hi."""
        exp, created = self._expiry_calendar
        keep = (exp > lo.value) & (created <= hi.value)
        return [pd.Timestamp(int(e), tz="UTC") for e in exp[keep]]

    def _created(self, expiry: pd.Timestamp) -> pd.Timestamp:
        """When `expiry` entered the listing (the earliest over the series it belongs to)."""
        exp, created = self._expiry_calendar
        i = int(np.searchsorted(exp, expiry.value))
        if i >= len(exp) or exp[i] != expiry.value:
            raise ValueError(f"{expiry.isoformat()} is not an expiry of the synthetic market")
        return pd.Timestamp(int(created[i]), tz="UTC")

    def _expiry_listing(self, underlying: str, expiry: pd.Timestamp) -> _Expiry:
        """Strikes of one expiry and when each was first listed (grids follow spot daily)."""
        return self._listings(underlying, [expiry])[0]

    def _listings(self, underlying: str, expiries: Sequence[pd.Timestamp]) -> list[_Expiry]:
        """Listings of several expiries, the uncached ones built in one vectorized pass.

        Each day from an expiry's creation the grid around the current spot is listed; strikes
        are never delisted. Increments are nice numbers that widen with tenor and with
        distance from spot (far, mid and fine tiers).
        """
        todo = [e for e in dict.fromkeys(expiries) if (underlying, e) not in self._expiry_cache]
        if todo:
            self._build_listings(underlying, todo)
        return [self._expiry_cache[(underlying, e)] for e in expiries]

    def _build_listings(self, underlying: str, expiries: list[pd.Timestamp]) -> None:
        day = 86400 * 10**9
        exp_ns = np.array([e.value for e in expiries], dtype=np.int64)
        cal_exp, cal_created = self._expiry_calendar
        created_ns = cal_created[np.searchsorted(cal_exp, exp_ns)]
        # one checkpoint a day from creation to the last day before expiry (all at 08:00)
        n_cp = (exp_ns - created_ns) // day
        e_of = np.repeat(np.arange(len(expiries)), n_cp)
        k_of = np.arange(len(e_of)) - np.repeat(np.cumsum(n_cp) - n_cp, n_cp)
        cp = created_ns[e_of] + k_of * day
        days, inverse = np.unique(cp, return_inverse=True)
        spots = self.spot_at(underlying, pd.DatetimeIndex(days.astype("datetime64[ns]"), tz="UTC"))
        s = spots[inverse]
        left = pd.TimedeltaIndex(exp_ns[e_of] - cp).total_seconds().to_numpy()
        tau = left / (365.0 * 86400.0)
        tenor_days = (exp_ns - created_ns) / 1e9 / 86400.0
        frac = np.where(tenor_days <= 5, 0.008, np.where(tenor_days <= 25, 0.015, 0.03))[e_of]
        ref_vol = self._coin(underlying).mean_vol * 1.3
        w = ref_vol * np.sqrt(tau)
        fine = _nice_increments(s * frac)
        mid = _nice_increments(fine * 2.5)
        far = _nice_increments(fine * 10.0)
        days_left = tau * 365.0
        n = len(cp)
        ones = np.ones(n, dtype=bool)
        # (increment, lowest and highest log-moneyness, listed?) per tier, as per checkpoint
        tiers = [
            (
                far,
                -np.minimum(np.maximum(0.25, 2.5 * w), 1.2),
                np.minimum(np.maximum(0.35, 3.5 * w), 1.4),
                ones,
            ),
            (mid, -np.maximum(0.12, 1.8 * w), np.maximum(0.15, 2.2 * w), days_left <= 120),
            (fine, -np.maximum(0.04, 0.8 * w), np.maximum(0.05, w), days_left <= 35),
        ]
        # strike grids of every (checkpoint, tier) as integer multiples of the increment
        inc_parts, lo_parts, cnt_parts = [], [], []
        for inc, lo, hi, on in tiers:
            a = np.ceil(s * np.exp(lo) / inc)
            b = np.floor(s * np.exp(hi) / inc) + 1
            cnt = np.where(on, np.maximum(b - a, 0), 0).astype(np.int64)
            inc_parts.append(inc)
            lo_parts.append(a)
            cnt_parts.append(cnt)
        # order (checkpoint, tier) as the per-day listing did: checkpoints in time, tiers in turn
        inc_all = np.stack(inc_parts, axis=1).ravel()
        a_all = np.stack(lo_parts, axis=1).ravel()
        cnt_all = np.stack(cnt_parts, axis=1).ravel()
        row_all = np.repeat(np.arange(n), 3)
        j_of = np.arange(int(cnt_all.sum())) - np.repeat(np.cumsum(cnt_all) - cnt_all, cnt_all)
        ks = (np.repeat(a_all, cnt_all) + j_of) * np.repeat(inc_all, cnt_all)
        k_row = np.repeat(row_all, cnt_all)
        pos = ks > 0
        ks, k_row = np.round(ks[pos], 8), k_row[pos]
        k_exp = e_of[k_row]
        # first listing of each (expiry, strike): checkpoints are in time order per expiry
        order = np.lexsort((k_row, ks, k_exp))
        ks, k_row, k_exp = ks[order], k_row[order], k_exp[order]
        first = np.r_[True, (ks[1:] != ks[:-1]) | (k_exp[1:] != k_exp[:-1])]
        ks, k_row, k_exp = ks[first], k_row[first], k_exp[first]
        bounds = np.searchsorted(k_exp, np.arange(len(expiries) + 1))
        for i, e in enumerate(expiries):
            sl = slice(bounds[i], bounds[i + 1])
            self._expiry_cache[(underlying, e)] = _Expiry(
                expiry=e,
                created=pd.Timestamp(int(created_ns[i]), tz="UTC"),
                strikes=ks[sl],
                strike_listed=cp[k_row[sl]],
            )

    def _instrument_arrays(
        self, underlying: str, start: pd.Timestamp, end: pd.Timestamp, max_dte: float | None = None
    ) -> dict[str, np.ndarray]:
        """Columnar table of options listed at some instant in [start, end] (ns timestamps)."""
        self._check_span(start, end)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]] = []
        horizon = None if max_dte is None else end + pd.Timedelta(days=max_dte)
        exps = [e for e in self._expiry_dates(start, end) if horizon is None or e <= horizon]
        self._listings(underlying, exps)  # one vectorized pass for the uncached ones
        for exp in exps:
            names_c, names_p, ks, listed = self._expiry_names(underlying, exp)
            keep = listed <= end.value
            parts.append((names_c[keep], names_p[keep], ks[keep], exp.value, listed[keep]))
        if not parts:
            empty = np.empty(0)
            return {
                "name": empty.astype(object),
                "is_call": empty.astype(bool),
                "strike": empty,
                "expiry": empty.astype(np.int64),
                "listed": empty.astype(np.int64),
            }
        names = np.concatenate([np.concatenate([c, p]) for c, p, _, _, _ in parts])
        n_each = [len(k) for _, _, k, _, _ in parts]
        is_call = np.concatenate([np.r_[np.ones(n, bool), np.zeros(n, bool)] for n in n_each])
        strike = np.concatenate([np.r_[k, k] for _, _, k, _, _ in parts])
        expiry = np.concatenate(
            [np.full(2 * n, e, np.int64) for n, (_, _, _, e, _) in zip(n_each, parts, strict=True)]
        )
        listed = np.concatenate([np.r_[lt, lt] for _, _, _, _, lt in parts])
        return {
            "name": names,
            "is_call": is_call,
            "strike": strike,
            "expiry": expiry,
            "listed": listed,
        }

    def _expiry_names(
        self, underlying: str, expiry: pd.Timestamp
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        key = (underlying, expiry, "names")
        cached = self._names_cache.get(key)
        if cached is None:
            lst = self._expiry_listing(underlying, expiry)
            # Inverse coins list `BTC-...`, linear ones `SOL_USDC-...` (harness.coins).
            prefix = f"{coin(underlying).instrument_prefix}-{format_expiry_code(expiry)}-"
            strikes = [prefix + format_strike(k) for k in lst.strikes]
            calls = np.array([k + "-C" for k in strikes], dtype=object)
            puts = np.array([k + "-P" for k in strikes], dtype=object)
            cached = (calls, puts, lst.strikes, lst.strike_listed)
            self._names_cache[key] = cached
        return cached

    def instruments(
        self, underlying: str, start: TimestampLike, end: TimestampLike
    ) -> pd.DataFrame:
        """Every option listed at some instant in [start, end]: name, kind, strike, expiry, listed."""
        s, e = inclusive_range(start, end)
        a = self._instrument_arrays(underlying.upper(), s, e)
        return pd.DataFrame(
            {
                "instrument_name": a["name"],
                "kind": np.where(a["is_call"], "call", "put"),
                "strike": a["strike"],
                "expiry": pd.to_datetime(a["expiry"], utc=True),
                "listed": pd.to_datetime(a["listed"], utc=True),
            }
        )

    # ---------------------------------------------------------------- quoting
    def _surface_iv(
        self, underlying: str, vol_state: np.ndarray, tau: np.ndarray, log_moneyness: np.ndarray
    ) -> np.ndarray:
        """Implied vol (fraction) from vol state, tenor (years) and ln(K/F)."""
        sp = self.surface
        assert sp is not None
        p = self._coin(underlying)
        inst = vol_state * (1 + sp.vrp_ratio) + sp.vrp_add
        long_run = p.mean_vol * (1 + sp.vrp_ratio) + sp.vrp_add
        decay = np.exp(-tau * 365.0 / sp.term_decay_days)
        atm = long_run + (inst - long_run) * decay
        if sp.variance_premium:
            atm = np.sqrt(atm * atm + sp.variance_premium)
        x = np.clip(log_moneyness / (atm * np.sqrt(np.maximum(tau, 1.0 / 8760.0))), -4.0, 4.0)
        iv = atm * (1.0 + sp.skew * x + sp.curvature * x * x)
        return np.maximum(iv, sp.min_vol), x

    def _quote(
        self,
        underlying: str,
        as_of: np.ndarray,
        strike: np.ndarray,
        expiry: np.ndarray,
        is_call: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Vectorized quotes for rows of (as_of ns, strike, expiry ns, is_call)."""
        spot, tau, iv, x = self._surface_at(underlying, as_of, strike, expiry)
        g = black76_greeks(spot, strike, tau, iv, is_call)
        sp = self.surface
        assert sp is not None
        half = sp.half_spread_vol + sp.half_spread_vol_per_x * np.abs(x)
        live = tau > 0
        bid_iv = np.maximum(iv - half, sp.min_vol * 0.5)
        ask_iv = iv + half
        bid_usd = black76_price(spot, strike, tau, bid_iv, is_call)
        ask_usd = black76_price(spot, strike, tau, ask_iv, is_call)
        mark_coin = g.price / spot
        # Quotes sit on Deribit's tick in the quote currency (coin for inverse options, USDC for
        # linear ones): bids round down, asks round up; a bid under one tick means nobody bids.
        c = coin(underlying)
        per_quote = spot if c.quoted_in_coin else np.ones_like(spot)
        tick = c.tick_size
        bid_q = np.floor(bid_usd / per_quote / tick + 1e-9) * tick
        ask_q = np.maximum(np.ceil(ask_usd / per_quote / tick - 1e-9), 1.0) * tick
        bid_q = np.where((bid_q >= tick) & live, bid_q, np.nan)
        ask_q = np.where(live, ask_q, np.nan)
        bid_coin = bid_q * per_quote / spot
        ask_coin = ask_q * per_quote / spot
        oi_scale = 2000.0 if underlying == "BTC" else 20000.0
        oi = np.round(oi_scale * np.exp(-0.5 * x * x) * (0.3 + np.minimum(tau * 12, 1.0)), 1)
        return {
            "underlying_price": spot,
            "mark_price": g.price,
            "bid_price": bid_q * per_quote,
            "ask_price": ask_q * per_quote,
            "mark_price_coin": mark_coin,
            "bid_price_coin": bid_coin,
            "ask_price_coin": ask_coin,
            "mark_iv": iv,
            "bid_iv": np.where(np.isnan(bid_coin), np.nan, bid_iv),
            "ask_iv": np.where(np.isnan(ask_coin), np.nan, ask_iv),
            "delta": g.delta,
            "gamma": g.gamma,
            "vega": g.vega,
            "theta": g.theta,
            "open_interest": np.where(live, oi, 0.0),
        }

    def chain_frame(
        self,
        underlying: str,
        times: pd.DatetimeIndex | Sequence,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> pd.DataFrame:
        """Chains at each of `times` as one frame with CHAIN_COLUMNS (optionally calls only / near expiries)."""
        u = underlying.upper()
        idx = pd.DatetimeIndex(times)
        idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
        if len(idx) == 0:
            return empty_chain_frame()
        t_sorted = np.sort(as_ns(idx))
        inst = self._instrument_arrays(
            u, pd.Timestamp(t_sorted[0], tz="UTC"), pd.Timestamp(t_sorted[-1], tz="UTC"), max_dte
        )
        want_call, want_put = "call" in kinds, "put" in kinds
        sel = (inst["is_call"] & want_call) | (~inst["is_call"] & want_put)
        inst = {k: v[sel] for k, v in inst.items()}
        if len(inst["name"]) == 0:
            return empty_chain_frame()
        listed, exp = inst["listed"], inst["expiry"]
        lo_t = listed
        if max_dte is not None:
            lo_t = np.maximum(listed, exp - int(max_dte * 86400 * 1e9))
        # an instrument is in the chain at t when listed <= t < expiry
        first = np.searchsorted(t_sorted, lo_t, side="left")
        stop = np.searchsorted(t_sorted, exp, side="left")
        counts = np.maximum(stop - first, 0)
        rows_inst = np.repeat(np.arange(len(listed)), counts)
        if len(rows_inst) == 0:
            return empty_chain_frame()
        offsets = np.repeat(first - np.cumsum(counts) + counts, counts)
        rows_time = t_sorted[np.arange(len(rows_inst)) + offsets]
        strike = inst["strike"][rows_inst]
        is_call = inst["is_call"][rows_inst]
        rows_exp = exp[rows_inst]
        order = np.lexsort((strike, rows_exp, ~is_call, rows_time))
        rows_inst, rows_time, strike, is_call, rows_exp = (
            rows_inst[order],
            rows_time[order],
            strike[order],
            is_call[order],
            rows_exp[order],
        )
        q = self._quote(u, rows_time, strike, rows_exp, is_call)
        frame = pd.DataFrame(
            {
                "as_of": pd.to_datetime(rows_time, utc=True),
                "instrument_name": inst["name"][rows_inst],
                "underlying": u,
                "kind": np.where(is_call, "call", "put"),
                "strike": strike,
                "expiry": pd.to_datetime(rows_exp, utc=True),
                **q,
            }
        )
        return normalize_chain_frame(frame)

    def selected_chain_columns(
        self,
        underlying: str,
        times: pd.DatetimeIndex | Sequence,
        selection: ChainSelection,
        *,
        max_dte: float | None = None,
    ) -> ChainColumns:
        """Only the call rows `selection` keeps, quoted exactly as `chain_frame` quotes them.

        The listing is enumerated per (time, call) without pricing; deltas are computed only
        for rows in the selection's DTE window, and the full Black-76 quote only for kept rows.
        Work runs in blocks of calls, so memory follows the kept rows, not the whole chain.
        """
        u = underlying.upper()
        idx = pd.DatetimeIndex(times)
        idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
        if len(idx) == 0:
            return empty_columns(u)
        t = np.sort(as_ns(idx))
        w = self._selection_window(u, t, selection, max_dte)
        if w is None:
            return empty_columns(u)
        n_inst = len(w.strike)
        in_band = (w.delta >= selection.min_delta) & (w.delta <= selection.max_delta)
        kept_keys = [w.atm_keys]
        if selection.follow:
            band_first = np.full(n_inst, np.iinfo(np.int64).max)
            np.minimum.at(band_first, w.w_inst[in_band], w.w_t[in_band])
            held = np.nonzero(band_first < len(t))[0]
            f_cnt = np.maximum(w.stop[held] - band_first[held], 0)
            f_inst = np.repeat(held, f_cnt)
            f_t = _ranges(band_first[held], f_cnt)
            f_dte = (w.exp_ns[f_inst] - t[f_t]) / (86400.0 * 1e9)
            f_ok = f_dte <= max_dte if max_dte is not None else np.ones(len(f_t), bool)
            kept_keys.append((f_t * n_inst + f_inst)[f_ok])
        else:
            kept_keys.append(w.w_t[in_band] * n_inst + w.w_inst[in_band])
        keys = np.unique(np.concatenate(kept_keys))  # time, then expiry, then strike
        r_t, r_inst = keys // n_inst, keys % n_inst
        rows_time, rows_strike, rows_exp = t[r_t], w.strike[r_inst], w.exp_ns[r_inst]
        is_call = np.ones(len(keys), dtype=bool)
        q = self._quote(u, rows_time, rows_strike, rows_exp, is_call)
        inst, code = np.unique(r_inst, return_inverse=True)
        names = w.names_of(u, inst)
        values = {"strike": rows_strike, **q}
        return ChainColumns(
            underlying=u,
            as_of=rows_time,
            expiry=rows_exp,
            quote_time=rows_time,
            code=code.astype(np.int64),
            names=names,
            is_call=is_call,
            values={c: values[c] for c in VALUE_COLUMNS},
        )

    def _selection_window(
        self, u: str, t: np.ndarray, selection: ChainSelection, max_dte: float | None
    ) -> _SelectionWindow | None:
        """The part of a selective load that does not depend on the delta band: every call in
        the DTE window with its delta, and the ATM rows. Kept for the last few (times, DTE
        window, ATM target, limit): a sweep's trials that differ only in their delta band
        (or rule) share it, and each call then only filters, quotes its kept rows and names
        them, the same rows and values as computing it all again."""
        key = (
            u,
            len(t),
            int(t[0]),
            int(t[-1]),
            max_dte,
            selection.min_dte,
            selection.max_dte,
            selection.atm_dte,
        )
        kept = self._windows.get(key)
        if kept is not None and np.array_equal(kept.t, t):
            self._windows.move_to_end(key)
            return kept
        w = self._compute_window(u, t, selection, max_dte)
        if w is not None:
            self._windows[key] = w
            while len(self._windows) > _MAX_WINDOWS:
                self._windows.popitem(last=False)
        return w

    def _compute_window(
        self, u: str, t: np.ndarray, selection: ChainSelection, max_dte: float | None
    ) -> _SelectionWindow | None:
        t_idx = pd.DatetimeIndex(t.astype("datetime64[ns]"), tz="UTC")
        start, end = t_idx[0], t_idx[-1]
        self._check_span(start, end)
        horizon = None if max_dte is None else end + pd.Timedelta(days=max_dte)
        exps = [e for e in self._expiry_dates(start, end) if horizon is None or e <= horizon]
        if not exps:
            return None
        listings = self._listings(u, exps)
        strike = np.concatenate([lst.strikes for lst in listings])
        listed = np.concatenate([lst.strike_listed for lst in listings])
        n_each = np.array([len(lst.strikes) for lst in listings])
        exp_id = np.repeat(np.arange(len(exps)), n_each)
        e_ns = np.array([e.value for e in exps], dtype=np.int64)
        exp_ns = e_ns[exp_id]
        inst_on = listed <= end.value
        # an instrument is in the chain at t when listed <= t < expiry (and within max_dte)
        lo_t = (
            listed if max_dte is None else np.maximum(listed, exp_ns - int(max_dte * 86400 * 1e9))
        )
        first = np.searchsorted(t, lo_t, side="left")
        stop = np.searchsorted(t, exp_ns, side="left")
        counts = np.where(inst_on, np.maximum(stop - first, 0), 0)
        spot_t = self.spot_at(u, t_idx)
        vol_t = self.vol_state_at(u, t_idx)
        # the expiry nearest atm_dte at each time (ties kept), from (time, expiry) pairs
        best_gap = np.full(len(t), np.inf)
        e_first = np.full(len(exps), len(t))
        np.minimum.at(e_first, exp_id[counts > 0], first[counts > 0])
        e_cnt = np.maximum(np.searchsorted(t, e_ns, side="left") - e_first, 0)
        pair_e = np.repeat(np.arange(len(exps)), e_cnt)
        pair_t = _ranges(e_first, e_cnt)
        pair_dte = (e_ns[pair_e] - t[pair_t]) / (86400.0 * 1e9)
        pair_ok = pair_dte <= max_dte if max_dte is not None else np.ones(len(pair_t), bool)
        np.minimum.at(best_gap, pair_t[pair_ok], np.abs(pair_dte[pair_ok] - selection.atm_dte))

        w_insts: list[np.ndarray] = []
        w_ts: list[np.ndarray] = []
        deltas: list[np.ndarray] = []
        atm_keys: list[np.ndarray] = []
        atm_money: list[np.ndarray] = []
        n_inst = len(strike)
        for a, b in _blocks(counts, 1_000_000):
            cnt = counts[a:b]
            r_inst = np.repeat(np.arange(a, b), cnt)
            r_t = _ranges(first[a:b], cnt)
            dte = (exp_ns[r_inst] - t[r_t]) / (86400.0 * 1e9)
            ok = dte <= max_dte if max_dte is not None else np.ones(len(dte), bool)
            win = np.nonzero(ok & (dte >= selection.min_dte) & (dte <= selection.max_dte))[0]
            w_inst, w_t = r_inst[win], r_t[win]
            tau = np.maximum((exp_ns[w_inst] - t[w_t]) / (365.0 * 86400.0 * 1e9), 0.0)
            spot = spot_t[w_t]
            iv, _ = self._surface_iv(u, vol_t[w_t], tau, np.log(strike[w_inst] / spot))
            w_insts.append(w_inst)
            w_ts.append(w_t)
            deltas.append(black76_delta(spot, strike[w_inst], tau, iv, True))
            # calls of the nearest expiry: keep the nearest the money of this block per time
            gap = np.abs(dte - selection.atm_dte)
            near = np.nonzero(ok & (gap == best_gap[r_t]))[0]
            n_inst_near, n_t_near = r_inst[near], r_t[near]
            money = np.abs(strike[n_inst_near] / spot_t[n_t_near] - 1.0)
            local = np.full(len(t), np.inf)
            np.minimum.at(local, n_t_near, money)
            keep = money == local[n_t_near]
            atm_keys.append(n_t_near[keep] * n_inst + n_inst_near[keep])
            atm_money.append(money[keep])
        keys = np.concatenate(atm_keys)
        money = np.concatenate(atm_money)
        best_money = np.full(len(t), np.inf)
        np.minimum.at(best_money, keys // n_inst, money)
        return _SelectionWindow(
            t=t.copy(),
            exps=exps,
            strike=strike,
            exp_id=exp_id,
            exp_ns=exp_ns,
            stop=stop,
            w_inst=np.concatenate(w_insts),
            w_t=np.concatenate(w_ts),
            delta=np.concatenate(deltas),
            atm_keys=keys[money == best_money[keys // n_inst]],
        )

    def list_option_chain(self, underlying: str, as_of: TimestampLike) -> list[OptionSnapshot]:
        """Every listed option of `underlying` as quoted at the instant `as_of`."""
        t = to_utc(as_of)
        return frame_to_snapshots(self.chain_frame(underlying, pd.DatetimeIndex([t])))

    def _listed_time(self, underlying: str, strike: float, expiry: pd.Timestamp) -> pd.Timestamp:
        lst = self._expiry_listing(underlying, expiry)
        i = np.searchsorted(lst.strikes, round(strike, 8))
        if i >= len(lst.strikes) or abs(lst.strikes[i] - strike) > 1e-9:
            raise ValueError(f"strike {strike} is never listed for expiry {expiry.isoformat()}")
        return pd.Timestamp(int(lst.strike_listed[i]), tz="UTC")

    def _resolve(self, instrument_name: str) -> tuple[str, float, pd.Timestamp, bool, pd.Timestamp]:
        got = self._resolved.get(instrument_name)
        if got is not None:
            return got
        spec = parse_instrument_name(instrument_name)
        u, _ = coin_of_instrument_underlying(spec.underlying)  # SOL_USDC-... is SOL's
        self._coin(u)
        listed = self._listed_time(u, spec.strike, spec.expiry)
        got = self._resolved[instrument_name] = (
            u,
            spec.strike,
            spec.expiry,
            spec.kind == "call",
            listed,
        )
        return got

    def option_marks(
        self, instrument_names: Sequence[str], times: pd.DatetimeIndex | Sequence
    ) -> np.ndarray:
        """Marks (USD per coin) of instruments at times, shape (names, times); NaN when unlisted.

        At the expiry instant an option is worth its intrinsic value at spot.
        """
        t = as_ns(times)  # naive instants are UTC
        out = np.full((len(instrument_names), len(t)), np.nan)
        if len(t) == 0 or len(instrument_names) == 0:
            return out
        resolved = [self._resolve(n) for n in instrument_names]
        by_underlying: dict[str, list[int]] = {}
        for i, r in enumerate(resolved):
            by_underlying.setdefault(r[0], []).append(i)
        for u, rows in by_underlying.items():
            strike = np.array([resolved[i][1] for i in rows])
            expiry = np.array([resolved[i][2].value for i in rows])
            is_call = np.array([resolved[i][3] for i in rows])
            listed = np.array([resolved[i][4].value for i in rows])
            live = (t[None, :] >= listed[:, None]) & (t[None, :] <= expiry[:, None])
            r_i, c_i = np.nonzero(live)
            if len(r_i) == 0:
                continue
            marks = self._marks(u, t[c_i], strike[r_i], expiry[r_i], is_call[r_i])
            block = np.full((len(rows), len(t)), np.nan)
            block[r_i, c_i] = marks
            out[rows] = block
        return out

    def option_mark_ranges(
        self,
        instrument_names: Sequence[str],
        times: pd.DatetimeIndex | Sequence,
        first: np.ndarray,
        last: np.ndarray,
    ) -> np.ndarray:
        """Marks (USD per coin) of name i at times[first[i]:last[i] + 1], concatenated.

        The same values as `option_marks` per name, priced in one batch for every expiry.
        """
        t_all = as_ns(times)
        first = np.asarray(first, dtype=np.int64)
        last = np.asarray(last, dtype=np.int64)
        pos = range_positions(first, last)
        out = np.full(len(pos), np.nan)
        if len(pos) == 0:
            return out
        owner = np.repeat(np.arange(len(first)), last - first + 1)
        t = t_all[pos]
        resolved = [self._resolve(n) for n in instrument_names]
        coins = np.array([r[0] for r in resolved], dtype=object)
        strike = np.array([r[1] for r in resolved], dtype=float)
        expiry = np.array([r[2].value for r in resolved], dtype=np.int64)
        is_call = np.array([r[3] for r in resolved], dtype=bool)
        listed = np.array([r[4].value for r in resolved], dtype=np.int64)
        live = (t >= listed[owner]) & (t <= expiry[owner])
        for u in dict.fromkeys(coins.tolist()):
            k = np.flatnonzero(live & (coins[owner] == u))
            if len(k):
                o = owner[k]
                out[k] = self._marks(u, t[k], strike[o], expiry[o], is_call[o])
        return out

    def _surface_at(
        self, u: str, t: np.ndarray, strike: np.ndarray, expiry: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Spot, tenor (years), implied vol and standardized moneyness at ns instants `t`."""
        t = np.asarray(t, dtype=np.int64)
        spot = self._spot_at_ns(u, t)
        vol = self._vol_state_at_ns(u, t)
        tau = np.maximum((expiry - t) / (365.0 * 86400.0 * 1e9), 0.0)
        iv, x = self._surface_iv(u, vol, tau, np.log(strike / spot))
        return spot, tau, iv, x

    def _marks(
        self, u: str, t: np.ndarray, strike: np.ndarray, expiry: np.ndarray, is_call: np.ndarray
    ) -> np.ndarray:
        spot, tau, iv, _ = self._surface_at(u, t, strike, expiry)
        return black76_price(spot, strike, tau, iv, is_call)

    def get_option_ohlc(
        self, instrument_name: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Bars of one option's mark in USD per coin, labeled by close time, while listed.

        Close equals the chain mark at the bar's close instant; high/low span the
        1-minute marks inside the bar. The synthetic market has no trades: volume is 0.
        """
        u, strike, expiry, is_call, listed = self._resolve(instrument_name)
        s, e = inclusive_range(start, end)
        step = timeframe_delta(timeframe)
        # the first bar whose opening instant is already listed
        first = max(s.ceil(step), (listed + step).ceil(step))
        last = min(e.floor(step), expiry.floor(step))
        if last < first:
            return empty_ohlc()
        k = int(step / MINUTE)
        n_bars = int((last - first) / step) + 1
        m_first = _minute_of(first - step)
        minutes = np.arange(m_first, m_first + n_bars * k + 1, dtype=np.int64)
        t_ns = PATH_START.value + minutes * _NS_PER_MINUTE
        n = len(t_ns)
        marks = self._marks(
            u, t_ns, np.full(n, strike), np.full(n, expiry.value), np.full(n, is_call)
        )
        opens = marks[0:-1:k]
        closes = marks[k::k]
        inner = marks[1:].reshape(n_bars, k)
        idx = pd.date_range(first, last, freq=step, name="timestamp")
        return pd.DataFrame(
            {
                "open": opens,
                "high": np.maximum(inner.max(axis=1), opens),
                "low": np.minimum(inner.min(axis=1), opens),
                "close": closes,
                "volume": np.zeros(n_bars),
            },
            index=idx,
        )
