"""Sweep files: expansion of grid, list and random sweeps, and errors that name file and axis."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.experiments.sweep_spec import SweepError, load_sweep
from tests.experiments.sweep_fixtures import BASE, GRID, write_sweep


def _sweep(tmp_path: Path, **changes: Any):
    spec = copy.deepcopy(GRID)
    spec.update(changes)
    return load_sweep(write_sweep(tmp_path, spec))


def test_grid_is_the_cartesian_product_in_file_order(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    points = [t.point for t in sweep.trials]
    assert points == [
        {"simulation.target_delta": 0.15, "simulation.target_dte": 3},
        {"simulation.target_delta": 0.15, "simulation.target_dte": 7},
        {"simulation.target_delta": 0.3, "simulation.target_dte": 3},
        {"simulation.target_delta": 0.3, "simulation.target_dte": 7},
    ]
    c = sweep.trials[2].config
    assert (c.simulation.target_delta, c.simulation.target_dte) == (0.3, 3)
    assert c.name == "tiny-grid-t002"
    assert len({t.key for t in sweep.trials}) == 4
    assert _sweep(tmp_path).sweep_hash == sweep.sweep_hash  # stable across parses


def test_range_period_and_policy_by_name(tmp_path: Path) -> None:
    sweep = _sweep(
        tmp_path,
        axes={
            "market.seed": {"range": [1, 3]},
            "period": [["2023-01-01", "2023-02-15"], ["2024-01-01", "2024-02-15"]],
            "policies.iv_rich.params.threshold": [0.0, 0.1],
        },
    )
    assert len(sweep.trials) == 3 * 2 * 2
    last = sweep.trials[-1].config
    assert last.market.seed == 3
    assert pd.Timestamp(last.simulation.start) == pd.Timestamp("2024-01-01", tz="UTC")
    assert pd.Timestamp(last.simulation.end) == pd.Timestamp("2024-02-15", tz="UTC")
    iv = next(p for p in last.policies if p.name == "iv_rich")
    assert iv.params == {"threshold": 0.1}
    other = next(p for p in last.policies if p.name == "always_sell")
    assert other.params == {}


def test_list_and_seeded_random(tmp_path: Path) -> None:
    listed = _sweep(
        tmp_path,
        mode="list",
        axes={},
        points=[{"simulation.target_delta": 0.2}, {"simulation.target_dte": 5, "market.seed": 9}],
    )
    assert [t.point for t in listed.trials] == [
        {"simulation.target_delta": 0.2},
        {"simulation.target_dte": 5, "market.seed": 9},
    ]
    assert listed.axes == ["simulation.target_delta", "simulation.target_dte", "market.seed"]
    axes = {"market.seed": {"range": [1, 20]}, "simulation.target_dte": [3, 7, 14]}
    a = _sweep(tmp_path, mode="random", samples=5, seed=4, axes=axes)
    b = _sweep(tmp_path, mode="random", samples=5, seed=4, axes=axes)
    c = _sweep(tmp_path, mode="random", samples=5, seed=5, axes=axes)
    assert [t.point for t in a.trials] == [t.point for t in b.trials]
    assert [t.point for t in a.trials] != [t.point for t in c.trials]
    assert len({str(t.point) for t in a.trials}) == 5


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"axes": {"simulation.target_detla": [0.1]}}, "axis 'simulation.target_detla'"),
        ({"axes": {"simulation.target_delta": [0.1, 1.5]}}, "value 1.5"),
        ({"axes": {"policies.llm_v9.model": ["x"]}}, "no policy named 'llm_v9'"),
        ({"axes": {"market.seed": {"range": [5, 1]}}}, "range [5, 1] is empty"),
        ({"axes": {"market.seed": {"range": [1.5, 3]}}}, "integers"),
        ({"axes": {"market.seed": 3}}, "non-empty list"),
        ({"axes": {"period": [["2024-01-01"]]}}, "[start, end]"),
        ({"axes": {"simulation": [1]}}, "dotted field path"),
        ({"axes": {}}, "`axes` is empty"),
        ({"mode": "random"}, "needs `samples`"),
        ({"mode": "random", "samples": 9}, "exceeds the 4 points"),
        ({"mode": "list"}, "mode list takes `points`"),
        ({"base": "missing.yaml"}, "no such experiment config"),
        ({"axez": {}}, "axez"),
        ({"axes": {"simulation.target_delta": [0.2, 0.2]}}, "repeats another trial"),
    ],
)
def test_errors_name_the_file_axis_and_problem(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    spec = copy.deepcopy(GRID)
    spec.update(changes)
    path = write_sweep(tmp_path, spec)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    msg = str(info.value)
    assert msg.startswith(str(path))
    assert expected in msg


def test_trial_combinations_are_checked_before_running(tmp_path: Path) -> None:
    base = copy.deepcopy(BASE)
    spec = copy.deepcopy(GRID)
    # each axis alone is valid; together one trial has end before start
    spec["axes"] = {
        "simulation.start": ["2024-02-01", "2024-05-01"],
        "simulation.end": ["2024-03-10"],
    }
    path = write_sweep(tmp_path, spec, base)
    with pytest.raises(SweepError, match=r"sweep.yaml: .*2024-05-01"):
        load_sweep(path)
