"""A selective store load that leaves low days-to-expiry tiers out replays exactly as one that
reads them (issue 18, tenth round).

`FileDataSource` reads the tiers above the band's lowest days to expiry first and the lower
ones afterwards, only for the band's marks, the decisions whose ATM pick or first row they
could change, and the block's end (`_second_pass`). The reference is the same store with the
skip switched off (`tier_floor` -> None), and the full chain (no selection at all).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import harness.data.files as files
import harness.data.low_tiers as low_tiers
from harness.data.chain_scan import columns_to_frame
from harness.data.chain_select import ChainSelection
from harness.data.files import FileDataSource
from harness.data.low_marks import MARKS_NAME
from harness.policies import always_sell
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig
from tests.store_replay_fixtures import (
    FullChain,
    GappyFull,
    GappySpot,
    assert_same_replay,
    copy_store,
    replay,
    write_4h_store,
)

START, END = "2024-02-01", "2024-02-24"
BASE = CallSimulationConfig(
    underlying="BTC",
    start=START,
    end=END,
    timeframe="1h",
    decision_interval_bars=4,
    target_dte=7.0,
    dte_tolerance=2.0,
)
CONFIGS = {
    # band 5-9 days: the one-, two- and four-day tiers are left out (floor 4)
    "week": BASE,
    # band 4-6 days: floor 2, the ATM target 5 days sits in the four-day tier read first
    "five_days": BASE.model_copy(update={"target_dte": 5.0, "dte_tolerance": 1.0}),
    # hourly decisions: windows of several decisions overlap
    "hourly": BASE.model_copy(update={"decision_interval_bars": 1}),
}


@pytest.fixture(scope="module")
def marked_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_4h_store(tmp_path_factory.mktemp("tier_skip"), START, END, seed=11, max_dte=16.0)


@pytest.fixture(scope="module")
def store(marked_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same store without low-tier marks files: the band marks are decoded from the tiers."""
    root = copy_store(marked_store, tmp_path_factory.mktemp("tier_skip_bare"))
    for f in root.rglob(MARKS_NAME):
        f.unlink()
    return root


def _unskipped(cls: type[FileDataSource], store: Path, cfg: CallSimulationConfig, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(files, "tier_floor", lambda selection: None)
        return CoveredCallSimulator(cls(store), cfg)


@pytest.mark.parametrize("marks_file", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_left_out_tiers_replay_like_reading_them(
    store: Path, marked_store: Path, name: str, marks_file: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = CONFIGS[name]
    store = marked_store if marks_file else store
    source = FileDataSource(store)
    skip = CoveredCallSimulator(source, cfg)
    read = _unskipped(FileDataSource, store, cfg, monkeypatch)
    full = CoveredCallSimulator(FullChain(store), cfg)
    stats = source.scan_stats
    # the skip happened: fewer rows through the point-in-time pass, the rest read after it,
    # and some decisions (the weekly expiry near the floor) needed the left-out rows
    # (with marks files, the band marks of whole groups come from them: no row is lost)
    if marks_file:
        assert stats["low_rows_marks_file"] > 0 and stats["low_rows_kept"] > 0
    else:
        assert stats["low_row_groups_read"] > 0 and stats["low_rows_kept"] > 0
        assert stats["low_rows_marks_file"] == 0
    assert (
        stats["rows_decoded"] + stats["low_rows_decoded"] + stats["low_rows_marks_file"]
        == read.source.scan_stats["rows_decoded"]
    )
    assert stats["low_decisions"] < len(skip.decision_times())
    if cfg.target_dte == 7.0:  # some weekly falls 3-4 days out: its ATM ties need the tier
        assert stats["low_decisions"] > 0
    else:  # a daily 2-4 days out is always nearer 5 days than the floor: none needed it
        assert stats["low_decisions"] == 0
    # the same rows, values and order as the unskipped selection
    pd.testing.assert_frame_equal(
        columns_to_frame(skip.store.cols), columns_to_frame(read.store.cols)
    )
    a = replay(skip, always_sell())
    assert_same_replay(a, replay(read, always_sell()))
    assert_same_replay(a, replay(full, always_sell()))


def test_first_row_only_after_a_spot_gap(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = CoveredCallSimulator(GappySpot(store), BASE)
    read = _unskipped(GappySpot, store, BASE, monkeypatch)
    full = CoveredCallSimulator(GappyFull(store), BASE)
    assert sim.spot_stale.any() and not sim.spot_stale.all()
    stale_ns = set(sim.dec_ns[sim.spot_stale].tolist())
    selection = sim._chain_selection()
    assert selection.first_row_at is not None and set(selection.first_row_at) == stale_ns
    # every decision after the gap needed the left-out tiers (the nearest expiry is there)
    assert sim.source.scan_stats["low_decisions"] >= len(stale_ns)
    np.testing.assert_array_equal(sim.spot_stale, full.spot_stale)
    np.testing.assert_array_equal(sim._chain_spot, full._chain_spot)
    assert np.isfinite(sim._chain_spot[sim.spot_stale]).all()
    # the first row (nearest expiry, lowest strike) is kept at the stale decisions only
    frame = columns_to_frame(sim.store.cols)
    pd.testing.assert_frame_equal(frame, columns_to_frame(read.store.cols))
    nearest = frame.groupby("as_of")["expiry"].transform("min") == frame["expiry"]
    near_times = set(
        frame.loc[
            nearest & (frame["expiry"] - frame["as_of"]).lt(pd.Timedelta(days=1)), "as_of"
        ].map(lambda t: t.value)
    )
    assert near_times <= stale_ns
    assert_same_replay(replay(sim, always_sell()), replay(full, always_sell()))


def test_skip_is_off_for_rolls_and_low_bands() -> None:
    band = {"min_delta": 0.1, "max_delta": 0.4}
    assert low_tiers.tier_floor(None) is None
    week = ChainSelection(min_dte=5 - 1e-6, max_dte=9, atm_dte=7, **band)
    assert low_tiers.tier_floor(week) == 4.0
    assert low_tiers.tier_floor(dataclasses.replace(week, follow=True)) is None
    assert (
        low_tiers.tier_floor(ChainSelection(min_dte=1 - 1e-6, max_dte=3, atm_dte=2, **band)) is None
    )
    # a band right at a tier bound: the bound itself is not below the band
    assert low_tiers.tier_floor(ChainSelection(min_dte=4.0, max_dte=6, atm_dte=5, **band)) == 2.0
    # an ATM target inside the left-out tiers would send every decision to the second pass
    assert low_tiers.tier_floor(ChainSelection(min_dte=5, max_dte=9, atm_dte=3, **band)) is None
