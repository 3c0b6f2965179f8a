"""Point-in-time option chains reconstructed from Deribit's public API (`DeribitDataSource`).

What the public API gives for the past, and therefore what we can rebuild (see docs/data.md):

- instruments with creation and expiration times (`public/get_instruments`, live and expired);
- traded-price candles per instrument (`public/get_tradingview_chart_data`), in coin for
  inverse options; bars without trades have zero volume;
- the perpetual's candles, our spot proxy (the index itself has no candle endpoint);
- official delivery prices per expiry date (`public/get_delivery_prices`).

It does NOT give historical order books, bids/asks, mark prices, mark IVs or greeks. So a
reconstructed snapshot is the option's last traded price in a bar: converted to USD at the
spot close of the same bar, with implied vol and greeks computed by Black-76 (harness.pricing)
against that spot. Bid/ask and their IVs are missing (NaN), never invented. Bars without a
trade, options without candles and prices with no implied vol are gated out and counted.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from harness.coins import COINS, coin, coin_of_instrument_underlying, is_listed_style
from harness.data.deribit_client import DeribitClient, InstrumentInfo
from harness.data.errors import DataError
from harness.data.point_in_time import ChainTable, ChainTableSource
from harness.data.source import (
    OHLC_COLUMNS,
    empty_ohlc,
    frame_to_snapshots,
    inclusive_range,
)
from harness.data.store_schema import concat_chain, normalize_store_chain
from harness.instruments import InstrumentSpec, parse_instrument_name
from harness.pricing import black76_greeks, implied_vol, year_fraction
from harness.timestamps import TimestampLike, to_utc, utc_index
from harness.types import OptionSnapshot, Timeframe, timeframe_delta

DELIVERY_HOUR_UTC = 8


def spot_instrument_for(underlying: str) -> str:
    """The instrument whose candles stand in for spot: the coin's perpetual.

    `BTC-PERPETUAL` for inverse coins, `SOL_USDC-PERPETUAL` for linear ones (harness.coins).
    """
    return coin(underlying).spot_instrument


def index_name_for(underlying: str) -> str:
    """Deribit's index of a coin (btc_usd, sol_usdc), used for delivery prices."""
    return coin(underlying).index_name


def list_option_instruments(
    client: DeribitClient, underlying: str, *, use_history: bool = True
) -> list[InstrumentInfo]:
    """Options of `underlying` in its registry style: live, recently expired and (history) expired.

    Linear options are listed under the currency USDC for every coin, so they are filtered by
    their name's underlying part (`SOL_USDC`).
    """
    c = coin(underlying)
    found: dict[str, InstrumentInfo] = {}
    batches = [
        client.get_instruments(c.currency, "option", expired=False),
        client.get_instruments(c.currency, "option", expired=True),
    ]
    if use_history:
        batches.append(client.get_instruments(c.currency, "option", expired=True, history=True))
    for batch in batches:
        for info in batch:
            if c.settlement == "linear" and not info.instrument_name.startswith(
                f"{c.instrument_prefix}-"
            ):
                continue
            found.setdefault(info.instrument_name, info)
    return sorted(found.values(), key=lambda i: (i.expiration, i.instrument_name))


def _spec(info: InstrumentInfo, counts: Counter[str]) -> InstrumentSpec | None:
    try:
        spec = parse_instrument_name(info.instrument_name)
    except ValueError:
        counts["unknown_instrument"] += 1
        return None
    symbol, _ = coin_of_instrument_underlying(spec.underlying)
    if symbol not in COINS:
        counts["not_in_coin_registry"] += 1
        return None
    if not is_listed_style(symbol, spec.underlying):
        counts["linear_skipped"] += 1  # BTC_USDC next to the inverse BTC options we trade
        return None
    return spec


