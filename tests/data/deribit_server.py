"""A local HTTP server that answers like Deribit's public API v2, from recorded-format data.

Responses follow Deribit's documented JSON-RPC envelope ({"jsonrpc": "2.0", "result": ...,
"usIn", "usOut", "usDiff", "testnet"}; errors as {"error": {"code", "message", "data"}}) and the
documented result shapes of each endpoint. `Market` holds the data; `faults` queues one-off
failures (HTTP status, JSON-RPC error, slow response) per method so tests can exercise retries.
Paths: /api/v2/public/<method> (www) and /history/api/v2/public/<method> (history API).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

from harness.pricing import black76_price, year_fraction

MS = 1000


@dataclass
class Fault:
    """A one-off failure: an HTTP status with body, a JSON-RPC error, or a delay (seconds)."""

    http_status: int = 200
    code: int | None = None
    message: str = ""
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: str | None = None
    body: dict[str, Any] | None = None  # a recorded response, sent verbatim


@dataclass
class Market:
    """Everything the fake Deribit knows; candles keyed by (instrument, resolution)."""

    instruments: dict[tuple[str, bool, bool], list[dict[str, Any]]] = field(default_factory=dict)
    candles: dict[tuple[str, str], list[tuple[int, float, float, float, float, float, float]]] = (
        field(default_factory=dict)
    )
    delivery_prices: list[dict[str, Any]] = field(default_factory=list)
    dvol: list[list[float]] = field(default_factory=list)
    dvol_page: int = 3
    trades: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    index_prices: dict[str, dict[str, float]] = field(default_factory=dict)


class DeribitServer:
    """Threaded server on 127.0.0.1 (random port) serving a `Market`; records every request."""

    def __init__(self, market: Market):
        self.market = market
        self.faults: dict[str, deque[Fault]] = defaultdict(deque)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """The www API base URL of this server."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v2"

    @property
    def history_url(self) -> str:
        """The history API base URL of this server."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/history/api/v2"

    def start(self) -> DeribitServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, method: str, *faults: Fault) -> None:
        """Queue failures for the next calls of `method` (e.g. "public/get_index_price")."""
        self.faults[method].extend(faults)

    def count(self, method: str) -> int:
        """How many requests `method` received."""
        return sum(1 for m, _ in self.requests if m == method)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults.clear()

    # ---------------------------------------------------------------- dispatch

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        us_in = int(time.time() * 1e6)
        url = urlparse(h.path)
        history = url.path.startswith("/history/")
        prefix = "/history/api/v2/" if history else "/api/v2/"
        method = url.path[len(prefix) :] if url.path.startswith(prefix) else url.path
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append((method, params))
            fault = self.faults[method].popleft() if self.faults[method] else None
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if (
                fault.raw_body is not None
                or fault.body is not None
                or fault.code is not None
                or fault.http_status != 200
            ):
                self._send_fault(h, fault, us_in)
                return
        handler = getattr(self, "_" + method.replace("public/", ""), None)
        if handler is None:
            self._send_error(h, 400, -32601, "Method not found", us_in)
            return
        try:
            result = handler(params, history)
        except _RpcError as exc:
            self._send_error(h, 400, exc.code, exc.message, us_in, exc.data)
            return
        self._send(h, 200, {"jsonrpc": "2.0", "result": result}, us_in)

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        us_in: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        us_out = int(time.time() * 1e6)
        body |= {"usIn": us_in, "usOut": us_out, "usDiff": us_out - us_in, "testnet": False}
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _send_error(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        code: int,
        message: str,
        us_in: int,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self._send(h, status, {"jsonrpc": "2.0", "error": error}, us_in, headers)

    def _send_fault(self, h: BaseHTTPRequestHandler, fault: Fault, us_in: int) -> None:
        if fault.body is not None:
            fault = Fault(
                http_status=fault.http_status,
                headers=fault.headers,
                raw_body=json.dumps(fault.body),
            )
        if fault.raw_body is not None:
            data = fault.raw_body.encode()
            h.send_response(fault.http_status)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(data)))
            for k, v in fault.headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
            return
        if fault.code is not None:
            self._send_error(
                h, fault.http_status, fault.code, fault.message, us_in, headers=fault.headers
            )
        else:
            self._send(h, fault.http_status, {"jsonrpc": "2.0"}, us_in, fault.headers)

    # ---------------------------------------------------------------- endpoints

    def _get_instruments(self, p: dict[str, str], history: bool) -> list[dict[str, Any]]:
        expired = p.get("expired", "false") == "true"
        if p.get("currency") not in ("BTC", "ETH", "USDC", "any"):
            raise _RpcError(
                10020, "invalid_currency", {"param": "currency", "reason": "wrong format"}
            )
        return self.market.instruments.get((p["currency"], expired, history), [])

    def _get_tradingview_chart_data(self, p: dict[str, str], history: bool) -> dict[str, Any]:
        name = p["instrument_name"]
        known = {k[0] for k in self.market.candles} | {
            i["instrument_name"] for rows in self.market.instruments.values() for i in rows
        }
        if name not in known:
            raise _RpcError(
                10020, "invalid_or_unsupported_instrument", {"param": "instrument_name"}
            )
        lo, hi = int(p["start_timestamp"]), int(p["end_timestamp"])
        rows = [c for c in self.market.candles.get((name, p["resolution"]), []) if lo <= c[0] <= hi]
        keys = ("ticks", "open", "high", "low", "close", "volume", "cost")
        if not rows:
            return {k: [] for k in keys if k != "ticks"} | {"ticks": [], "status": "no_data"}
        cols = list(zip(*rows, strict=True))
        out = {k: list(cols[i]) for i, k in enumerate(keys)}
        # Deribit returns the keys in alphabetical order.
        return dict(sorted((out | {"status": "ok"}).items()))

    def _get_index_price(self, p: dict[str, str], history: bool) -> dict[str, float]:
        name = p.get("index_name", "")
        if name not in self.market.index_prices:
            raise _RpcError(
                -32602,
                "Invalid params",
                {"param": "index_name", "reason": "must be one of the supported index names"},
            )
        return self.market.index_prices[name]

    def _get_delivery_prices(self, p: dict[str, str], history: bool) -> dict[str, Any]:
        offset, count = int(p.get("offset", 0)), int(p.get("count", 10))
        data = self.market.delivery_prices  # newest first, as Deribit returns them
        return {"data": data[offset : offset + count], "records_total": len(data)}

    def _get_volatility_index_data(self, p: dict[str, str], history: bool) -> dict[str, Any]:
        lo, hi = int(p["start_timestamp"]), int(p["end_timestamp"])
        rows = [r for r in self.market.dvol if lo <= r[0] <= hi]
        page = rows[-self.market.dvol_page :]
        # The continuation is the end_timestamp for the next, older page.
        continuation = page[0][0] - 1 if len(rows) > len(page) else None
        return {"data": page, "continuation": continuation}

    def _get_last_trades_by_instrument_and_time(
        self, p: dict[str, str], history: bool
    ) -> dict[str, Any]:
        lo, hi = int(p["start_timestamp"]), int(p["end_timestamp"])
        count = min(int(p.get("count", 10)), 1000)
        rows = [
            t
            for t in self.market.trades.get(p["instrument_name"], [])
            if lo <= t["timestamp"] <= hi
        ]
        rows.sort(key=lambda t: (t["timestamp"], t["trade_seq"]))
        return {"trades": rows[:count], "has_more": len(rows) > count}


class _RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


# ---------------------------------------------------------------- a small consistent market

START = pd.Timestamp("2024-03-01 00:00", tz="UTC")
END = pd.Timestamp("2024-03-03 00:00", tz="UTC")
HOUR_MS = 3_600_000
OPTION_IV = 0.60


def _ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


def perp_close(open_ms: int) -> float:
    """Deterministic perpetual price path (USD): a slow wave around 62,000."""
    hours = (open_ms - _ms(START)) / HOUR_MS
    return round(62_000.0 + 1_500.0 * np.sin(hours / 7.0) + 40.0 * hours, 1)


def instrument(
    name: str, created: str, kind: str = "option", instrument_type: str = "reversed"
) -> dict[str, Any]:
    """A get_instruments record in Deribit's documented shape."""
    parts = name.split("-")
    expiry = pd.Timestamp(parts[1], tz="UTC") + pd.Timedelta(hours=8)
    linear = instrument_type == "linear"
    return {
        "tick_size": 0.0001,
        "taker_commission": 0.0003,
        "strike": float(parts[2].replace("d", ".")),
        "settlement_period": "day",
        "settlement_currency": "USDC" if linear else "BTC",
        "quote_currency": "USDC" if linear else "BTC",
        "price_index": "btc_usdc" if linear else "btc_usd",
        "option_type": "call" if parts[3] == "C" else "put",
        "min_trade_amount": 0.1 if not linear else 0.01,
        "maker_commission": 0.0003,
        "kind": kind,
        "is_active": True,
        "instrument_name": name,
        "instrument_id": abs(hash(name)) % 1_000_000,
        "instrument_type": instrument_type,
        "expiration_timestamp": _ms(expiry),
        "creation_timestamp": _ms(pd.Timestamp(created, tz="UTC")),
        "counter_currency": "USDC" if linear else "USD",
        "contract_size": 1.0,
        "block_trade_tick_size": 0.0001,
        "block_trade_min_trade_amount": 25,
        "block_trade_commission": 0.00015,
        "base_currency": "BTC",
    }


