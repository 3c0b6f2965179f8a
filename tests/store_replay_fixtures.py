"""Store sources, selective reads and replay comparisons shared by the store-selection,
tier-skip and ATM-summary tests."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

import harness.data.files as files
from harness.data.chain_scan import columns_to_frame
from harness.data.chain_select import ChainSelection
from harness.data.files import FileDataSource
from harness.data.importers import import_synthetic
from harness.simulator import CoveredCallSimulator, PolicyFn


def write_4h_store(root: Path, start: str, end: str, *, seed: int, max_dte: float) -> Path:
    """A store of the embedded market's calls at 4-hour snapshots (every expiry up to
    `max_dte` days) written at `root` by the import every user runs."""
    import_synthetic(
        "BTC", start, end, "4h", root, seed=seed, calls_only=True, progress=False, max_dte=max_dte
    )
    return root


def copy_store(store: Path, tmp_path: Path) -> Path:
    """A copy of `store` under `tmp_path` that a test may rewrite."""
    out = tmp_path / "copy"
    shutil.copytree(store, out)
    return out


def chain_parts(root: Path) -> list[Path]:
    """The chain partition files of the BTC store at `root`, in time order."""
    return sorted((root / "BTC" / "chain").glob("*/part.parquet"))


class FullChain(FileDataSource):
    """The same store with the selective path hidden (the simulator then reads every row)."""

    selected_chain_columns = None  # type: ignore[assignment]


class GappySpot(FileDataSource):
    """Spot bars missing over one afternoon, so decisions there take the chain's spot."""

    gap = (pd.Timestamp("2024-02-05T11:00", tz="UTC"), pd.Timestamp("2024-02-05T20:00", tz="UTC"))

    def get_spot_ohlc(self, underlying, start, end, timeframe):
        bars = super().get_spot_ohlc(underlying, start, end, timeframe)
        return bars[(bars.index <= self.gap[0]) | (bars.index > self.gap[1])]


class GappyFull(GappySpot):
    """`GappySpot` with the selective path hidden."""

    selected_chain_columns = None  # type: ignore[assignment]


def selected_rows(
    root: Path,
    times: pd.DatetimeIndex,
    sel: ChainSelection,
    max_dte: float,
    mode: Literal["store", "no_summary", "no_skip"] = "store",
    threads: int | None = None,
) -> tuple[pd.DataFrame, FileDataSource]:
    """The selected chain rows of BTC at `times` and the source that read them: as the store
    serves them ("store"), without its ATM summaries ("no_summary") or with the tier skip off
    ("no_skip"); `threads`: the source's scan threads (default: its own)."""
    source = FileDataSource(root, threads=threads)
    saved = (files.summary_answers, files.tier_floor)
    if mode == "no_summary":
        files.summary_answers = lambda t_ns, *a: np.zeros(len(t_ns), dtype=bool)
    elif mode == "no_skip":
        files.tier_floor = lambda selection: None
    try:
        cols = source.selected_chain_columns("BTC", times, sel, max_dte=max_dte)
    finally:
        files.summary_answers, files.tier_floor = saved
    return columns_to_frame(cols), source


def band_marks(source: FileDataSource, frame: pd.DataFrame, times: pd.DatetimeIndex) -> np.ndarray:
    """`source`'s marks of every instrument in `frame` at every one of `times`."""
    names = sorted(set(frame["instrument_name"]))
    first = np.zeros(len(names), dtype=np.int64)
    last = np.full(len(names), len(times) - 1)
    return source.option_mark_ranges(names, times, first, last)


def replay(sim: CoveredCallSimulator, policy: PolicyFn) -> dict[str, Any]:
    """Everything a replay of `policy` on `sim` shows: gates, candidates, states, labels,
    trades, equity, metrics, the chain's spot and the ATM IV feature."""
    res = sim.simulate_policy(policy)
    return {
        "gates": dataclasses.asdict(sim.gate_counts),
        "candidates": sim.candidates_frame(),
        "states": [sim.build_state(t).model_dump() for t in sim.decision_times()],
        "labels": sim.counterfactual_labels(),
        "trades": [dataclasses.asdict(t) for t in res.trades],
        "equity": res.equity_vs_hodl,
        "metrics": res.metrics,
        "chain_spot": sim._chain_spot,
        "atm_iv": sim._features["atm_iv"],
    }


def assert_same_replay(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two `replay` results are equal (and trade at all)."""
    assert a["gates"] == b["gates"]
    pd.testing.assert_frame_equal(a["candidates"], b["candidates"])
    assert a["states"] == b["states"]
    pd.testing.assert_frame_equal(a["labels"], b["labels"])
    assert a["trades"] == b["trades"] and len(a["trades"]) > 0
    pd.testing.assert_series_equal(a["equity"], b["equity"])
    assert a["metrics"] == b["metrics"]
    np.testing.assert_array_equal(a["chain_spot"], b["chain_spot"])
    np.testing.assert_array_equal(a["atm_iv"], b["atm_iv"])
