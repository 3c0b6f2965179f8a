"""Tests for harness.instruments: Deribit option names."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.instruments import (
    MONTHS,
    InstrumentSpec,
    format_expiry_code,
    format_instrument_name,
    format_strike,
    parse_expiry_code,
    parse_instrument_name,
    parse_strike,
)


def _utc8(y: int, m: int, d: int) -> pd.Timestamp:
    return pd.Timestamp(year=y, month=m, day=d, hour=8, tz="UTC")


@pytest.mark.parametrize(
    ("name", "underlying", "expiry", "strike", "kind"),
    [
        ("BTC-27DEC24-60000-C", "BTC", _utc8(2024, 12, 27), 60000.0, "call"),
        ("ETH-5JUN20-310-P", "ETH", _utc8(2020, 6, 5), 310.0, "put"),
        ("BTC-5JUN20-9250-C", "BTC", _utc8(2020, 6, 5), 9250.0, "call"),
        ("MATIC_USDC-9MAR24-1d02-C", "MATIC_USDC", _utc8(2024, 3, 9), 1.02, "call"),
        ("XRP_USDC-28MAR25-0d625-C", "XRP_USDC", _utc8(2025, 3, 28), 0.625, "call"),
        ("BTC-25APR25-200000-P", "BTC", _utc8(2025, 4, 25), 200000.0, "put"),
    ],
)
def test_parse_and_format_examples(
    name: str, underlying: str, expiry: pd.Timestamp, strike: float, kind: str
) -> None:
    spec = parse_instrument_name(name)
    assert spec == InstrumentSpec(underlying=underlying, expiry=expiry, strike=strike, kind=kind)
    assert str(spec.expiry.tz) == "UTC"
    assert (spec.expiry.hour, spec.expiry.minute, spec.expiry.second) == (8, 0, 0)
    assert spec.is_call == (kind == "call")
    assert spec.name == name
    assert format_instrument_name(underlying, expiry, strike, kind) == name
    assert format_instrument_name(underlying, expiry, strike, kind[0].upper()) == name


def test_spec_is_frozen_with_slots() -> None:
    spec = parse_instrument_name("BTC-27DEC24-60000-C")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.strike = 1.0  # type: ignore[misc]
    assert not hasattr(spec, "__dict__")


def test_expiry_codes() -> None:
    assert format_expiry_code(_utc8(2024, 12, 27)) == "27DEC24"
    assert format_expiry_code(pd.Timestamp("2020-06-05")) == "5JUN20"
    assert format_expiry_code(datetime(2024, 3, 9, 8, tzinfo=UTC)) == "9MAR24"
    assert format_expiry_code(date(2030, 1, 1)) == "1JAN30"
    # Converted to UTC first: 03:00 New York in June is 07:00 UTC on the same date.
    assert format_expiry_code(pd.Timestamp("2020-06-05 03:00", tz="America/New_York")) == "5JUN20"
    assert parse_expiry_code("5JUN20") == pd.Timestamp("2020-06-05 08:00", tz="UTC")
    assert parse_expiry_code("29FEB24") == _utc8(2024, 2, 29)
    assert [parse_expiry_code(f"1{m}25").month for m in MONTHS] == list(range(1, 13))


def test_strike_format_and_parse() -> None:
    assert format_strike(60000.0) == "60000"
    assert format_strike(60000) == "60000"
    assert format_strike(1.02) == "1d02"
    assert format_strike(0.625) == "0d625"
    assert format_strike(0.1 + 0.2) == "0d3"  # float noise 0.30000000000000004 is dropped
    assert format_strike(1.0 + 1e-12) == "1"
    assert format_strike(2.5e-5) == "0d000025"
    assert parse_strike("60000") == 60000.0
    assert parse_strike("1d02") == 1.02
    assert parse_strike("0d625") == 0.625
    for bad in ("1.02", "", "d5", "1d", "-5", "1e5", "0", "0d0"):
        with pytest.raises(ValueError, match="strike"):
            parse_strike(bad)
    with pytest.raises(ValueError, match="'d'"):
        parse_strike("1.02")
    for bad_value in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strike"):
            format_strike(bad_value)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("BTC-PERPETUAL", "not an option"),
        ("BTC-27DEC24", "not an option"),
        ("BTC-27DEC24-60000", "missing the option kind"),
        ("BTC-27DEC24-60000-X", "kind 'X'"),
        ("BTC-27FOO24-60000-C", "unknown month 'FOO'"),
        ("BTC-27dec24-60000-C", "unknown month 'dec'"),
        ("BTC-31FEB24-60000-C", "day 31 does not exist in FEB 2024"),
        ("BTC-29FEB23-60000-C", "day 29 does not exist in FEB 2023"),
        ("BTC-0JAN24-60000-C", "day 0 does not exist"),
        ("BTC-27DEC2024-60000-C", "bad expiry code '27DEC2024'"),
        ("BTC-27DEC24-60000.5-C", "bad strike '60000.5'"),
        ("BTC-27DEC24--C", "bad strike ''"),
        ("btc-27DEC24-60000-C", "underlying 'btc'"),
        ("-27DEC24-60000-C", "underlying ''"),
        ("BTC-27DEC24-60000-C-X", "got 5"),
        ("", "not an option"),
    ],
)
def test_bad_names_raise_clear_errors(name: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_instrument_name(name)
    message = str(info.value)
    assert repr(name) in message
    assert fragment in message


def test_format_rejects_bad_inputs() -> None:
    expiry = _utc8(2024, 12, 27)
    with pytest.raises(ValueError, match="kind"):
        format_instrument_name("BTC", expiry, 60000.0, "straddle")
    with pytest.raises(ValueError, match="underlying"):
        format_instrument_name("BTC-X", expiry, 60000.0, "call")
    with pytest.raises(ValueError, match="2000-2099"):
        format_instrument_name("BTC", _utc8(2100, 1, 1), 60000.0, "call")


# ---------------------------------------------------------------- round-trip properties

underlyings = st.from_regex(r"[A-Z][A-Z0-9]{0,5}(_USDC)?", fullmatch=True)
expiry_dates = st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31))
# Strikes as Deribit lists them: whole numbers, or up to 4 decimals below 1000.
whole_strikes = st.integers(1, 2_000_000).map(float)
decimal_strikes = st.tuples(st.integers(0, 999), st.integers(1, 9999), st.integers(1, 4)).map(
    lambda t: round(t[0] + (t[1] % 10 ** t[2]) / 10 ** t[2], t[2]) or 0.5
)
strikes = st.one_of(whole_strikes, decimal_strikes)
kinds = st.sampled_from(["call", "put"])


@given(underlyings, expiry_dates, strikes, kinds)
def test_format_then_parse_round_trip(underlying: str, day: date, strike: float, kind: str) -> None:
    expiry = _utc8(day.year, day.month, day.day)
    name = format_instrument_name(underlying, expiry, strike, kind)
    spec = parse_instrument_name(name)
    assert spec == InstrumentSpec(underlying, expiry, strike, kind)  # type: ignore[arg-type]
    assert format_instrument_name(spec.underlying, spec.expiry, spec.strike, spec.kind) == name


canonical_names = st.builds(
    lambda u, d, k, c: f"{u}-{d.day}{MONTHS[d.month - 1]}{d.year % 100:02d}-{k}-{c}",
    underlyings,
    expiry_dates,
    st.one_of(
        st.from_regex(r"[1-9][0-9]{0,6}", fullmatch=True),
        st.from_regex(r"(0|[1-9][0-9]{0,3})d[0-9]{0,3}[1-9]", fullmatch=True),
    ),
    st.sampled_from("CP"),
)


@given(canonical_names)
def test_canonical_names_round_trip(name: str) -> None:
    assert parse_instrument_name(name).name == name