def option_candles(
    name: str, traded_hours: list[int], below_intrinsic: int | None = None
) -> list[tuple]:
    """1h candles (coin) of an inverse option: Black-76 at OPTION_IV on the perp close.

    Bars in `traded_hours` (hours after START, by bar open) carry volume; others are flat
    zero-volume bars, as Deribit returns them. `below_intrinsic` makes one traded bar's close
    worth less than intrinsic value, so no implied vol exists.
    """
    _, code, strike_text, letter = name.split("-")
    expiry = pd.Timestamp(code, tz="UTC") + pd.Timedelta(hours=8)
    strike = float(strike_text)
    rows = []
    last = None
    for h in range(-24, 72):
        open_ms = _ms(START) + h * HOUR_MS
        close_time = pd.Timestamp(open_ms + HOUR_MS, unit="ms", tz="UTC")
        if close_time > expiry:
            break
        f = perp_close(open_ms)
        t = float(year_fraction(close_time, expiry))
        usd = float(black76_price(f, strike, t, OPTION_IV, letter == "C"))
        coin = max(round(usd / f, 4), 0.0001)
        if h == below_intrinsic:
            intrinsic = max(f - strike, 0.0) if letter == "C" else max(strike - f, 0.0)
            coin = round(intrinsic / f * 0.5, 4)
        if h in traded_hours:
            rows.append((open_ms, coin, coin, coin, coin, 1.5, round(1.5 * coin, 6)))
            last = coin
        elif last is not None:
            rows.append((open_ms, last, last, last, last, 0.0, 0.0))
    return rows


