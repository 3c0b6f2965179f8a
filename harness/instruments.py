"""Deribit option instrument names: parsing and formatting.

An option name is ``UNDERLYING-DMMMYY-STRIKE-K``, for example ``BTC-27DEC24-60000-C``,
``ETH-5JUN20-310-P`` or ``MATIC_USDC-9MAR24-1d02-C``:

- UNDERLYING is upper-case letters and digits, optionally ``_``-joined (linear options are
  ``<COIN>_USDC``);
- the expiry code is the day without a leading zero, the upper-case English month abbreviation
  and a two-digit year in 2000-2099; the option expires at 08:00 UTC on that date;
- the strike uses ``d`` as its decimal point (``1d02`` = 1.02) and has no decimals when whole;
- the kind is ``C`` (call) or ``P`` (put).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

import pandas as pd

from harness.timestamps import TimestampLike, to_utc

OptionKindName = Literal["call", "put"]

MONTHS: tuple[str, ...] = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)
_MONTH_NUMBER = {m: i + 1 for i, m in enumerate(MONTHS)}
EXPIRY_HOUR_UTC = 8
# Rounding to 8 decimals removes binary float noise (0.1 + 0.2) without hiding real digits:
# Deribit strikes never have more than a few decimals.
_STRIKE_DECIMALS = 8

_UNDERLYING_RE = re.compile(r"[A-Z0-9]+(?:_[A-Z0-9]+)*")
_EXPIRY_RE = re.compile(r"(\d{1,2})([A-Za-z]{3})(\d{2})")
_STRIKE_RE = re.compile(r"\d+(?:d\d+)?")
_KIND_FROM_LETTER: dict[str, OptionKindName] = {"C": "call", "P": "put"}
_LETTER_FROM_KIND = {"call": "C", "put": "P", "c": "C", "p": "P"}


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """A Deribit option: underlying, expiry (tz-aware UTC, 08:00), strike and kind."""

    underlying: str
    expiry: pd.Timestamp
    strike: float
    kind: OptionKindName

    @property
    def name(self) -> str:
        """The canonical Deribit instrument name of this option."""
        return format_instrument_name(self.underlying, self.expiry, self.strike, self.kind)

    @property
    def is_call(self) -> bool:
        """True for a call, False for a put."""
        return self.kind == "call"


def parse_expiry_code(code: str) -> pd.Timestamp:
    """Parse a Deribit expiry code like ``5JUN20`` into its 08:00 UTC expiry Timestamp."""
    if not isinstance(code, str):
        raise ValueError(f"expiry code must be a string like '27DEC24', got {code!r}")
    m = _EXPIRY_RE.fullmatch(code)
    if m is None:
        raise ValueError(
            f"bad expiry code {code!r}: expected day, month, 2-digit year as '27DEC24'"
        )
    day_text, month_text, year_text = m.groups()
    month = _MONTH_NUMBER.get(month_text)
    if month is None:
        raise ValueError(
            f"bad expiry code {code!r}: unknown month {month_text!r}; "
            f"use one of {', '.join(MONTHS)} (upper case)"
        )
    year = 2000 + int(year_text)
    day = int(day_text)
    try:
        date(year, month, day)
    except ValueError:
        raise ValueError(
            f"bad expiry code {code!r}: day {day} does not exist in {month_text} {year}"
        ) from None
    return pd.Timestamp(year=year, month=month, day=day, hour=EXPIRY_HOUR_UTC, tz="UTC")


def format_expiry_code(expiry: TimestampLike) -> str:
    """Format an expiry as a Deribit expiry code like ``27DEC24`` (its UTC date)."""
    ts = to_utc(expiry)
    if not 2000 <= ts.year <= 2099:
        raise ValueError(f"expiry {ts} is outside 2000-2099, which a 2-digit year cannot name")
    return f"{ts.day}{MONTHS[ts.month - 1]}{ts.year % 100:02d}"


def parse_strike(text: str) -> float:
    """Parse a Deribit strike like ``60000`` or ``1d02`` (``d`` is the decimal point)."""
    if not isinstance(text, str) or _STRIKE_RE.fullmatch(text) is None:
        hint = " (Deribit writes the decimal point as 'd', e.g. '1d02')" if "." in str(text) else ""
        raise ValueError(f"bad strike {text!r}: expected digits with an optional 'd'{hint}")
    strike = float(text.replace("d", "."))
    if strike <= 0.0:
        raise ValueError(f"bad strike {text!r}: strike must be positive")
    return strike


def format_strike(strike: float) -> str:
    """Format a positive strike the Deribit way: ``60000``, ``1d02``, ``0d625``."""
    value = float(strike)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"strike must be a positive finite number, got {strike!r}")
    rounded = round(value, _STRIKE_DECIMALS)
    if rounded == int(rounded):
        return str(int(rounded))
    text = f"{rounded:.{_STRIKE_DECIMALS}f}".rstrip("0")
    return text.replace(".", "d")


def _kind_letter(kind: str) -> str:
    letter = _LETTER_FROM_KIND.get(kind.lower() if isinstance(kind, str) else kind)
    if letter is None:
        raise ValueError(f"option kind must be 'call', 'put', 'C' or 'P', got {kind!r}")
    return letter


def format_instrument_name(underlying: str, expiry: TimestampLike, strike: float, kind: str) -> str:
    """Build a Deribit option name like ``BTC-27DEC24-60000-C`` (kind: call/put or C/P)."""
    if not isinstance(underlying, str) or _UNDERLYING_RE.fullmatch(underlying) is None:
        raise ValueError(
            f"bad underlying {underlying!r}: expected upper-case letters/digits like "
            "'BTC' or 'MATIC_USDC'"
        )
    letter = _kind_letter(kind)
    return f"{underlying}-{format_expiry_code(expiry)}-{format_strike(strike)}-{letter}"


def parse_instrument_name(name: str) -> InstrumentSpec:
    """Parse a Deribit option name like ``BTC-27DEC24-60000-C`` into an InstrumentSpec."""
    if not isinstance(name, str):
        raise ValueError(f"instrument name must be a string, got {name!r}")
    parts = name.split("-")
    if len(parts) == 2 and parts[1] == "PERPETUAL":
        raise ValueError(f"{name!r} is a perpetual future, not an option")
    if len(parts) == 2:
        raise ValueError(
            f"{name!r} is not an option name (a future?): expected UNDERLYING-DMMMYY-STRIKE-C|P"
        )
    if len(parts) == 3:
        raise ValueError(f"{name!r} is missing the option kind: expected a final '-C' or '-P'")
    if len(parts) != 4:
        raise ValueError(
            f"{name!r} is not an option name: expected 4 '-'-separated parts "
            f"UNDERLYING-DMMMYY-STRIKE-C|P, got {len(parts)}"
        )
    underlying, expiry_code, strike_text, letter = parts
    if _UNDERLYING_RE.fullmatch(underlying) is None:
        raise ValueError(
            f"bad instrument name {name!r}: underlying {underlying!r} must be upper-case "
            "letters/digits, optionally joined by '_'"
        )
    kind = _KIND_FROM_LETTER.get(letter)
    if kind is None:
        raise ValueError(f"bad instrument name {name!r}: option kind {letter!r} must be 'C' or 'P'")
    try:
        expiry = parse_expiry_code(expiry_code)
        strike = parse_strike(strike_text)
    except ValueError as exc:
        raise ValueError(f"bad instrument name {name!r}: {exc}") from None
    return InstrumentSpec(underlying=underlying, expiry=expiry, strike=strike, kind=kind)