def candles_to_chain(
    spec: InstrumentSpec,
    name: str,
    candles: pd.DataFrame,
    spot_close: pd.Series,
    counts: Counter[str],
    *,
    r: float = 0.0,
) -> pd.DataFrame:
    """Turn one option's close-labeled candles into store chain rows (USD, greeks).

    Inverse candles are in coin (converted at the spot close of the same bar); linear candles
    are already USDC per coin. A row per bar that traded (volume > 0) and has a spot close at
    the same bar; the price is the bar's last trade, `quote_time` is the bar close.
    """
    if candles.empty:
        counts["options_without_candles"] += 1
        return concat_chain([])
    traded = candles["volume"].to_numpy() > 0
    counts["bars_without_trades"] += int((~traded).sum())
    candles = candles[traded]
    f = spot_close.reindex(candles.index).to_numpy(dtype=np.float64)
    has_spot = np.isfinite(f) & (f > 0)
    counts["no_spot"] += int((~has_spot).sum())
    candles, f = candles[has_spot], f[has_spot]
    before_expiry = candles.index < spec.expiry
    candles, f = candles[before_expiry], f[before_expiry]
    if candles.empty:
        return concat_chain([])
    symbol, style = coin_of_instrument_underlying(spec.underlying)
    quote = candles["close"].to_numpy(dtype=np.float64)
    usd = quote if style == "linear" else quote * f
    in_coin = usd / f
    t = np.asarray(year_fraction(candles.index, spec.expiry), dtype=np.float64)
    iv = np.asarray(implied_vol(usd, f, spec.strike, t, spec.is_call, r), dtype=np.float64)
    ok = np.isfinite(iv)
    counts["no_implied_vol"] += int((~ok).sum())
    if not ok.any():
        return concat_chain([])
    idx, f, in_coin, usd, t, iv = candles.index[ok], f[ok], in_coin[ok], usd[ok], t[ok], iv[ok]
    g = black76_greeks(f, spec.strike, t, iv, spec.is_call, r)
    n = len(idx)
    frame = pd.DataFrame(
        {
            "as_of": idx,
            "instrument_name": [name] * n,
            "underlying": [symbol] * n,
            "kind": [spec.kind] * n,
            "strike": spec.strike,
            "expiry": spec.expiry,
            "underlying_price": f,
            "mark_price": usd,
            "bid_price": np.nan,
            "ask_price": np.nan,
            "mark_price_coin": in_coin,
            "bid_price_coin": np.nan,
            "ask_price_coin": np.nan,
            "mark_iv": iv,
            "bid_iv": np.nan,
            "ask_iv": np.nan,
            "delta": np.asarray(g.delta, dtype=np.float64),
            "gamma": np.asarray(g.gamma, dtype=np.float64),
            "vega": np.asarray(g.vega, dtype=np.float64),
            "theta": np.asarray(g.theta, dtype=np.float64),
            "open_interest": np.nan,  # not available historically
            "quote_time": idx,
        }
    )
    counts["chain_rows"] += n
    return normalize_store_chain(frame)


def source_timeframe(timeframe: Timeframe) -> Timeframe:
    """Candle resolution we read for `timeframe`: 1h for 4h and 1d bars, else the timeframe.

    A coarse bar's last trade can be hours before its close; reading 1h candles lets us convert
    each trade at the spot of its own hour and keep its hour as `quote_time`.
    """
    return "1h" if timeframe_delta(timeframe) > timeframe_delta("1h") else timeframe


def _to_bars(rows: pd.DataFrame, timeframe: Timeframe) -> pd.DataFrame:
    """Keep the last row per instrument in each `timeframe` bar, stamped at the bar close."""
    if rows.empty:
        return rows
    rows = rows.assign(as_of=rows["quote_time"].dt.ceil(timeframe_delta(timeframe)))
    rows = rows.sort_values(["as_of", "instrument_name", "quote_time"], kind="stable")
    return rows.drop_duplicates(["as_of", "instrument_name"], keep="last").reset_index(drop=True)


