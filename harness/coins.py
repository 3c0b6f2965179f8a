"""The coin registry: one entry per underlying, with how Deribit lists, quotes, settles and charges it.

Two settlement styles exist on Deribit:

- **inverse** (BTC, ETH): options are quoted and settled in the coin, one contract is one coin;
- **linear** (SOL, XRP, ... and `BTC_USDC`/`ETH_USDC`): options are quoted in USDC per one coin,
  cash-settled in USDC at the delivery price, and one contract is `contract_multiplier` coins.

Everything in the harness is in USD(C) per one coin either way (docs/simulator.md), so the
style matters for names, the Deribit/Tardis conversion (coin -> USD only for inverse quotes),
lot sizes and fees. Adding a coin is one `Coin` entry here plus tests; the synthetic market's
per-coin levels and volatility live in `synthetic` on the entry.

Where each number comes from is in `source` on the entry and in docs/data.md ("Coins").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Settlement = Literal["inverse", "linear"]

# Deribit's fee page (support.deribit.com "Fees", read 2026-12): BTC/ETH options 0.03% of the
# underlying per contract; USDC linear options 0.05% (taker) / 0.01% (maker) of the index price;
# both capped at 12.5% of the option price.
FEES_PAGE = "Deribit support article 'Fees' (trading fees table, options rows)"
# Deribit's historical fee rules: deliveries are charged half the taker fee (0.015% for BTC/ETH
# options, capped at 12.5% of the option's value).
DELIVERY_RULE = "Deribit fee docs: delivery = half the taker fee, capped at 12.5% of the value"


@dataclass(frozen=True)
class FeeSchedule:
    """Option fees as fractions of the underlying (index) price per coin, capped per coin."""

    taker_rate: float
    maker_rate: float
    delivery_rate: float
    cap_share: float = 0.125  # of the option price (trading) or of the payoff (delivery)
    source: str = FEES_PAGE


@dataclass(frozen=True)
class SyntheticCoin:
    """What the embedded synthetic market needs to simulate a coin (levels in USD)."""

    start_level: float  # price level around 2024-01-01, USD
    mean_vol: float  # long-run annualised volatility, fraction
    strike_step_share: float  # strike grid step as a share of spot (before rounding to a nice step)
    hypothetical: bool = False  # True when Deribit lists no options on it


@dataclass(frozen=True)
class Coin:
    """One underlying as Deribit trades it."""

    symbol: str  # the coin: BTC, ETH, SOL
    settlement: Settlement
    contract_multiplier: float  # coins per contract
    min_trade_amount: float  # contracts
    tick_size: float  # option price tick, in the quote currency (coin for inverse, USDC for linear)
    fees: FeeSchedule
    synthetic: SyntheticCoin
    listed_since: str | None  # first Deribit listing of these options (None: never listed)
    source: str = ""  # where the listing facts come from
    verified: tuple[str, ...] = field(default_factory=tuple)  # facts checked against real data

    @property
    def instrument_prefix(self) -> str:
        """Underlying part of option names: `BTC` (inverse) or `SOL_USDC` (linear)."""
        return self.symbol if self.settlement == "inverse" else f"{self.symbol}_USDC"

    @property
    def currency(self) -> str:
        """Deribit `currency` parameter that lists these options (`BTC`, or `USDC` for linear)."""
        return self.symbol if self.settlement == "inverse" else "USDC"

    @property
    def index_name(self) -> str:
        """Deribit index of the underlying price (delivery prices): `btc_usd` or `sol_usdc`."""
        quote = "usd" if self.settlement == "inverse" else "usdc"
        return f"{self.symbol.lower()}_{quote}"

    @property
    def spot_instrument(self) -> str:
        """The perpetual whose candles stand in for spot: `BTC-PERPETUAL`, `SOL_USDC-PERPETUAL`."""
        return f"{self.instrument_prefix}-PERPETUAL"

    @property
    def lot_size(self) -> float:
        """Smallest tradable amount of the option in coins (min trade amount x multiplier)."""
        return self.min_trade_amount * self.contract_multiplier

    @property
    def quoted_in_coin(self) -> bool:
        """True when Deribit quotes option prices in the coin (inverse), False for USDC."""
        return self.settlement == "inverse"


_LINEAR_FEES = FeeSchedule(taker_rate=0.0005, maker_rate=0.0001, delivery_rate=0.00025)
_INVERSE_FEES = FeeSchedule(taker_rate=0.0003, maker_rate=0.0003, delivery_rate=0.00015)
_LINEAR_SOURCE = (
    "Deribit support 'Linear USDC Options' and Deribit Insights 'New altcoin options "
    "(SOL, XRP, MATIC)' (March 2024): European, cash-settled in USDC, multipliers SOL 10, "
    "XRP 1,000, MATIC 1,000"
)

COINS: dict[str, Coin] = {
    "BTC": Coin(
        symbol="BTC",
        settlement="inverse",
        contract_multiplier=1.0,
        min_trade_amount=0.1,
        tick_size=0.0001,
        fees=_INVERSE_FEES,
        synthetic=SyntheticCoin(start_level=42_000.0, mean_vol=0.55, strike_step_share=0.0125),
        listed_since="2016-03",
        source="Deribit contract specifications; Tardis instrument record (amountIncrement 0.1)",
        verified=(
            "BTC-5JUN20-9250-C recorded ticker: mark 0.03847784 BTC and delta 0.62959 "
            "reproduced by Black-76 on the forward (tests/test_pricing.py)",
            "Tardis instrument BTC-25APR25-200000-P: inverse, amountIncrement 0.1, "
            "priceIncrement 0.0001, taker fee 0.0003",
        ),
    ),
    "ETH": Coin(
        symbol="ETH",
        settlement="inverse",
        contract_multiplier=1.0,
        min_trade_amount=1.0,
        tick_size=0.0001,
        fees=_INVERSE_FEES,
        synthetic=SyntheticCoin(start_level=2_300.0, mean_vol=0.70, strike_step_share=0.0125),
        listed_since="2019-03",
        source="Deribit contract specifications (min trade amount 1 ETH: not verified here)",
        verified=(
            "ETH-10JUN20-270-C recorded ticker: price, delta, vega and gamma reproduced "
            "(tests/test_pricing.py; Deribit's theta differs)",
        ),
    ),
    "SOL": Coin(
        symbol="SOL",
        settlement="linear",
        contract_multiplier=10.0,
        min_trade_amount=1.0,
        tick_size=0.01,
        fees=_LINEAR_FEES,
        synthetic=SyntheticCoin(start_level=100.0, mean_vol=0.85, strike_step_share=0.025),
        listed_since="2024-03",
        source=_LINEAR_SOURCE,
        verified=("multiplier 10 and USDC settlement: Deribit's own documentation",),
    ),
    "XRP": Coin(
        symbol="XRP",
        settlement="linear",
        contract_multiplier=1_000.0,
        min_trade_amount=1.0,
        tick_size=0.0001,
        fees=_LINEAR_FEES,
        synthetic=SyntheticCoin(start_level=0.60, mean_vol=0.80, strike_step_share=0.025),
        listed_since="2024-03",
        source=_LINEAR_SOURCE,
        verified=("multiplier 1,000 and USDC settlement: Deribit's own documentation",),
    ),
    "MATIC": Coin(
        symbol="MATIC",
        settlement="linear",
        contract_multiplier=1_000.0,
        min_trade_amount=1.0,
        tick_size=0.0001,
        fees=_LINEAR_FEES,
        synthetic=SyntheticCoin(start_level=0.90, mean_vol=0.90, strike_step_share=0.025),
        listed_since="2024-03",
        source=_LINEAR_SOURCE,
        verified=(
            "MATIC_USDC-9MAR24-1d02-C recorded ticker: quoted in USDC per 1 MATIC on "
            "underlying index_price 1.1367; mark 0.139 and delta 0.7869 reproduced by Black-76 "
            "(tests/test_pricing.py)",
        ),
    ),
    "DOGE": Coin(
        symbol="DOGE",
        settlement="linear",
        contract_multiplier=1_000.0,
        min_trade_amount=1.0,
        tick_size=0.0001,
        fees=_LINEAR_FEES,
        synthetic=SyntheticCoin(
            start_level=0.09, mean_vol=0.95, strike_step_share=0.025, hypothetical=True
        ),
        listed_since=None,
        source="HYPOTHETICAL: Deribit lists no DOGE options; modelled like the linear altcoins",
    ),
}


class UnknownCoinError(ValueError):
    """An underlying that is not in the coin registry."""


def coin(symbol: str) -> Coin:
    """The registry entry of `symbol` (case-insensitive); a one-line error names the known coins."""
    key = symbol.upper().removesuffix("_USDC")
    try:
        return COINS[key]
    except KeyError:
        raise UnknownCoinError(
            f"no coin {symbol!r} in the registry; known: {', '.join(COINS)}"
        ) from None


def coin_of_instrument_underlying(prefix: str) -> tuple[str, Settlement]:
    """(coin, settlement) of an option name's underlying part: `SOL_USDC` -> (`SOL`, linear)."""
    prefix = prefix.upper()
    if prefix.endswith("_USDC"):
        return prefix.removesuffix("_USDC"), "linear"
    return prefix, "inverse"


def is_listed_style(symbol: str, instrument_prefix: str) -> bool:
    """True when an option of `instrument_prefix` is the style the registry trades for `symbol`.

    BTC runs use the inverse `BTC-...` options; `BTC_USDC-...` linear ones exist on Deribit too
    but are a different product, so a BTC run leaves them out (and counts them).
    """
    return coin(symbol).instrument_prefix == instrument_prefix.upper()


def listing_note(symbol: str) -> str | None:
    """A caveat to print next to a coin's chain: None for listed coins, a warning for hypothetical."""
    c = coin(symbol)
    if c.synthetic.hypothetical:
        return (
            f"HYPOTHETICAL: Deribit lists no {c.symbol} options; this chain exists only in the "
            "synthetic market (modelled like the linear USDC altcoins)"
        )
    return None
