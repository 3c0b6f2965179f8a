"""A small Deribit API v2 client for the public market-data endpoints (HTTP GET, JSON-RPC).

- JSON-RPC errors become `DeribitAPIError` carrying Deribit's code and message and naming the
  request; transient failures (HTTP 429/5xx, timeouts, connection errors, and Deribit codes
  such as 10028 too_many_requests) are retried with exponential backoff (tenacity), honouring
  a `Retry-After` header.
- A token bucket keeps us under Deribit's public rate limit on the client side.
- Immutable historical responses (windows that ended in the past) are cached on disk with
  diskcache, so an interrupted fetch resumes for free. Live data is never cached.

Timestamps sent and received are Unix milliseconds (Deribit's unit).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from harness.data.errors import DataError
from harness.timestamps import TimestampLike, to_utc, utc_index
from harness.types import Timeframe, timeframe_delta

DEFAULT_BASE_URL = "https://www.deribit.com/api/v2"
# Deribit's history API serves expired instruments and old trades.
HISTORY_BASE_URL = "https://history.deribit.com/api/v2"

# Deribit error codes that mean "try again later" (rate limits, maintenance, overload).
RETRYABLE_CODES = frozenset({10028, 10040, 10041, 10047, 10066, 11051, 11094, 13028, 13888})
RETRYABLE_HTTP = frozenset({429, 500, 502, 503, 504})

# get_tradingview_chart_data resolutions (minutes or "1D"). 4h has none: we aggregate 1h bars.
CHART_RESOLUTION: dict[str, str] = {
    "1m": "1",
    "5m": "5",
    "15m": "15",
    "1h": "60",
    "4h": "60",
    "1d": "1D",
}
# get_volatility_index_data resolutions (seconds or "1D").
DVOL_RESOLUTION: dict[str, str] = {"1m": "60", "1h": "3600", "1d": "1D"}
MAX_CANDLES_PER_REQUEST = 1000
# A window is treated as immutable history once it ended this long ago.
IMMUTABLE_AFTER = pd.Timedelta(minutes=10)


class DeribitAPIError(DataError):
    """A failed Deribit request: JSON-RPC `code` and `message` (or HTTP status), and the request."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        params: Mapping[str, Any],
        code: int | None = None,
        http_status: int | None = None,
        data: Any = None,
        retry_after: float | None = None,
    ):
        self.method = method
        self.params = dict(params)
        self.code = code
        self.http_status = http_status
        self.data = data
        self.retry_after = retry_after
        query = "&".join(f"{k}={v}" for k, v in self.params.items())
        super().__init__(message, source=f"{method}?{query}" if query else method)


class TransientDeribitError(DeribitAPIError):
    """A failure worth retrying (rate limit, overload, timeout); raised after retries run out."""


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    """One instrument from public/get_instruments (times UTC, strike USD)."""

    instrument_name: str
    kind: str
    base_currency: str
    creation: pd.Timestamp
    expiration: pd.Timestamp
    strike: float | None = None
    option_type: str | None = None
    settlement_period: str | None = None
    contract_size: float | None = None
    instrument_type: str | None = None  # "reversed" (coin-settled) or "linear"
    is_active: bool | None = None


@dataclass(frozen=True, slots=True)
class IndexPrice:
    """public/get_index_price result (USD)."""

    index_price: float
    estimated_delivery_price: float | None


