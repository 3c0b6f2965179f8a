"""Memorization guard: show the model relative days and indexed prices instead of history.

A model that has read market history can recognise "BTC at 67,000 on 2024-03-14" and answer
from memory of what came next. With `anonymize: true` the prompt shows
- times as "day N, HH:MM UTC" counted in calendar days from the anchor (the run's start),
- prices as an index with spot = 100 at the anchor (`price / anchor_spot * 100`),
- strikes as moneyness (strike / current spot), expiries as days to expiry,
- candidates as aliases C1, C2, ... (real instrument names embed the expiry date and strike).
The model's answer names an alias, which `alias_map` maps back to the exact instrument.

This is a mitigation, not a proof: returns and volatility patterns can still be recognisable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from harness.timestamps import to_utc


@dataclass(frozen=True, slots=True)
class Anchor:
    """Reference point of the index: day 0 is `time`'s UTC date and `spot` (USD) is 100."""

    time: pd.Timestamp
    spot: float

    def __post_init__(self) -> None:
        if not self.spot > 0:
            raise ValueError(f"anchor spot must be > 0, got {self.spot!r}")
        object.__setattr__(self, "time", to_utc(self.time))


class PlainView:
    """Shows the decision as it is: UTC dates, USD prices, real instrument names."""

    anonymized = False
    price_unit = "USD"

    def time(self, value: datetime) -> str:
        """'YYYY-MM-DD HH:MM UTC'."""
        return to_utc(value).strftime("%Y-%m-%d %H:%M UTC")

    def price(self, usd: float | None) -> float | None:
        """USD price unchanged."""
        return usd

    def strike(self, usd: float) -> float | None:
        """Strike in USD."""
        return usd

    def alias(self, index: int, instrument_name: str) -> str:
        """The real instrument name."""
        return instrument_name


class AnonymizedView:
    """Relative days, prices indexed to the anchor spot, strikes hidden behind moneyness."""

    anonymized = True
    price_unit = "index points (spot = 100 on day 0)"

    def __init__(self, anchor: Anchor) -> None:
        self.anchor = anchor
        self._day0 = anchor.time.normalize()

    def time(self, value: datetime) -> str:
        """'day N, HH:MM UTC' with N calendar days after the anchor's date."""
        ts = to_utc(value)
        day = (ts.normalize() - self._day0).days
        return f"day {day}, {ts.strftime('%H:%M')} UTC"

    def price(self, usd: float | None) -> float | None:
        """USD price as index points (anchor spot = 100)."""
        return None if usd is None else usd / self.anchor.spot * 100.0

    def strike(self, usd: float) -> float | None:
        """Hidden: the template shows moneyness instead."""
        return None

    def alias(self, index: int, instrument_name: str) -> str:
        """'C1', 'C2', ... by position in the candidate list."""
        return f"C{index + 1}"


View = PlainView | AnonymizedView