def build_chain(
    client: DeribitClient,
    instruments: Iterable[InstrumentInfo],
    spot_close: pd.Series,
    start: pd.Timestamp,
    end: pd.Timestamp,
    timeframe: Timeframe,
    counts: Counter[str],
    *,
    on_instrument: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Chain rows (bar closes in [start, end]) for every option listed at some point in range.

    `spot_close` holds spot closes at `source_timeframe(timeframe)` from one bar before start.
    """
    bar = timeframe_delta(timeframe)
    src_tf = source_timeframe(timeframe)
    sub = timeframe_delta(src_tf)
    first_sub = start.ceil(bar) - bar + sub  # the first source bar inside the first bar
    frames = []
    for info in instruments:
        if info.creation > end or info.expiration <= first_sub - sub:
            continue
        spec = _spec(info, counts)
        if spec is None:
            continue
        lo = max(first_sub, info.creation.ceil(sub))
        hi = min(end, info.expiration)
        counts["options_listed"] += 1
        candles = client.chart_candles(info.instrument_name, lo, hi, src_tf)
        # A bar that opened before the listing cannot hold a trade of this option.
        candles = candles[candles.index - sub >= info.creation.floor(sub)]
        rows = candles_to_chain(spec, info.instrument_name, candles, spot_close, counts)
        if src_tf != timeframe:
            rows = _to_bars(rows, timeframe)
        frames.append(rows[(rows["as_of"] >= start) & (rows["as_of"] <= end)])
        if on_instrument is not None:
            on_instrument(info.instrument_name)
    return concat_chain(frames)


class DeribitDataSource(ChainTableSource):
    """MarketDataSource (also Bulk and Settlement source) on the live Deribit public API.

    Config: ``market: {source: deribit, timeframe: 1h, cache_dir: .cache/deribit}``. Chains are
    fetched one UTC day at a time (every option listed that day, one chart request each) and
    kept in memory; with `cache_dir` responses about the past are cached on disk. For long
    backtests prefer `harness data fetch deribit` and the parquet source.
    """

    def __init__(
        self,
        client: DeribitClient | None = None,
        *,
        base_url: str | None = None,
        history_url: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        timeframe: Timeframe = "1h",
        max_staleness: str | pd.Timedelta | None = None,
        use_history: bool = True,
        r: float = 0.0,
    ):
        self.client = client or DeribitClient(
            base_url,
            history_url=history_url or base_url,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
        timeframe_delta(timeframe)
        self.timeframe = timeframe
        self.max_staleness = None if max_staleness is None else pd.Timedelta(max_staleness)
        self.use_history = use_history
        self.r = r
        self._instruments: dict[str, list[InstrumentInfo]] = {}
        self._days: dict[tuple[str, pd.Timestamp], pd.DataFrame] = {}
        self._settlements: dict[str, pd.Series] = {}
        self.gate_counts: Counter[str] = Counter()

    def fingerprint(self) -> str:
        """A short description of this source for run records."""
        return f"deribit({self.client.base_url}; {self.timeframe})"

    # ---- helpers

    def instruments(self, underlying: str) -> list[InstrumentInfo]:
        """Every option of `underlying` the API lists (live and expired), cached."""
        key = underlying.upper()
        if key not in self._instruments:
            self._instruments[key] = list_option_instruments(
                self.client, key, use_history=self.use_history
            )
        return self._instruments[key]

    def _spot_close(self, underlying: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
        bar = timeframe_delta(self.timeframe)
        candles = self.client.chart_candles(
            spot_instrument_for(underlying), start - bar, end, source_timeframe(self.timeframe)
        )
        return candles["close"]

    def _day(self, underlying: str, day: pd.Timestamp) -> pd.DataFrame:
        key = (underlying.upper(), day)
        if key not in self._days:
            end = day + pd.Timedelta(days=1) - pd.Timedelta(1, "ms")
            spot = self._spot_close(underlying, day, end)
            self._days[key] = build_chain(
                self.client,
                self.instruments(underlying),
                spot,
                day,
                end,
                self.timeframe,
                self.gate_counts,
            )
        return self._days[key]

    def _chain_table(self, underlying: str, start: pd.Timestamp, end: pd.Timestamp) -> ChainTable:
        bar = timeframe_delta(self.timeframe)
        stale = self.max_staleness or bar
        days = pd.date_range((start - stale - bar).floor("D"), end.floor("D"), freq="D")
        frame = concat_chain(self._day(underlying, d) for d in days)
        return ChainTable(frame, self.timeframe, stale)

    # ---- MarketDataSource

    def get_spot_ohlc(
        self, underlying: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Perpetual candles of `underlying` (spot proxy, USD), labeled by close time."""
        s, e = inclusive_range(start, end)
        candles = self.client.chart_candles(spot_instrument_for(underlying), s, e, timeframe)
        return candles.loc[:, list(OHLC_COLUMNS)] if len(candles) else empty_ohlc()

    def list_option_chain(self, underlying: str, as_of: TimestampLike) -> list[OptionSnapshot]:
        """Options of `underlying` that traded in the bar ending at or just before `as_of`."""
        return frame_to_snapshots(self.chain_frame(underlying, pd.DatetimeIndex([to_utc(as_of)])))

    def get_option_ohlc(
        self, instrument_name: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Traded-price candles of one option in USD (inverse: coin x spot close of the same bar)."""
        s, e = inclusive_range(start, end)
        try:
            spec = parse_instrument_name(instrument_name)
        except ValueError as exc:
            raise DataError(f"unknown instrument name: {exc}") from None
        candles = self.client.chart_candles(instrument_name, s, e, timeframe)
        if candles.empty:
            self.gate_counts["options_without_candles"] += 1
            return empty_ohlc()
        symbol, style = coin_of_instrument_underlying(spec.underlying)
        if style == "linear":
            out = candles.loc[:, ["open", "high", "low", "close", "volume"]]
            return out[out["close"].notna()]
        spot = self.client.chart_candles(spot_instrument_for(symbol), s, e, timeframe)
        f = spot["close"].reindex(candles.index)
        self.gate_counts["no_spot"] += int(f.isna().sum())
        out = candles.loc[:, ["open", "high", "low", "close"]].mul(f, axis=0)
        out["volume"] = candles["volume"]
        return out[f.notna()]

    # ---- BulkChainSource

    # ---- SettlementSource

    def settlement_price(self, underlying: str, expiry: pd.Timestamp) -> float | None:
        """Deribit's official delivery price for `expiry` (USD), or None if not published."""
        key = underlying.upper()
        if key not in self._settlements:
            table = self.client.get_delivery_prices(index_name_for(key))
            self._settlements[key] = delivery_series(table)
        series = self._settlements[key]
        ts = to_utc(expiry)
        return float(series.loc[ts]) if ts in series.index else None


def delivery_series(table: pd.DataFrame) -> pd.Series:
    """Delivery prices keyed by expiry time (the date at 08:00 UTC)."""
    idx = pd.DatetimeIndex(table["date"]).floor("D") + pd.Timedelta(hours=DELIVERY_HOUR_UTC)
    return pd.Series(table["delivery_price"].to_numpy(dtype=np.float64), index=utc_index(idx))
