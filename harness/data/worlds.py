"""Worlds of the synthetic market: the model parameters behind each `SyntheticMarket(world=...)`.

`realistic` is the default market (stochastic volatility, jumps, a variance risk premium,
skew, levels tied loosely to history). `placebo` and `rich_premium` are calibration worlds
with a known answer: in `placebo` no policy has an edge (the price is a martingale and options
are priced at the true volatility), in `rich_premium` selling has a known positive edge (a
constant variance risk premium). docs/synthetic_market.md states each world's exact model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from harness.coins import coin

Anchor = Literal["historical", "none"]
ANCHORS: tuple[str, ...] = ("historical", "none")


@dataclass(frozen=True)
class CoinParams:
    """Model parameters of one synthetic underlying (vols are annualized fractions)."""

    code: int  # enters the random seed so coins get independent paths
    year_start_prices: dict[int, float]  # approximate USD level on Jan 1 of each year
    mean_vol: float  # long-run mean of the realized-vol state
    vol_of_vol: float  # volatility of log-vol, annualized
    vol_mean_reversion: float  # speed of log-vol mean reversion, per year
    jumps_per_year: float
    jump_mean: float  # mean log jump size
    jump_std: float  # std of log jump size
    base_volume: float  # spot volume per minute, coins


@dataclass(frozen=True)
class SurfaceParams:
    """Implied-volatility surface and quoting parameters shared by all coins."""

    vrp_ratio: float = 0.08  # ATM IV = vol state * (1 + vrp_ratio) + vrp_add
    vrp_add: float = 0.03
    variance_premium: float = 0.0  # then ATM IV = sqrt(IV^2 + variance_premium), per year
    term_decay_days: float = 30.0  # short-end IV relaxes to the long-run level on this scale
    skew: float = -0.035  # smile slope per unit standardized log-moneyness
    curvature: float = 0.035  # smile convexity per unit standardized log-moneyness squared
    half_spread_vol: float = 0.006  # bid/ask half-spread in vol at the money
    half_spread_vol_per_x: float = 0.008  # extra half-spread per unit |standardized moneyness|
    min_vol: float = 0.05


# Approximate Jan-1 spot levels (USD), public knowledge, rounded. Years past the table hold
# the last level. With `anchor: historical` the path drifts toward them without touching them.
BTC_LEVELS = {
    2018: 13_400.0,
    2019: 3_700.0,
    2020: 7_200.0,
    2021: 29_000.0,
    2022: 46_300.0,
    2023: 16_600.0,
    2024: 42_300.0,
    2025: 93_400.0,
    2026: 90_000.0,
    2027: 95_000.0,
}
ETH_LEVELS = {
    2018: 750.0,
    2019: 133.0,
    2020: 129.0,
    2021: 730.0,
    2022: 3_680.0,
    2023: 1_200.0,
    2024: 2_280.0,
    2025: 3_330.0,
    2026: 3_000.0,
    2027: 3_200.0,
}

# Linear USDC coins (harness.coins). Levels are approximate Jan-1 prices, like BTC's and ETH's;
# before a coin traded, a level of its first traded year stands in (the market is synthetic).
SOL_LEVELS = {
    2018: 1.0,
    2019: 1.0,
    2020: 1.0,
    2021: 1.5,
    2022: 170.0,
    2023: 10.0,
    2024: 100.0,
    2025: 190.0,
    2026: 180.0,
    2027: 190.0,
}
XRP_LEVELS = {
    2018: 2.3,
    2019: 0.36,
    2020: 0.19,
    2021: 0.22,
    2022: 0.83,
    2023: 0.34,
    2024: 0.62,
    2025: 2.10,
    2026: 2.00,
    2027: 2.10,
}
MATIC_LEVELS = {
    2018: 0.004,
    2019: 0.004,
    2020: 0.015,
    2021: 0.018,
    2022: 2.50,
    2023: 0.76,
    2024: 0.97,
    2025: 0.45,
    2026: 0.40,
    2027: 0.42,
}
# DOGE: Deribit lists no DOGE options; this coin is hypothetical (harness.coins says so).
DOGE_LEVELS = {
    2018: 0.009,
    2019: 0.002,
    2020: 0.002,
    2021: 0.0047,
    2022: 0.17,
    2023: 0.07,
    2024: 0.09,
    2025: 0.32,
    2026: 0.30,
    2027: 0.31,
}


def _altcoin(code: int, symbol: str, levels: dict[int, float], base_volume: float) -> CoinParams:
    """Dynamics of a linear altcoin: its registry volatility, more jumps than BTC/ETH."""
    return CoinParams(
        code=code,
        year_start_prices=levels,
        mean_vol=coin(symbol).synthetic.mean_vol,
        vol_of_vol=1.3,
        vol_mean_reversion=10.0,
        jumps_per_year=26.0,
        jump_mean=-0.004,
        jump_std=0.04,
        base_volume=base_volume,
    )


REALISTIC_COINS: dict[str, CoinParams] = {
    "BTC": CoinParams(
        code=1,
        year_start_prices=BTC_LEVELS,
        mean_vol=0.55,
        vol_of_vol=1.1,
        vol_mean_reversion=10.0,
        jumps_per_year=18.0,
        jump_mean=-0.002,
        jump_std=0.025,
        base_volume=8.0,
    ),
    "ETH": CoinParams(
        code=2,
        year_start_prices=ETH_LEVELS,
        mean_vol=0.70,
        vol_of_vol=1.2,
        vol_mean_reversion=10.0,
        jumps_per_year=22.0,
        jump_mean=-0.003,
        jump_std=0.03,
        base_volume=90.0,
    ),
    "SOL": _altcoin(3, "SOL", SOL_LEVELS, base_volume=2_000.0),
    "XRP": _altcoin(4, "XRP", XRP_LEVELS, base_volume=400_000.0),
    "MATIC": _altcoin(6, "MATIC", MATIC_LEVELS, base_volume=300_000.0),
    "DOGE": _altcoin(5, "DOGE", DOGE_LEVELS, base_volume=3_000_000.0),
}

# `anchor: historical`: each year's expected log return pulls the path fully back toward
# the documented level, so levels stay era-like without ever being pinned to a known price.
ANCHOR_PULL = 1.0


def _constant_vol(coins: Mapping[str, CoinParams]) -> dict[str, CoinParams]:
    """The same coins with constant volatility (at their mean) and no jumps."""
    return {
        k: replace(c, vol_of_vol=0.0, jumps_per_year=0.0, jump_mean=0.0, jump_std=0.0)
        for k, c in coins.items()
    }


FLAT_SURFACE = SurfaceParams(vrp_ratio=0.0, vrp_add=0.0, skew=0.0, curvature=0.0)
RICH_VARIANCE_PREMIUM = 0.10  # implied minus true variance, per year (BTC 55% -> IV 63.4%)


@dataclass(frozen=True)
class World:
    """One synthetic world: coin dynamics, the implied-vol surface and the default anchor."""

    name: str
    coins: dict[str, CoinParams]
    surface: SurfaceParams
    anchor: Anchor
    anchors_allowed: tuple[str, ...]
    description: str


WORLDS: Mapping[str, World] = {
    "realistic": World(
        name="realistic",
        coins=REALISTIC_COINS,
        surface=SurfaceParams(),
        anchor="historical",
        anchors_allowed=ANCHORS,
        description="stochastic vol, jumps, variance risk premium, skew; era-like levels",
    ),
    "placebo": World(
        name="placebo",
        coins=_constant_vol(REALISTIC_COINS),
        surface=FLAT_SURFACE,
        anchor="none",
        anchors_allowed=("none",),
        description="martingale price, constant vol, no jumps, flat IV = true vol: no edge",
    ),
    "rich_premium": World(
        name="rich_premium",
        coins=_constant_vol(REALISTIC_COINS),
        surface=replace(FLAT_SURFACE, variance_premium=RICH_VARIANCE_PREMIUM),
        anchor="none",
        anchors_allowed=("none",),
        description=(
            f"placebo with implied variance = true variance + {RICH_VARIANCE_PREMIUM}: "
            "selling calls has a known positive edge"
        ),
    ),
}


def get_world(name: str) -> World:
    """The world called `name`; unknown names list the known ones."""
    try:
        return WORLDS[name]
    except KeyError:
        raise ValueError(
            f"unknown synthetic world {name!r}; known worlds: {', '.join(WORLDS)}"
        ) from None
