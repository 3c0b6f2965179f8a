"""Linear USDC coins end to end: the synthetic SOL/XRP/DOGE markets, lots, fees and accounting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.coins import coin
from harness.data import SyntheticMarket
from harness.instruments import parse_instrument_name
from harness.policies import always_sell
from harness.pricing import black76_price, year_fraction
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2024-06-07T08:00Z"


@pytest.fixture(scope="module")
def alt_market() -> SyntheticMarket:
    return SyntheticMarket(seed=7)


@pytest.mark.parametrize("symbol", ["SOL", "XRP", "DOGE"])
def test_synthetic_linear_chain_uses_usdc_names_and_ticks(
    alt_market: SyntheticMarket, symbol: str
) -> None:
    chain = alt_market.list_option_chain(symbol, AS_OF)
    assert chain, symbol
    tick = coin(symbol).tick_size
    for o in chain[:: max(1, len(chain) // 50)]:
        spec = parse_instrument_name(o.instrument_name)
        assert spec.underlying == f"{symbol}_USDC" and o.underlying == symbol
        # Quoted in USDC per coin: the bid sits on the USDC tick, not on a coin tick.
        if o.bid_price is not None:
            assert abs(o.bid_price / tick - round(o.bid_price / tick)) < 1e-6
            assert o.bid_price_coin == pytest.approx(o.bid_price / o.underlying_price)
        t = float(year_fraction(o.as_of, o.expiry))
        model = float(black76_price(o.underlying_price, o.strike, t, o.mark_iv, o.kind == "call"))
        assert o.mark_price == pytest.approx(model, rel=1e-9, abs=1e-12)


def _sol_config(**overrides: object) -> CallSimulationConfig:
    base = {
        "underlying": "SOL",
        "start": "2024-04-01",
        "end": "2024-05-31",
        "timeframe": "1h",
        "decision_interval_bars": 8,
        "initial_spot_position": 57.0,
    }
    return CallSimulationConfig(**(base | overrides))


def test_sol_trades_whole_lots_with_linear_fees_by_hand(alt_market: SyntheticMarket) -> None:
    sim = CoveredCallSimulator(alt_market, _sol_config())
    assert sim.size == 50.0  # 57 SOL -> five lots of 10 SOL
    res = sim.simulate_policy(always_sell(0.25))
    assert res.trades
    for tr in res.trades:
        assert tr.size == 50.0
        premium_per_coin = tr.open_price
        # Deribit USDC options: 0.05% of the index per coin, capped at 12.5% of the premium.
        fee = 50.0 * min(0.0005 * tr.open_underlying_price, 0.125 * premium_per_coin)
        assert tr.open_fee_usd == pytest.approx(fee, rel=1e-12)
        payoff = max(tr.settlement_price - tr.strike, 0.0)
        assert tr.payoff_usd == pytest.approx(50.0 * payoff, rel=1e-12, abs=1e-12)
        delivery = 50.0 * min(0.00025 * tr.settlement_price, 0.125 * payoff)
        assert tr.close_fee_usd == pytest.approx(delivery, rel=1e-12, abs=1e-12)
        assert tr.pnl_vs_hodl == pytest.approx(
            50.0 * (premium_per_coin - payoff) - fee - delivery, rel=1e-12, abs=1e-9
        )


def test_sol_portfolio_identity_equity_vs_hodl_is_the_sum_of_trades(
    alt_market: SyntheticMarket,
) -> None:
    sim = CoveredCallSimulator(alt_market, _sol_config())
    res = sim.simulate_policy(always_sell(0.25))
    settled = [t for t in res.trades if t.close_time <= sim.config.end_ts]
    assert len(settled) == len(res.trades)
    total = sum(t.pnl_vs_hodl for t in res.trades)
    assert float(res.equity_vs_hodl.iloc[-1]) == pytest.approx(total, rel=1e-9, abs=1e-6)


def test_harness_chain_and_run_work_for_sol_offline(tmp_path: Path) -> None:
    chain = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "chain",
            "--underlying",
            "SOL",
            "--as-of",
            AS_OF,
            "--json",
            "--expiries",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(chain.stdout)
    assert data["underlying"] == "SOL" and data["note"] is None
    assert all(o["instrument_name"].startswith("SOL_USDC-") for o in data["options"])
    doge = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "chain",
            "--underlying",
            "DOGE",
            "--as-of",
            AS_OF,
            "--expiries",
            "1",
            "--width",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "HYPOTHETICAL" in doge.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            str(ROOT / "configs/quickstart_sol.yaml"),
            "--out",
            str(tmp_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    folder = next(tmp_path.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete", run.stderr[-500:]
    trades = (folder / "trades.csv").read_text().splitlines()
    assert len(trades) > 1 and "SOL_USDC-" in trades[1]
    metrics = json.loads((folder / "metrics.json").read_text().replace("NaN", "null"))
    assert np.isfinite(metrics["always_sell"]["pnl_vs_hodl_usd"])
