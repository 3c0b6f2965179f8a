"""DeribitClient and DeribitDataSource against a local server answering in Deribit's formats."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.deribit import DeribitDataSource, candles_to_chain
from harness.data.deribit_client import (
    DeribitAPIError,
    DeribitClient,
    RateLimiter,
    TransientDeribitError,
)
from harness.data.errors import DataError
from harness.data.files import FileDataSource
from harness.data.importers import fetch_deribit
from harness.data.source import CHAIN_COLUMNS, BulkChainSource, MarketDataSource, SettlementSource
from harness.instruments import parse_instrument_name
from harness.pricing import black76_greeks, year_fraction
from tests.data.deribit_server import START, DeribitServer, Fault, perp_close

UTC = "UTC"
FIX = Path(__file__).parent / "fixtures" / "deribit"


def _recorded(name: str) -> dict:
    return json.loads((FIX / name).read_text())


# ---------------------------------------------------------------- pricing vs a Deribit ticker


def test_pricing_reproduces_ticker_mark_and_delta() -> None:
    # Values of the Tardis docs' options_chain example row, in Deribit's ticker shape.
    t = _recorded("ticker_option_docs_example.json")["result"]
    spec = parse_instrument_name(t["instrument_name"])
    as_of = pd.Timestamp(t["timestamp"], unit="ms", tz=UTC)
    f = t["underlying_price"]
    g = black76_greeks(
        f, spec.strike, year_fraction(as_of, spec.expiry), t["mark_iv"] / 100, spec.is_call
    )
    assert float(g.price) / f == pytest.approx(t["mark_price"], abs=5e-6)  # coin, 1/2 tick
    assert float(g.delta) == pytest.approx(t["greeks"]["delta"], abs=5e-5)
    assert float(g.vega) == pytest.approx(t["greeks"]["vega"], rel=2e-3)
    assert float(g.gamma) == pytest.approx(t["greeks"]["gamma"], abs=1e-5)


# ---------------------------------------------------------------- client: endpoints and formats


def test_recorded_chart_response_is_parsed_and_relabeled(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    deribit_server.fail(
        "public/get_tradingview_chart_data",
        Fault(body=_recorded("tradingview_chart_data_option_1h.json")),
    )
    candles = client.chart_candles(
        "BTC-2MAR24-62000-C", "2024-03-01 01:00", "2024-03-01 03:00", "1h"
    )
    # Deribit labels by open time (ticks); we label by close time.
    assert list(candles.index) == list(
        pd.date_range("2024-03-01 01:00", periods=3, freq="h", tz=UTC)
    )
    assert candles["close"].tolist() == [0.0215, 0.0215, 0.0231]
    assert candles["volume"].tolist() == [2.0, 0.0, 2.0]
    _, params = deribit_server.requests[-1]
    assert params["resolution"] == "60"
    assert params["start_timestamp"] == str(int(pd.Timestamp("2024-03-01", tz=UTC).value // 10**6))


def test_no_data_status_gives_empty_frame(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    deribit_server.fail(
        "public/get_tradingview_chart_data",
        Fault(body=_recorded("tradingview_chart_data_no_data.json")),
    )
    assert client.get_tradingview_chart_data("BTC-29MAR24-70000-C", START, START, "60").empty
    # And from the market itself: an option that never traded.
    assert client.chart_candles("BTC-29MAR24-70000-C", "2024-03-01", "2024-03-02", "1h").empty


def test_chart_requests_are_split_and_4h_built_from_1h(
    deribit_server: DeribitServer, client: DeribitClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("harness.data.deribit_client.MAX_CANDLES_PER_REQUEST", 10)
    hourly = client.chart_candles("BTC-PERPETUAL", "2024-03-01 01:00", "2024-03-02 00:00", "1h")
    assert len(hourly) == 24 and hourly.index.is_monotonic_increasing
    assert deribit_server.count("public/get_tradingview_chart_data") == 3
    four = client.chart_candles("BTC-PERPETUAL", "2024-03-01 04:00", "2024-03-02 00:00", "4h")
    assert list(four.index) == list(pd.date_range("2024-03-01 04:00", periods=6, freq="4h", tz=UTC))
    first = hourly.loc["2024-03-01 01:00":"2024-03-01 04:00"]
    assert four["close"].iloc[0] == first["close"].iloc[-1]
    assert four["high"].iloc[0] == first["high"].max()
    assert four["volume"].iloc[0] == pytest.approx(first["volume"].sum())
    # Closes match the perp path of the same bar.
    assert hourly["close"].iloc[0] == perp_close(int(START.value // 10**6))


def test_instruments_live_expired_and_history(client: DeribitClient) -> None:
    live = client.get_instruments("BTC")
    expired = client.get_instruments("BTC", expired=True)
    history = client.get_instruments("BTC", expired=True, history=True)
    assert {i.instrument_name for i in live} >= {"BTC-8MAR24-65000-C", "BTC_USDC-8MAR24-60000-C"}
    assert [i.instrument_name for i in expired] == ["BTC-2MAR24-62000-C"]
    assert {i.instrument_name for i in history} == {"BTC-2MAR24-62000-C", "BTC-2MAR24-58000-P"}
    info = next(i for i in live if i.instrument_name == "BTC-8MAR24-65000-C")
    assert info.creation == pd.Timestamp("2024-03-01 12:00", tz=UTC)
    assert info.expiration == pd.Timestamp("2024-03-08 08:00", tz=UTC)
    assert (
        info.strike == 65000.0 and info.option_type == "call" and info.instrument_type == "reversed"
    )


def test_delivery_prices_paginate(deribit_server: DeribitServer, client: DeribitClient) -> None:
    table = client.get_delivery_prices("btc_usd", page_size=2)
    assert deribit_server.count("public/get_delivery_prices") == 3
    offsets = [p["offset"] for m, p in deribit_server.requests if m == "public/get_delivery_prices"]
    assert offsets == ["0", "2", "4"]
    assert table["date"].is_monotonic_increasing and len(table) == 5
    assert table.set_index("date").loc["2024-03-02", "delivery_price"].item() == 62431.02


def test_recorded_delivery_page(deribit_server: DeribitServer, client: DeribitClient) -> None:
    deribit_server.fail(
        "public/get_delivery_prices", Fault(body=_recorded("get_delivery_prices_page.json"))
    )
    table = client.get_delivery_prices("btc_usd")
    assert table["delivery_price"].tolist() == [61754.88, 62431.02]


def test_volatility_index_follows_continuation(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    dvol = client.get_volatility_index_data("BTC", START, START + pd.Timedelta(hours=9))
    assert len(dvol) == 10 and dvol.index.is_monotonic_increasing
    assert deribit_server.count("public/get_volatility_index_data") == 4  # pages of 3
    assert dvol["close"].iloc[0] == 60.5 and dvol["close"].iloc[-1] == 69.5
    ends = [
        int(p["end_timestamp"])
        for m, p in deribit_server.requests
        if m == "public/get_volatility_index_data"
    ]
    assert ends == sorted(ends, reverse=True)


def test_last_trades_follow_has_more_without_duplicates(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    trades = client.get_last_trades_by_instrument_and_time(
        "BTC-2MAR24-62000-C", START, START + pd.Timedelta(hours=1), count=3
    )
    assert trades["trade_id"].tolist() == [f"BTC-{9000 + i}" for i in range(7)]
    assert trades["timestamp"].is_monotonic_increasing
    assert deribit_server.count("public/get_last_trades_by_instrument_and_time") >= 3
    assert trades["iv"].iloc[0] == 59.9


def test_last_trades_page_of_one_millisecond_does_not_loop(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    # Two trades share each millisecond; pages of one force the cursor past a full page.
    trades = client.get_last_trades_by_instrument_and_time(
        "BTC-2MAR24-62000-C", START, START + pd.Timedelta(hours=1), count=1
    )
    assert len(trades) >= 4  # may skip a same-millisecond twin, never loops
    assert deribit_server.count("public/get_last_trades_by_instrument_and_time") < 20


def test_index_price(client: DeribitClient) -> None:
    price = client.get_index_price("btc_usd")
    assert price.index_price == 62104.27 and price.estimated_delivery_price == 62104.27


# ---------------------------------------------------------------- errors, retries, rate limits


def test_rpc_error_names_code_message_and_request(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    with pytest.raises(DeribitAPIError) as err:
        client.get_index_price("nope_usd")
    assert err.value.code == -32602
    assert "Invalid params" in str(err.value) and "index_name=nope_usd" in str(err.value)
    assert "public/get_index_price" in str(err.value)
    assert deribit_server.count("public/get_index_price") == 1  # not retried
    assert isinstance(err.value, DataError)


def test_unknown_instrument_error(client: DeribitClient) -> None:
    with pytest.raises(DeribitAPIError, match="10020") as err:
        client.chart_candles("BTC-1JAN24-1-C", "2024-01-01", "2024-01-01 02:00", "1h")
    assert "BTC-1JAN24-1-C" in str(err.value)


def test_retries_on_429_503_and_too_many_requests(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    deribit_server.fail(
        "public/get_index_price",
        Fault(
            http_status=429, code=10028, message="too_many_requests", headers={"Retry-After": "0"}
        ),
        Fault(body=_recorded("error_too_many_requests.json")),
        Fault(http_status=503, raw_body="<html>Service Unavailable</html>"),
    )
    assert client.get_index_price("btc_usd").index_price == 62104.27
    assert deribit_server.count("public/get_index_price") == 4
    assert client.stats["retries"] == 3


def test_retries_on_timeout(deribit_server: DeribitServer, deribit_client_factory) -> None:
    client = deribit_client_factory(timeout=0.2)
    deribit_server.fail("public/get_index_price", Fault(delay=0.6))
    assert client.get_index_price("btc_usd").index_price == 62104.27
    assert client.stats["retries"] == 1


def test_retries_give_up_with_the_deribit_error(
    deribit_server: DeribitServer, deribit_client_factory
) -> None:
    client = deribit_client_factory(max_attempts=3)
    deribit_server.fail(
        "public/get_index_price",
        *[Fault(http_status=429, code=10028, message="too_many_requests") for _ in range(5)],
    )
    with pytest.raises(TransientDeribitError, match="10028: too_many_requests") as err:
        client.get_index_price("btc_usd")
    assert err.value.code == 10028 and err.value.http_status == 429
    assert deribit_server.count("public/get_index_price") == 3


def test_non_json_error_page_is_reported(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    deribit_server.fail(
        "public/get_index_price", Fault(http_status=404, raw_body="<html>not here</html>")
    )
    with pytest.raises(DeribitAPIError, match="HTTP 404"):
        client.get_index_price("btc_usd")


def test_malformed_chart_arrays_are_rejected(
    deribit_server: DeribitServer, client: DeribitClient
) -> None:
    body = _recorded("tradingview_chart_data_option_1h.json")
    body["result"]["close"] = body["result"]["close"][:2]
    deribit_server.fail("public/get_tradingview_chart_data", Fault(body=body))
    with pytest.raises(DeribitAPIError, match="different lengths"):
        client.get_tradingview_chart_data("BTC-2MAR24-62000-C", START, START, "60")


def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(rate=10.0, burst=3, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.acquire()
    assert slept == []  # the burst is free
    limiter.acquire()
    limiter.acquire()
    assert slept == pytest.approx([0.1, 0.1])
    now[0] += 10.0  # refill caps at the burst
    for _ in range(3):
        limiter.acquire()
    assert len(slept) == 2


def test_client_is_rate_limited_against_the_server(deribit_server: DeribitServer) -> None:
    with DeribitClient(deribit_server.base_url, requests_per_second=20.0, burst=1) as c:
        t0 = time.perf_counter()
        for _ in range(5):
            c.get_index_price("btc_usd")
        assert time.perf_counter() - t0 >= 0.19


# ---------------------------------------------------------------- disk cache


def test_history_is_cached_and_live_data_is_not(
    deribit_server: DeribitServer, tmp_path: Path
) -> None:
    with DeribitClient(deribit_server.base_url, cache_dir=str(tmp_path / "c")) as c:
        a = c.chart_candles("BTC-PERPETUAL", "2024-03-01", "2024-03-01 05:00", "1h")
        c.get_index_price("btc_usd")
    with DeribitClient(deribit_server.base_url, cache_dir=str(tmp_path / "c")) as c:
        b = c.chart_candles("BTC-PERPETUAL", "2024-03-01", "2024-03-01 05:00", "1h")
        c.get_index_price("btc_usd")
        assert c.stats["cache_hits"] == 1
    pd.testing.assert_frame_equal(a, b)
    assert deribit_server.count("public/get_tradingview_chart_data") == 1
    assert deribit_server.count("public/get_index_price") == 2


def test_recent_window_is_not_cached(deribit_server: DeribitServer, tmp_path: Path) -> None:
    now = pd.Timestamp("2024-03-01 05:05", tz=UTC)  # the 05:00 bar may still be open
    for _ in range(2):
        with DeribitClient(
            deribit_server.base_url, cache_dir=str(tmp_path / "c"), now=lambda: now
        ) as c:
            c.chart_candles("BTC-PERPETUAL", "2024-03-01", "2024-03-01 05:00", "1h")
    assert deribit_server.count("public/get_tradingview_chart_data") == 2


# ---------------------------------------------------------------- the data source


@pytest.fixture
def source(client: DeribitClient) -> DeribitDataSource:
    return DeribitDataSource(client)


def test_source_implements_the_protocols(source: DeribitDataSource) -> None:
    assert isinstance(source, MarketDataSource)
    assert isinstance(source, BulkChainSource)
    assert isinstance(source, SettlementSource)


def test_chain_is_point_in_time_with_usd_prices_and_greeks(source: DeribitDataSource) -> None:
    as_of = pd.Timestamp("2024-03-01 03:00", tz=UTC)
    chain = source.list_option_chain("BTC", as_of)
    names = {s.instrument_name for s in chain}
    # Only the 62000 call traded in the bar (02:00, 03:00]; the put traded in (01:00, 02:00].
    assert names == {"BTC-2MAR24-62000-C"}
    snap = chain[0]
    f = perp_close(int((as_of - pd.Timedelta(hours=1)).value // 10**6))
    assert snap.underlying_price == f
    assert snap.mark_price == pytest.approx(snap.mark_price_coin * f)
    assert snap.bid_price is None and snap.ask_price is None  # never invented
    assert snap.mark_iv == pytest.approx(0.60, abs=0.02)  # the market was priced at 60% vol
    g = black76_greeks(f, 62000.0, year_fraction(as_of, snap.expiry), snap.mark_iv, True)
    assert snap.delta == pytest.approx(float(g.delta)) and snap.vega == pytest.approx(float(g.vega))
    assert snap.as_of == as_of


def test_chain_never_uses_data_after_as_of(source: DeribitDataSource) -> None:
    # 02:59 is inside the bar closing at 03:00: that bar is not known yet.
    chain = source.list_option_chain("BTC", "2024-03-01 02:59")
    assert {s.instrument_name for s in chain} == {"BTC-2MAR24-62000-C", "BTC-2MAR24-58000-P"}
    assert all(s.mark_price_coin in (0.0161, 0.0003) for s in chain)


def test_listing_and_expiry_are_respected(source: DeribitDataSource) -> None:
    before = {s.instrument_name for s in source.list_option_chain("BTC", "2024-03-01 12:00")}
    after = {s.instrument_name for s in source.list_option_chain("BTC", "2024-03-01 13:00")}
    assert "BTC-8MAR24-65000-C" not in before and "BTC-8MAR24-65000-C" in after
    late = source.chain_frame("BTC", pd.DatetimeIndex(["2024-03-02 09:00"], tz=UTC))
    assert not any("2MAR24" in name for name in late["instrument_name"])


def test_sparse_trading_is_gated_and_counted(source: DeribitDataSource) -> None:
    times = pd.date_range("2024-03-01 01:00", "2024-03-01 23:00", freq="h", tz=UTC)
    frame = source.chain_frame("BTC", times)
    assert list(frame.columns) == list(CHAIN_COLUMNS)
    counts = source.gate_counts
    assert counts["bars_without_trades"] > 0
    assert counts["options_without_candles"] >= 1  # BTC-29MAR24-70000-C never traded
    assert counts["linear_skipped"] >= 1
    assert counts["no_implied_vol"] == 1  # the bar priced under intrinsic value
    assert counts["stale"] > 0
    # Nothing invented: every row is a traded bar.
    assert frame["bid_price"].isna().all() and frame["mark_iv"].notna().all()
    assert not (
        (frame["instrument_name"] == "BTC-2MAR24-62000-C") & (frame["as_of"] == "2024-03-01 21:00")
    ).any()


def test_option_marks_and_ohlc(source: DeribitDataSource) -> None:
    times = pd.DatetimeIndex(["2024-03-01 02:00", "2024-03-01 03:00", "2024-03-01 04:00"], tz=UTC)
    marks = source.option_marks(
        ["BTC-2MAR24-62000-C", "BTC-2MAR24-58000-P", "BTC-1MAR24-1-C"], times
    )
    assert marks.shape == (3, 3)
    assert np.isfinite(marks[0, :2]).all() and np.isnan(marks[0, 2])  # no trade in (03:00, 04:00]
    assert np.isfinite(marks[1, 0]) and np.isnan(marks[1, 1])
    assert np.isnan(marks[2]).all()
    ohlc = source.get_option_ohlc(
        "BTC-2MAR24-62000-C", "2024-03-01 01:00", "2024-03-01 03:00", "1h"
    )
    spot = source.get_spot_ohlc("BTC", "2024-03-01 01:00", "2024-03-01 03:00", "1h")
    assert list(ohlc.columns) == ["open", "high", "low", "close", "volume"]
    assert ohlc["close"].iloc[-1] == pytest.approx(0.0181 * spot["close"].iloc[-1])


def test_settlement_from_delivery_prices(source: DeribitDataSource) -> None:
    assert source.settlement_price("BTC", pd.Timestamp("2024-03-02 08:00", tz=UTC)) == 62431.02
    assert source.settlement_price("BTC", pd.Timestamp("2024-05-02 08:00", tz=UTC)) is None


def test_candles_to_chain_gates_missing_spot() -> None:
    spec = parse_instrument_name("BTC-2MAR24-62000-C")
    idx = pd.date_range("2024-03-01 01:00", periods=3, freq="h", tz=UTC)
    candles = pd.DataFrame(
        {
            "open": 0.02,
            "high": 0.02,
            "low": 0.02,
            "close": 0.02,
            "volume": [1.0, 1.0, 0.0],
            "cost": 0.0,
        },
        index=idx,
    )
    counts: Counter[str] = Counter()
    rows = candles_to_chain(spec, spec.name, candles, pd.Series([62000.0], index=idx[:1]), counts)
    assert len(rows) == 1 and counts["no_spot"] == 1 and counts["bars_without_trades"] == 1


# ---------------------------------------------------------------- fetch into the store


def test_fetch_writes_the_store_and_resumes_from_cache(
    deribit_server: DeribitServer, deribit_client_factory, tmp_path: Path
) -> None:
    out = tmp_path / "data"
    # The third option chart request fails hard: the fetch stops with the Deribit error.
    deribit_server.fail(
        "public/get_tradingview_chart_data",
        Fault(),
        Fault(),
        Fault(),
        Fault(http_status=400, code=11050, message="bad_request"),
    )
    kwargs = {
        "base_url": deribit_server.base_url,
        "history_url": deribit_server.history_url,
        "progress": False,
        "requests_per_second": 1000.0,
    }
    with pytest.raises(DeribitAPIError, match="11050"):
        fetch_deribit("BTC", "2024-03-01 01:00", "2024-03-02 00:00", "1h", out, **kwargs)
    assert not (out / "BTC" / "chain").exists()  # nothing half-written
    first_run = deribit_server.count("public/get_tradingview_chart_data")
    deribit_server.reset()
    summary = fetch_deribit("BTC", "2024-03-01 01:00", "2024-03-02 00:00", "1h", out, **kwargs)
    # The chart requests that succeeded before came from the disk cache ...
    assert summary.counts["cache_hits"] == first_run - 1
    deribit_server.reset()
    again = fetch_deribit("BTC", "2024-03-01 01:00", "2024-03-02 00:00", "1h", out, **kwargs)
    # ... and a complete fetch is entirely cached: only live lists are asked again.
    assert deribit_server.count("public/get_tradingview_chart_data") == 0
    assert again.rows_written == summary.rows_written
    assert summary.rows_written > 24 and summary.gaps == ()
    assert "bars_without_trades" in summary.counts and summary.counts["linear_skipped"] >= 1
    store = FileDataSource(out)
    assert store.chain_timeframe("BTC") == "1h"
    spot = store.get_spot_ohlc("BTC", "2024-03-01 01:00", "2024-03-02 00:00", "1h")
    assert len(spot) == 24
    live = DeribitDataSource(deribit_client_factory())
    times = pd.date_range("2024-03-01 01:00", "2024-03-02 00:00", freq="h", tz=UTC)
    from_store = store.chain_frame("BTC", times)
    from_api = live.chain_frame("BTC", times)
    pd.testing.assert_frame_equal(from_store, from_api)
    assert store.settlement_price("BTC", pd.Timestamp("2024-03-02 08:00", tz=UTC)) == 62431.02
    assert (
        "(perpetual as spot proxy)"
        in json.loads((out / "BTC" / "meta.json").read_text())["spot_source"]
    )


def test_coarse_bars_convert_each_trade_at_its_own_hour(client: DeribitClient) -> None:
    # A 4h bar's last trade can be hours before the close; it is read from 1h candles and
    # converted at the spot of its own hour, so the implied vol stays the market's 60%.
    source = DeribitDataSource(client, timeframe="4h")
    times = pd.date_range("2024-03-01 04:00", "2024-03-01 16:00", freq="4h", tz=UTC)
    frame = source.chain_frame("BTC", times)
    calls = frame[frame["instrument_name"] == "BTC-2MAR24-62000-C"]
    assert len(calls) == 3
    assert calls["mark_iv"].to_numpy() == pytest.approx(0.60, abs=0.01)
    # The 04:00 bar's last trade closed the 03:00 hour: priced at that hour's spot.
    first = calls.iloc[0]
    assert first["underlying_price"] == perp_close(
        int((START + pd.Timedelta(hours=2)).value // 10**6)
    )
    daily = DeribitDataSource(client, timeframe="1d").chain_frame(
        "BTC", pd.DatetimeIndex(["2024-03-02"], tz=UTC)
    )
    assert set(daily["instrument_name"]) == {
        "BTC-2MAR24-58000-P",
        "BTC-2MAR24-62000-C",
        "BTC-8MAR24-65000-C",
    }
