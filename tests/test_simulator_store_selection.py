"""The store path with a chain selection replays exactly as with every chain row.

`FileDataSource.selected_chain_columns` copies out only the rows a replay reads (the band,
the ATM IV rows, the nearest-expiry row for stale spot, followed calls in roll mode). The
full-chain replay is the reference: the same source with the selective path switched off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from harness.data.files import FileDataSource
from harness.policies import always_sell
from harness.simulator import CoveredCallSimulator
from harness.state import DecisionState
from harness.types import CallCandidate, CallSimulationConfig
from tests.store_replay_fixtures import (
    FullChain,
    GappyFull,
    GappySpot,
    assert_same_replay,
    replay,
    write_4h_store,
)

START, END = "2024-02-01", "2024-02-12"
BASE = CallSimulationConfig(
    underlying="BTC",
    start=START,
    end=END,
    timeframe="1h",
    decision_interval_bars=4,
    target_dte=2.0,
    dte_tolerance=1.0,
)
CONFIGS = {
    "hold": BASE,
    "roll": BASE.model_copy(update={"hold_to_expiry": False}),
    "hourly_roll": BASE.model_copy(update={"hold_to_expiry": False, "decision_interval_bars": 1}),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_4h_store(tmp_path_factory.mktemp("store_sel"), START, END, seed=7, max_dte=6.0)


@pytest.fixture(scope="module")
def forward_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose underlying_price differs by expiry (a forward), so the row matters."""
    root = write_4h_store(tmp_path_factory.mktemp("store_fwd"), START, END, seed=7, max_dte=6.0)
    for path in sorted((root / "BTC" / "chain").glob("*/*.parquet")):
        table = pq.read_table(path)
        days = pc.divide(
            pc.cast(pc.subtract(table["expiry"], table["as_of"]), "int64").cast("float64"), 86.4e12
        )
        forward = pc.multiply(table["underlying_price"], pc.add(1.0, pc.multiply(days, 1e-3)))
        i = table.schema.get_field_index("underlying_price")
        pq.write_table(table.set_column(i, "underlying_price", forward), path)
    return root


def roll_when_short(state: DecisionState, cands: Sequence[CallCandidate]) -> CallCandidate | None:
    """Sell the first candidate when flat; roll to the last once the open call has < 1 day."""
    if state.position is None:
        return cands[0] if cands else None
    if state.position.dte_days < 1 and cands:
        return cands[-1]
    return None


def _policy(cfg: CallSimulationConfig):
    return always_sell() if cfg.hold_to_expiry else roll_when_short


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_selected_rows_replay_like_the_full_chain(store: Path, name: str) -> None:
    cfg = CONFIGS[name]
    sel = CoveredCallSimulator(FileDataSource(store), cfg)
    full = CoveredCallSimulator(FullChain(store), cfg)
    assert 0 < len(sel.store) < len(full.store) / 3
    a = replay(sel, _policy(cfg))
    assert_same_replay(a, replay(full, _policy(cfg)))
    if not cfg.hold_to_expiry:
        assert any(t["notes"] for t in a["trades"])


def test_stale_spot_decisions_keep_the_nearest_expiry_row(forward_store: Path) -> None:
    sel = CoveredCallSimulator(GappySpot(forward_store), BASE)
    full = CoveredCallSimulator(GappyFull(forward_store), BASE)
    assert len(sel.store) < len(full.store)
    assert sel.spot_stale.any()
    np.testing.assert_array_equal(sel.spot_stale, full.spot_stale)
    np.testing.assert_array_equal(sel._chain_spot, full._chain_spot)
    assert np.isfinite(sel._chain_spot[sel.spot_stale]).all()
    states = [sel.build_state(t).model_dump() for t in sel.decision_times()]
    assert states == [full.build_state(t).model_dump() for t in full.decision_times()]