def perp_candles(resolution: str = "60") -> list[tuple]:
    """Perpetual candles (USD) from a day before START to a day after END."""
    step = HOUR_MS if resolution == "60" else 86_400_000
    rows = []
    for open_ms in range(_ms(START) - 86_400_000, _ms(END) + 86_400_000, step):
        c = perp_close(open_ms + step - HOUR_MS)
        o = perp_close(open_ms - HOUR_MS)
        rows.append((open_ms, o, max(o, c) + 5.0, min(o, c) - 5.0, c, 12.5, round(12.5 * c, 1)))
    return rows


def build_market() -> Market:
    """Options around 1-3 March 2024: expired (www and history lists), live, linear, silent."""
    m = Market()
    m.candles[("BTC-PERPETUAL", "60")] = perp_candles("60")
    m.candles[("BTC-PERPETUAL", "1D")] = perp_candles("1D")
    expired_www = [instrument("BTC-2MAR24-62000-C", "2024-02-23 08:00")]
    expired_hist = [*expired_www, instrument("BTC-2MAR24-58000-P", "2024-02-23 08:00")]
    live = [
        instrument("BTC-8MAR24-65000-C", "2024-03-01 12:00"),
        instrument("BTC-29MAR24-70000-C", "2024-01-26 08:00"),
        instrument("BTC_USDC-8MAR24-60000-C", "2024-02-26 08:00", instrument_type="linear"),
    ]
    m.instruments[("BTC", False, False)] = live
    m.instruments[("BTC", True, False)] = expired_www
    m.instruments[("BTC", True, True)] = expired_hist
    m.candles[("BTC-2MAR24-62000-C", "60")] = option_candles(
        "BTC-2MAR24-62000-C", traded_hours=[0, 1, 2, 5, 9, 10, 20, 30], below_intrinsic=20
    )
    m.candles[("BTC-2MAR24-58000-P", "60")] = option_candles(
        "BTC-2MAR24-58000-P", traded_hours=[1, 3, 10]
    )
    m.candles[("BTC-8MAR24-65000-C", "60")] = option_candles(
        "BTC-8MAR24-65000-C", traded_hours=[12, 13, 14, 30, 47]
    )
    # BTC-29MAR24-70000-C never traded: the chart endpoint answers status "no_data".
    m.delivery_prices = [
        {"date": "2024-03-03", "delivery_price": 62_871.35},
        {"date": "2024-03-02", "delivery_price": 62_431.02},
        {"date": "2024-03-01", "delivery_price": 61_754.88},
        {"date": "2024-02-29", "delivery_price": 61_840.1},
        {"date": "2024-02-28", "delivery_price": 59_970.44},
    ]
    m.index_prices["btc_usd"] = {"index_price": 62_104.27, "estimated_delivery_price": 62_104.27}
    base = _ms(START)
    m.dvol = [[base + i * HOUR_MS, 60.0 + i, 61.0 + i, 59.5 + i, 60.5 + i] for i in range(10)]
    trades = []
    for i in range(7):
        ts = base + 600_000 * (i // 2)  # pairs of trades share a millisecond
        trades.append(
            {
                "trade_seq": 100 + i,
                "trade_id": f"BTC-{9000 + i}",
                "timestamp": ts,
                "tick_direction": i % 4,
                "price": 0.0215 + 0.0001 * i,
                "mark_price": 0.0216,
                "iv": 59.9,
                "instrument_name": "BTC-2MAR24-62000-C",
                "index_price": 61_980.5,
                "direction": "buy" if i % 2 else "sell",
                "contracts": 0.1,
                "amount": 0.1,
            }
        )
    m.trades["BTC-2MAR24-62000-C"] = trades
    return m
