"""Counterfactual label values pinned for fixed seeds (a regression net for label speed-ups).

The label engine was verified against hand computations (test_simulator_labels.py) and the
store/synthetic identity tests; these digests freeze its exact output, to the cent for money
and to 1e-6 percent for drawdowns, over a bulk source, a sparse-snapshot store (stale marks)
and a protocol-only source (option bars plus seeded sale marks), so a faster implementation
must reproduce every value.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.files import FileDataSource
from harness.data.importers import import_synthetic
from harness.data.synthetic import SyntheticMarket
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig
from tests.test_simulator import ProtocolOnly

MONEY = [
    "strike",
    "premium",
    "fees",
    "settlement_price",
    "payoff",
    "pnl_vs_hodl",
    "best_pnl_vs_hodl",
    "regret",
]


def digest(labels: pd.DataFrame) -> tuple[int, float, float, str]:
    """Row count, pnl sum, drawdown sum and a hash of every row (money rounded to the cent)."""
    text = labels.loc[:, ["decision_time", "action", "instrument_name"]].astype(str)
    for col in MONEY:
        text[col] = labels[col].round(2).map("{:.2f}".format)
    text["dd"] = labels["max_drawdown_pct"].round(6).map("{:.6f}".format)
    text["pnl_coin"] = labels["pnl_coin"].round(8).map("{:.8f}".format)
    text["itm"] = labels["in_the_money"].astype(bool).astype(str)
    blob = text.to_csv(index=False).encode()
    return (
        len(labels),
        round(float(labels["pnl_vs_hodl"].sum()), 2),
        round(float(np.nansum(labels["max_drawdown_pct"])), 4),
        hashlib.sha256(blob).hexdigest()[:16],
    )


CFG = CallSimulationConfig(
    underlying="BTC",
    start="2024-03-01",
    end="2024-03-20",
    timeframe="1h",
    decision_interval_bars=4,
    target_dte=3.0,
    dte_tolerance=2.0,
)


@pytest.fixture(scope="module")
def sparse_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sparse")
    import_synthetic(
        "BTC",
        "2024-03-01",
        "2024-03-28",
        "4h",
        root,
        seed=5,
        calls_only=True,
        progress=False,
        max_dte=6.0,
    )
    return root


def test_bulk_synthetic_labels_are_pinned(sim: CoveredCallSimulator) -> None:
    assert digest(sim.counterfactual_labels()) == PINNED["synthetic"]


def test_sparse_store_labels_are_pinned(sparse_store: Path) -> None:
    labels = CoveredCallSimulator(FileDataSource(sparse_store), CFG).counterfactual_labels()
    assert digest(labels) == PINNED["store"]


def test_protocol_only_labels_are_pinned() -> None:
    market = SyntheticMarket(seed=5)
    labels = CoveredCallSimulator(ProtocolOnly(market), CFG).counterfactual_labels()
    assert digest(labels) == PINNED["protocol"]


# measured on the engine before the label speed-ups (commit 52a4253)
PINNED: dict[str, tuple[int, float, float, str]] = {
    "synthetic": (1500, -57891.72, 6310.9327, "84c5f53dc4f93822"),
    "store": (1274, -208007.71, 4295.8881, "e6782ebe57fd3a3a"),
    "protocol": (1274, -208007.71, 3606.6089, "3d4e4f46cb2b3d17"),
}
