"""Linear USDC options (SOL_USDC, ...) from every real source: Deribit API and Tardis files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.coins import UnknownCoinError
from harness.data.deribit import DeribitDataSource
from harness.data.deribit_client import DeribitClient
from harness.data.tardis import TARDIS_COLUMNS, read_tardis, write_tardis_csv
from harness.pricing import black76_price, implied_vol, year_fraction
from tests.data.deribit_server import HOUR_MS, START, DeribitServer, Market, instrument

UTC = "UTC"
SOL_CALL = "SOL_USDC-8MAR24-130-C"
EXPIRY = pd.Timestamp("2024-03-08 08:00", tz=UTC)


def _ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


def _sol(open_ms: int) -> float:
    hours = (open_ms - _ms(START)) / HOUR_MS
    return round(125.0 + 3.0 * np.sin(hours / 5.0), 3)


def _sol_market() -> Market:
    m = Market()
    perp = []
    for h in range(-24, 72):
        o = _ms(START) + h * HOUR_MS
        c = _sol(o + HOUR_MS)
        perp.append((o, c, c + 0.5, c - 0.5, c, 1000.0, 1000.0 * c))
    m.candles[("SOL_USDC-PERPETUAL", "60")] = perp
    option = []
    for h in range(0, 48):
        o = _ms(START) + h * HOUR_MS
        close_time = pd.Timestamp(o + HOUR_MS, unit="ms", tz=UTC)
        f = _sol(o + HOUR_MS)
        usdc = round(
            float(black76_price(f, 130.0, year_fraction(close_time, EXPIRY), 0.8, True)), 2
        )
        option.append((o, usdc, usdc, usdc, usdc, 20.0 if h % 3 == 0 else 0.0, 20.0 * usdc))
    m.candles[(SOL_CALL, "60")] = option
    sol = instrument(SOL_CALL, "2024-02-23 08:00", instrument_type="linear")
    eth_linear = instrument("ETH_USDC-8MAR24-4000-C", "2024-02-23 08:00", instrument_type="linear")
    # Deribit lists every linear option under the currency USDC, whatever its coin.
    m.instruments[("USDC", False, False)] = [sol, eth_linear]
    m.delivery_prices = [{"date": "2024-03-08", "delivery_price": 131.25}]
    return m


@pytest.fixture
def deribit_server() -> Iterator[DeribitServer]:
    """The shared Deribit fixtures (`client`) served from a SOL market in this module."""
    server = DeribitServer(_sol_market()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sol_server(deribit_server: DeribitServer) -> DeribitServer:
    return deribit_server


@pytest.fixture
def sol_source(client: DeribitClient) -> DeribitDataSource:
    return DeribitDataSource(client, use_history=False)


def test_deribit_source_serves_sol_usdc_options_in_usdc(
    sol_source: DeribitDataSource, sol_server: DeribitServer
) -> None:
    times = pd.DatetimeIndex([START + pd.Timedelta(hours=h) for h in (1, 4, 7)])
    chain = sol_source.chain_frame("SOL", times)
    assert set(chain["instrument_name"]) == {SOL_CALL}
    assert set(chain["underlying"]) == {"SOL"}
    row = chain.iloc[0]
    open_ms = _ms(row["as_of"]) - HOUR_MS
    f = _sol(open_ms + HOUR_MS)
    candle_close = next(
        c[4] for c in sol_server.market.candles[(SOL_CALL, "60")] if c[0] == open_ms
    )
    # Linear options are already USDC per coin: no conversion at the spot.
    assert row["mark_price"] == candle_close
    assert row["underlying_price"] == f
    assert row["mark_price_coin"] == pytest.approx(candle_close / f, rel=1e-12)
    t = float(year_fraction(row["as_of"], EXPIRY))
    assert row["mark_iv"] == pytest.approx(float(implied_vol(candle_close, f, 130.0, t, True)))
    # Spot comes from the USDC perpetual; ETH_USDC options are not SOL's.
    spot = sol_source.get_spot_ohlc("SOL", START, START + pd.Timedelta(hours=3), "1h")
    assert spot["close"].iloc[-1] == _sol(_ms(START + pd.Timedelta(hours=3)))
    marks = sol_source.get_option_ohlc(SOL_CALL, START, START + pd.Timedelta(hours=3), "1h")
    assert marks["close"].iloc[0] == next(
        c[4] for c in sol_server.market.candles[(SOL_CALL, "60")] if c[0] == _ms(START)
    )


def test_deribit_settles_linear_options_at_the_usdc_index_delivery_price(
    sol_source: DeribitDataSource, sol_server: DeribitServer
) -> None:
    assert sol_source.settlement_price("SOL", EXPIRY) == 131.25
    assert sol_server.requests[-1][1]["index_name"] == "sol_usdc"


def test_an_unsupported_coin_fails_in_one_line_before_any_request(
    sol_source: DeribitDataSource, sol_server: DeribitServer
) -> None:
    with pytest.raises(UnknownCoinError, match=r"no coin 'FOO' in the registry; known: BTC, ETH"):
        sol_source.get_spot_ohlc("FOO", START, START + pd.Timedelta(hours=3), "1h")
    with pytest.raises(UnknownCoinError):
        sol_source.chain_frame("FOO", pd.DatetimeIndex([START]))
    assert sol_server.requests == []


def _tardis_row(symbol: str, ts_us: int, price: float, f: float, strike: float) -> dict:
    return {
        "exchange": "deribit",
        "symbol": symbol,
        "timestamp": ts_us,
        "local_timestamp": ts_us + 1500,
        "type": "call",
        "strike_price": strike,
        "expiration": int(EXPIRY.value // 1000),
        "open_interest": 10.0,
        "last_price": price,
        "bid_price": round(price * 0.97, 4),
        "bid_amount": 5.0,
        "bid_iv": 78.0,
        "ask_price": round(price * 1.03, 4),
        "ask_amount": 5.0,
        "ask_iv": 82.0,
        "mark_price": price,
        "mark_iv": 80.0,
        "underlying_index": "index_price" if "_USDC" in symbol else "SYN.BTC-8MAR24",
        "underlying_price": f,
        "delta": 0.4,
        "gamma": 0.01,
        "vega": 0.1,
        "theta": -0.2,
        "rho": 0.01,
    }


def test_tardis_keeps_registry_linear_options_and_converts_them(tmp_path: Path) -> None:
    t0 = int(pd.Timestamp("2024-03-01 00:30", tz=UTC).value // 1000)
    rows = [
        _tardis_row(SOL_CALL, t0, 2.35, 125.4, 130.0),  # USDC per SOL
        _tardis_row("BTC-8MAR24-65000-C", t0, 0.0215, 62_000.0, 65_000.0),  # BTC per BTC
        _tardis_row("BTC_USDC-8MAR24-65000-C", t0, 1333.0, 62_000.0, 65_000.0),
        _tardis_row("PAXG_USDC-8MAR24-2100-C", t0, 12.0, 2_050.0, 2_100.0),
    ]
    path = tmp_path / "options_chain.csv.gz"
    write_tardis_csv(pd.DataFrame(rows, columns=list(TARDIS_COLUMNS)), path)
    chain, counts = read_tardis([path], "1h")
    assert set(chain["instrument_name"]) == {SOL_CALL, "BTC-8MAR24-65000-C"}
    sol = chain[chain["instrument_name"] == SOL_CALL].iloc[0]
    assert sol["underlying"] == "SOL"
    assert sol["mark_price"] == 2.35
    assert sol["bid_price"] == round(2.35 * 0.97, 4)
    assert sol["mark_price_coin"] == pytest.approx(2.35 / 125.4, rel=1e-12)
    btc = chain[chain["instrument_name"] == "BTC-8MAR24-65000-C"].iloc[0]
    assert btc["mark_price"] == pytest.approx(0.0215 * 62_000.0, rel=1e-12)
    assert btc["mark_price_coin"] == 0.0215
    assert counts["linear_skipped"] == 1  # BTC_USDC: BTC is traded inverse
    assert counts["not_in_coin_registry"] == 1
    sol_only, counts = read_tardis([path], "1h", underlyings=["SOL"])
    assert set(sol_only["instrument_name"]) == {SOL_CALL}
    assert counts["other_underlying"] == 1