class RateLimiter:
    """Token bucket: at most `rate` requests per second on average, bursts of `burst`."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = float(rate), int(burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping as needed; returns the seconds slept."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            wait = 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate
            if wait > 0:
                self._sleep(wait)
                self._tokens = 1.0
                self._last = self._clock()
            self._tokens -= 1.0
            return wait


def _ms(value: TimestampLike) -> int:
    return int(to_utc(value).value // 1_000_000)


def _encode(value: Any) -> Any:
    # Deribit's GET interface wants lower-case booleans.
    return ("true" if value else "false") if isinstance(value, bool) else value


class DeribitClient:
    """Deribit public API client: retries, client-side rate limit, disk cache of history."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        history_url: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 15.0,
        max_attempts: int = 6,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        requests_per_second: float = 5.0,
        burst: int = 5,
        cache_dir: str | None = None,
        now: Callable[[], pd.Timestamp] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.history_url = (history_url or HISTORY_BASE_URL).rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._sleep = sleep
        self.limiter = RateLimiter(requests_per_second, burst, sleep=sleep)
        self._now = now or (lambda: pd.Timestamp.now(tz="UTC"))
        self._cache = None
        if cache_dir is not None:
            import diskcache

            self._cache = diskcache.Cache(str(cache_dir))
        self.stats: Counter[str] = Counter()

    def close(self) -> None:
        """Close the HTTP session and the disk cache."""
        self.session.close()
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> DeribitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- transport

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        history: bool = False,
        cache: bool = False,
    ) -> Any:
        """Call `method` (e.g. "public/get_index_price") and return its `result`.

        Raises DeribitAPIError (TransientDeribitError once retries are exhausted).
        """
        params = {k: _encode(v) for k, v in (params or {}).items() if v is not None}
        url = f"{self.history_url if history else self.base_url}/{method}"
        key = json.dumps([url, sorted(params.items())], default=str) if cache else None
        if key is not None and self._cache is not None:
            hit = self._cache.get(key, default=None)
            if hit is not None:
                self.stats["cache_hits"] += 1
                return json.loads(hit)
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(TransientDeribitError),
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda _: self.stats.update(["retries"]),
        )
        result = retrying(self._request, url, method, params)
        if key is not None and self._cache is not None:
            self._cache.set(key, json.dumps(result))
        return result

    def _wait(self, state: RetryCallState) -> float:
        # Jitter of up to one initial step spreads retries of parallel clients apart.
        base = wait_exponential_jitter(
            multiplier=self.backoff_initial, max=self.backoff_max, jitter=self.backoff_initial
        )(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            return max(base, min(float(retry_after), self.backoff_max))
        return base

    def _request(self, url: str, method: str, params: dict[str, Any]) -> Any:
        self.limiter.acquire()
        self.stats["requests"] += 1
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise TransientDeribitError(
                f"{type(exc).__name__}: {exc}", method=method, params=params
            ) from exc
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        try:
            body = resp.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            message = f"Deribit error {code}: {error.get('message', '')}"
            if error.get("data"):
                message += f" ({error['data']})"
            cls = (
                TransientDeribitError
                if code in RETRYABLE_CODES or resp.status_code in RETRYABLE_HTTP
                else DeribitAPIError
            )
            raise cls(
                message,
                method=method,
                params=params,
                code=code,
                http_status=resp.status_code,
                data=error.get("data"),
                retry_after=retry_after,
            )
        if resp.status_code != 200 or not isinstance(body, dict) or "result" not in body:
            cls = TransientDeribitError if resp.status_code in RETRYABLE_HTTP else DeribitAPIError
            text = resp.text[:200].replace("\n", " ")
            raise cls(
                f"HTTP {resp.status_code}: unexpected response {text!r}",
                method=method,
                params=params,
                http_status=resp.status_code,
                retry_after=retry_after,
            )
        return body["result"]

    def _immutable(self, end_ms: int, bar: pd.Timedelta | None = None) -> bool:
        end = pd.Timestamp(end_ms, unit="ms", tz="UTC") + (bar or pd.Timedelta(0))
        return end + IMMUTABLE_AFTER < self._now()

    # ---------------------------------------------------------------- endpoints

    def get_instruments(
        self, currency: str, kind: str = "option", *, expired: bool = False, history: bool = False
    ) -> list[InstrumentInfo]:
        """public/get_instruments: live instruments, or recently expired ones with `expired`."""
        params = {"currency": currency.upper(), "kind": kind, "expired": expired}
        result = self.call("public/get_instruments", params, history=history)
        if not isinstance(result, list):
            raise DeribitAPIError(
                "result is not a list", method="public/get_instruments", params=params
            )
        return [_instrument(item, params) for item in result]

    def get_tradingview_chart_data(
        self, instrument_name: str, start: TimestampLike, end: TimestampLike, resolution: str
    ) -> pd.DataFrame:
        """One chart request: candles indexed by bar OPEN time (`tick`), as Deribit returns them.

        Columns open, high, low, close (instrument price units), volume (base currency) and cost
        (quote currency). `status: no_data` gives an empty frame.
        """
        start_ms, end_ms = _ms(start), _ms(end)
        params = {
            "instrument_name": instrument_name,
            "start_timestamp": start_ms,
            "end_timestamp": end_ms,
            "resolution": resolution,
        }
        bar = pd.Timedelta(days=1) if resolution == "1D" else pd.Timedelta(minutes=int(resolution))
        result = self.call(
            "public/get_tradingview_chart_data", params, cache=self._immutable(end_ms, bar)
        )
        return _candles(result, "public/get_tradingview_chart_data", params)

    def chart_candles(
        self, instrument_name: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Candles of `instrument_name` labeled by bar CLOSE time, closes in [start, end].

        Deribit labels candles by open time; we shift them by one bar. Requests are split so
        each asks for at most MAX_CANDLES_PER_REQUEST bars; 4h bars are built from 1h bars.
        Empty when the instrument did not trade or has no data (`no_data`).
        """
        bar = timeframe_delta(timeframe)
        resolution = CHART_RESOLUTION[timeframe]
        step = timeframe_delta("1h") if timeframe == "4h" else bar
        first_open = to_utc(start) - bar
        last_open = to_utc(end) - step
        frames = []
        window = step * MAX_CANDLES_PER_REQUEST
        lo = first_open
        while lo <= last_open:
            hi = min(lo + window - step, last_open)
            frame = self.get_tradingview_chart_data(instrument_name, lo, hi, resolution)
            frames.append(frame[(frame.index >= lo) & (frame.index <= hi)])
            lo = hi + step
        frames = [f for f in frames if len(f)]
        if not frames:
            return _empty_candles()
        candles = pd.concat(frames)
        candles = candles[~candles.index.duplicated(keep="last")].sort_index()
        candles.index = utc_index(candles.index + step)
        if timeframe == "4h":
            candles = _aggregate(candles, bar)
        return candles[(candles.index >= to_utc(start)) & (candles.index <= to_utc(end))]

    def get_index_price(self, index_name: str) -> IndexPrice:
        """public/get_index_price: the current index value (e.g. index_name "btc_usd")."""
        params = {"index_name": index_name}
        result = self.call("public/get_index_price", params)
        try:
            edp = result.get("estimated_delivery_price")
            return IndexPrice(
                index_price=float(result["index_price"]),
                estimated_delivery_price=None if edp is None else float(edp),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise DeribitAPIError(
                f"malformed result {result!r}", method="public/get_index_price", params=params
            ) from exc

    def get_delivery_prices(self, index_name: str, *, page_size: int = 1000) -> pd.DataFrame:
        """public/get_delivery_prices, all pages: columns date (UTC midnight) and delivery_price."""
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            params = {"index_name": index_name, "offset": offset, "count": page_size}
            result = self.call("public/get_delivery_prices", params)
            try:
                data = list(result["data"])
                total = int(result.get("records_total", 0))
            except (KeyError, TypeError, ValueError) as exc:
                raise DeribitAPIError(
                    f"malformed result {str(result)[:200]}",
                    method="public/get_delivery_prices",
                    params=params,
                ) from exc
            rows.extend(data)
            offset += len(data)
            if not data or offset >= total:
                break
        frame = pd.DataFrame(rows, columns=["date", "delivery_price"])
        frame["date"] = pd.to_datetime(frame["date"], utc=True)
        frame["delivery_price"] = frame["delivery_price"].astype("float64")
        frame = frame.drop_duplicates("date").sort_values("date").reset_index(drop=True)
        return frame

    def get_volatility_index_data(
        self, currency: str, start: TimestampLike, end: TimestampLike, resolution: str = "3600"
    ) -> pd.DataFrame:
        """public/get_volatility_index_data (DVOL), following `continuation` back to `start`.

        Index: candle timestamp (UTC) as Deribit gives it; columns open, high, low, close (in
        volatility percent).
        """
        start_ms, end_ms = _ms(start), _ms(end)
        rows: list[list[float]] = []
        cursor = end_ms
        while True:
            params = {
                "currency": currency.upper(),
                "start_timestamp": start_ms,
                "end_timestamp": cursor,
                "resolution": resolution,
            }
            result = self.call(
                "public/get_volatility_index_data", params, cache=self._immutable(cursor)
            )
            try:
                data = result["data"]
                continuation = result.get("continuation")
            except (KeyError, TypeError) as exc:
                raise DeribitAPIError(
                    f"malformed result {str(result)[:200]}",
                    method="public/get_volatility_index_data",
                    params=params,
                ) from exc
            rows.extend(data)
            # Continuation is the end_timestamp of the next (older) page; stop when it stops
            # moving back or passes the start.
            if continuation is None or int(continuation) >= cursor or int(continuation) < start_ms:
                break
            cursor = int(continuation)
        frame = pd.DataFrame(rows, columns=["timestamp", "open", "high", "low", "close"])
        frame.index = utc_index(
            pd.to_datetime(frame.pop("timestamp").astype("int64"), unit="ms", utc=True)
        )
        frame = frame.astype("float64")
        frame = frame[~frame.index.duplicated(keep="last")].sort_index()
        return frame[(frame.index >= to_utc(start_ms)) & (frame.index <= to_utc(end_ms))]

    def get_last_trades_by_instrument_and_time(
        self,
        instrument_name: str,
        start: TimestampLike,
        end: TimestampLike,
        *,
        count: int = 1000,
        history: bool = False,
    ) -> pd.DataFrame:
        """All trades of `instrument_name` in [start, end], oldest first, following `has_more`.

        Columns: timestamp (UTC), trade_id, trade_seq, price, amount, direction, index_price,
        mark_price, iv (percent; NaN for non-options).
        """
        start_ms, end_ms = _ms(start), _ms(end)
        trades: dict[str, dict[str, Any]] = {}
        cursor = start_ms
        immutable = self._immutable(end_ms)
        while True:
            params = {
                "instrument_name": instrument_name,
                "start_timestamp": cursor,
                "end_timestamp": end_ms,
                "count": count,
                "sorting": "asc",
            }
            result = self.call(
                "public/get_last_trades_by_instrument_and_time",
                params,
                history=history,
                cache=immutable,
            )
            try:
                page = list(result["trades"])
                has_more = bool(result.get("has_more", False))
            except (KeyError, TypeError) as exc:
                raise DeribitAPIError(
                    f"malformed result {str(result)[:200]}",
                    method="public/get_last_trades_by_instrument_and_time",
                    params=params,
                ) from exc
            before = len(trades)
            for trade in page:
                trades[str(trade.get("trade_id"))] = trade
            if not has_more or not page:
                break
            last_ms = max(int(t["timestamp"]) for t in page)
            # The next page starts at the last timestamp seen (trades sharing it are
            # de-duplicated by id); if a whole page shared one millisecond, step past it.
            cursor = last_ms if len(trades) > before and last_ms > cursor else last_ms + 1
            if cursor > end_ms:
                break
        columns = [
            "timestamp",
            "trade_id",
            "trade_seq",
            "price",
            "amount",
            "direction",
            "index_price",
            "mark_price",
            "iv",
        ]
        frame = pd.DataFrame(list(trades.values()))
        for col in columns:
            if col not in frame.columns:
                frame[col] = np.nan
        frame = frame.loc[:, columns]
        if len(frame):
            frame["timestamp"] = pd.to_datetime(
                frame["timestamp"].astype("int64"), unit="ms", utc=True
            )
            frame = frame.sort_values(["timestamp", "trade_seq"], kind="stable").reset_index(
                drop=True
            )
        else:
            frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
        for col in ("price", "amount", "index_price", "mark_price", "iv"):
            frame[col] = frame[col].astype("float64")
        return frame


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _ts_ms(value: Any) -> pd.Timestamp:
    return pd.Timestamp(int(value), unit="ms", tz="UTC")


def _instrument(item: Any, params: Mapping[str, Any]) -> InstrumentInfo:
    try:
        strike = item.get("strike")
        contract = item.get("contract_size")
        return InstrumentInfo(
            instrument_name=str(item["instrument_name"]),
            kind=str(item.get("kind", "")),
            base_currency=str(item.get("base_currency", "")),
            creation=_ts_ms(item["creation_timestamp"]),
            expiration=_ts_ms(item["expiration_timestamp"]),
            strike=None if strike is None else float(strike),
            option_type=item.get("option_type"),
            settlement_period=item.get("settlement_period"),
            contract_size=None if contract is None else float(contract),
            instrument_type=item.get("instrument_type"),
            is_active=item.get("is_active"),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise DeribitAPIError(
            f"malformed instrument {str(item)[:200]}: {exc!r}",
            method="public/get_instruments",
            params=params,
        ) from exc


def _empty_candles() -> pd.DataFrame:
    idx = pd.DatetimeIndex([], tz="UTC", name="timestamp")
    cols = ("open", "high", "low", "close", "volume", "cost")
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols}, index=idx)


def _candles(result: Any, method: str, params: Mapping[str, Any]) -> pd.DataFrame:
    if not isinstance(result, dict):
        raise DeribitAPIError(f"malformed result {str(result)[:200]}", method=method, params=params)
    status = result.get("status")
    if status == "no_data":
        return _empty_candles()
    if status != "ok":
        raise DeribitAPIError(f"unexpected chart status {status!r}", method=method, params=params)
    ticks = result.get("ticks") or []
    cols = ("open", "high", "low", "close", "volume", "cost")
    lengths = {c: len(result.get(c) or []) for c in cols if c != "cost" or "cost" in result}
    if any(n != len(ticks) for n in lengths.values()):
        raise DeribitAPIError(
            f"chart arrays have different lengths (ticks {len(ticks)}, {lengths})",
            method=method,
            params=params,
        )
    if not ticks:
        return _empty_candles()
    data = {c: np.asarray(result.get(c) or [np.nan] * len(ticks), dtype=np.float64) for c in cols}
    idx = utc_index(pd.to_datetime(np.asarray(ticks, dtype=np.int64), unit="ms", utc=True))
    frame = pd.DataFrame(data, index=idx)
    return frame[~frame.index.duplicated(keep="last")].sort_index()


def _aggregate(candles: pd.DataFrame, bar: pd.Timedelta) -> pd.DataFrame:
    grouped = candles.resample(bar, label="right", closed="right", origin="epoch")
    out = grouped.agg(
        {
            "open": "first",
            "high": "max",
            "low": "min",
            "close": "last",
            "volume": "sum",
            "cost": "sum",
        }
    )
    return out[grouped["close"].count() > 0]
