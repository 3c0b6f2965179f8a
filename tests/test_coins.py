"""The coin registry: one entry per coin, its names, lots and fees."""

from __future__ import annotations

import pytest

from harness.coins import (
    COINS,
    UnknownCoinError,
    coin,
    coin_of_instrument_underlying,
    is_listed_style,
)
from harness.instruments import format_instrument_name, parse_instrument_name


def test_inverse_and_linear_coins_name_their_products() -> None:
    btc, sol = coin("btc"), coin("SOL")
    assert (btc.settlement, btc.instrument_prefix, btc.currency) == ("inverse", "BTC", "BTC")
    assert (btc.spot_instrument, btc.index_name) == ("BTC-PERPETUAL", "btc_usd")
    assert (sol.settlement, sol.instrument_prefix, sol.currency) == ("linear", "SOL_USDC", "USDC")
    assert (sol.spot_instrument, sol.index_name) == ("SOL_USDC-PERPETUAL", "sol_usdc")
    assert coin("SOL_USDC") is sol


def test_multipliers_and_lots_follow_deribit() -> None:
    # Deribit: SOL 10, XRP 1,000, MATIC 1,000 coins per contract; BTC options trade in 0.1 BTC.
    assert {s: c.contract_multiplier for s, c in COINS.items() if c.settlement == "linear"} == {
        "SOL": 10.0,
        "XRP": 1_000.0,
        "MATIC": 1_000.0,
        "DOGE": 1_000.0,
    }
    assert coin("BTC").lot_size == 0.1
    assert coin("SOL").lot_size == 10.0


def test_fee_schedules_differ_by_settlement_style() -> None:
    # Deribit fee table: BTC/ETH options 0.03% of the underlying; USDC linear 0.05% taker.
    assert coin("BTC").fees.taker_rate == 0.0003 and coin("ETH").fees.taker_rate == 0.0003
    assert coin("SOL").fees.taker_rate == 0.0005 and coin("SOL").fees.maker_rate == 0.0001
    assert all(c.fees.cap_share == 0.125 for c in COINS.values())


def test_doge_is_hypothetical_and_says_so() -> None:
    doge = coin("DOGE")
    assert doge.listed_since is None and doge.synthetic.hypothetical
    assert "HYPOTHETICAL" in doge.source
    assert not any(c.synthetic.hypothetical for s, c in COINS.items() if s != "DOGE")


def test_unknown_coin_is_a_one_line_error() -> None:
    with pytest.raises(UnknownCoinError) as err:
        coin("PEPE")
    assert "\n" not in str(err.value) and "known: BTC, ETH, SOL" in str(err.value)


@pytest.mark.parametrize(
    ("name", "coin_symbol", "style", "listed"),
    [
        ("SOL_USDC-29MAR24-200-C", "SOL", "linear", True),
        ("MATIC_USDC-9MAR24-1d02-C", "MATIC", "linear", True),
        ("XRP_USDC-29MAR24-0d6-C", "XRP", "linear", True),
        ("BTC-29MAR24-70000-C", "BTC", "inverse", True),
        ("BTC_USDC-29MAR24-70000-C", "BTC", "linear", False),
    ],
)
def test_names_map_to_coins_and_round_trip(
    name: str, coin_symbol: str, style: str, listed: bool
) -> None:
    spec = parse_instrument_name(name)
    assert coin_of_instrument_underlying(spec.underlying) == (coin_symbol, style)
    assert is_listed_style(coin_symbol, spec.underlying) is listed
    assert format_instrument_name(spec.underlying, spec.expiry, spec.strike, spec.kind) == name


def test_config_takes_lots_and_fees_from_the_coin() -> None:
    from harness.types import CallSimulationConfig

    btc = CallSimulationConfig(underlying="btc", start="2024-01-01", end="2024-02-01")
    assert (btc.contract_size, btc.fee_rate, btc.delivery_fee_rate) == (0.1, 0.0003, 0.00015)
    sol = CallSimulationConfig(
        underlying="SOL", start="2024-04-01", end="2024-05-01", initial_spot_position=57.0
    )
    assert (sol.contract_size, sol.fee_rate) == (10.0, 0.0005)
    assert (sol.lots, sol.call_size) == (5, 50.0)  # 57 SOL -> five lots of 10, rounded down
    # 0.3 / 0.1 is 2.9999999999999996 in floating point: still three lots.
    odd = CallSimulationConfig(
        underlying="BTC", start="2024-01-01", end="2024-02-01", initial_spot_position=0.3
    )
    assert (odd.lots, odd.call_size) == (3, pytest.approx(0.3))
    explicit = CallSimulationConfig(
        underlying="SOL", start="2024-04-01", end="2024-05-01", contract_size=1.0, fee_rate=0.0
    )
    assert (explicit.contract_size, explicit.fee_rate) == (1.0, 0.0)


def test_config_rejects_sizes_below_a_lot_unknown_coins_and_nonzero_rates() -> None:
    from pydantic import ValidationError

    from harness.types import CallSimulationConfig

    with pytest.raises(ValidationError, match=r"0.05 BTC .* below one lot of 0.1 BTC"):
        CallSimulationConfig(start="2024-01-01", end="2024-02-01", initial_spot_position=0.05)
    with pytest.raises(ValidationError, match="no coin 'PEPE'"):
        CallSimulationConfig(underlying="PEPE", start="2024-01-01", end="2024-02-01")
    with pytest.raises(ValidationError, match="only 0 is supported"):
        CallSimulationConfig(start="2024-01-01", end="2024-02-01", risk_free_rate=0.05)


def test_linear_fees_payoff_and_pnl_by_hand() -> None:
    import numpy as np

    from harness.engine.outcomes import call_payoff, delivery_fee, trading_fee

    sol = coin("SOL")
    # One SOL lot (10 SOL) of a 155 call sold at 2.00 USDC with the index at 150, settled at 160.
    fee = float(trading_fee(np.array(150.0), np.array(2.0), sol.fees.taker_rate, 0.125))
    assert fee == pytest.approx(0.075)  # min(0.0005 x 150, 12.5% x 2.00) per SOL
    payoff = float(call_payoff(np.array(160.0), np.array(155.0)))
    assert payoff == 5.0
    dfee = float(delivery_fee(np.array(160.0), np.array(payoff), sol.fees.delivery_rate, 0.125))
    assert dfee == pytest.approx(0.04)  # min(0.00025 x 160, 12.5% x 5.00) per SOL
    lot = sol.lot_size
    pnl_vs_hodl = lot * (2.0 - payoff) - lot * fee - lot * dfee
    assert pnl_vs_hodl == pytest.approx(-31.15)  # 10 x (2 - 5) - 0.75 - 0.40 USDC
    # A cheap option: the 12.5% cap binds (0.0005 x 150 = 0.075 > 12.5% x 0.40 = 0.05).
    assert float(trading_fee(np.array(150.0), np.array(0.4), 0.0005, 0.125)) == pytest.approx(0.05)
