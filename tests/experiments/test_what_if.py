"""`harness what-if`: one call sold at an instant, held to expiry, priced by the engine."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.cli import main
from harness.experiments.config import MarketConfig
from harness.experiments.what_if import what_if

AS_OF = "2024-03-01T08:00Z"
MARKET = MarketConfig(seed=11)


@pytest.fixture(scope="module")
def nearest():
    return what_if("BTC", AS_OF, delta=0.25, dte=7, size=2.0, market=MARKET)


def test_nearest_delta_call_is_booked_like_a_replay(nearest) -> None:
    w = nearest
    assert abs(w.delta - 0.25) <= 0.10 and 5 <= w.dte_days <= 9
    fees = w.open_fee_usd + w.delivery_fee_usd
    assert w.pnl_vs_hodl_usd == pytest.approx(w.premium_usd - fees - w.payoff_usd)
    assert w.payoff_usd == pytest.approx(2.0 * max(w.settlement_price - w.strike, 0.0))
    assert w.path.index[0] == pd.Timestamp(AS_OF) and w.path.index[-1] == w.expiry
    assert w.path["pnl_vs_hodl"].iloc[-1] == pytest.approx(w.pnl_vs_hodl_usd)
    assert len(w.path) <= 13 and w.max_drawdown_pct >= 0


def test_naming_the_instrument_gives_the_same_trade(nearest) -> None:
    w = what_if("BTC", AS_OF, instrument=nearest.instrument_name, size=2.0, market=MARKET)
    assert w.pnl_vs_hodl_usd == pytest.approx(nearest.pnl_vs_hodl_usd)
    assert w.settlement_price == pytest.approx(nearest.settlement_price)
    with pytest.raises(ValueError, match="not offered"):
        what_if("BTC", AS_OF, instrument="BTC-8MAR24-1000-C", market=MARKET)


def test_cli_prints_json_and_fails_with_a_reason(capsys, nearest) -> None:
    argv = ["what-if", "--underlying", "BTC", "--as-of", AS_OF, "--seed", "11", "--size", "2"]
    assert main([*argv, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["instrument_name"] == nearest.instrument_name
    assert d["pnl_vs_hodl_usd"] == pytest.approx(nearest.pnl_vs_hodl_usd)
    assert d["path"][-1]["pnl_vs_hodl"] == pytest.approx(nearest.pnl_vs_hodl_usd)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert nearest.instrument_name in text and "pnl vs HODL" in text
    assert main([*argv, "--instrument", "BTC-8MAR24-1000-C"]) == 2
    assert "not offered" in capsys.readouterr().err
