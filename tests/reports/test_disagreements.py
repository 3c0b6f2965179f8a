"""disagreements / disagreement_episodes: numpy over the (time x policy) cells gives the
frames of the pandas pivots and group-bys they replaced (kept here as the reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.experiments.config import parse_config
from harness.experiments.runner import run_experiment
from harness.reports.report import (
    _expiry_token,
    decisions_frame,
    disagreement_cells,
    disagreement_episodes,
    disagreements,
    load_run,
)
from tests.experiments.sweep_fixtures import BASE


def _ref_disagreements(decisions: pd.DataFrame, top: int | None = None) -> pd.DataFrame:
    if decisions.empty:
        return pd.DataFrame(columns=["decision_time", "spread"])
    wide = decisions.pivot(
        index="decision_time", columns="policy", values=["choice", "label", "reward"]
    )
    choice, label, reward = wide["choice"], wide["label"], wide["reward"].astype(float)
    differ = decisions.groupby("decision_time")["choice"].nunique().reindex(choice.index) > 1
    spread = (reward.max(axis=1) - reward.min(axis=1))[differ]
    order = spread.sort_values(ascending=False, na_position="last", kind="stable").index
    order = order if top is None else order[:top]
    out = pd.DataFrame({"decision_time": order, "spread": spread.loc[order].to_numpy()})
    for p in choice.columns:
        out[f"choice.{p}"] = label.loc[order, p].to_numpy()
        out[f"reward.{p}"] = reward.loc[order, p].to_numpy()
    return out


def _ref_episodes(table: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    cols = ["expiry", "start", "end", "n", "peak_time", "peak_spread"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    names = decisions.pivot(index="decision_time", columns="policy", values="instrument_name")
    rows = names.loc[table["decision_time"]].to_numpy(dtype=object)
    expiry = [
        next((tok for tok in map(_expiry_token, row) if tok is not None), None) for row in rows
    ]
    t = table.assign(expiry=expiry)
    t["expiry"] = t["expiry"].fillna(t["decision_time"].astype(str))
    peak = t.loc[t.groupby("expiry")["spread"].idxmax()]
    agg = t.groupby("expiry").agg(
        start=("decision_time", "min"), end=("decision_time", "max"), n=("decision_time", "size")
    )
    out = agg.join(
        peak.set_index("expiry")[["decision_time", "spread"]].rename(
            columns={"decision_time": "peak_time", "spread": "peak_spread"}
        )
    ).reset_index()
    out = out.sort_values(["peak_spread", "start"], ascending=[False, True], kind="stable")
    return out[cols].reset_index(drop=True)


def _same(decisions: pd.DataFrame) -> None:
    for top in (None, 3):
        got, want = disagreements(decisions, top=top), _ref_disagreements(decisions, top=top)
        pd.testing.assert_frame_equal(got, want)
    table = disagreements(decisions)
    pd.testing.assert_frame_equal(
        disagreement_episodes(table, decisions), _ref_episodes(table, decisions)
    )
    if not decisions.empty:  # the report's path: both tables from one reshaping
        cells = disagreement_cells(decisions)
        shared = disagreements(decisions, cells=cells)
        pd.testing.assert_frame_equal(shared, table)
        pd.testing.assert_frame_equal(
            disagreement_episodes(shared, decisions, cells=cells),
            _ref_episodes(table, decisions),
        )


_T0 = pd.Timestamp("2024-01-01", tz="UTC")
_NAMES = ["BTC-5JAN24-45000-C", "BTC-5JAN24-46000-C", "BTC-12JAN24-45000-C", "odd-name", None]


@st.composite
def _decisions(draw: Any) -> pd.DataFrame:
    policies = draw(st.lists(st.sampled_from(["a", "b", "c", "zz"]), min_size=1, unique=True))
    n_times = draw(st.integers(1, 12))
    objs = []
    for i in range(n_times):
        for p in policies:
            if draw(st.integers(0, 9)) == 0:
                continue  # a policy without a row at this time
            name = draw(st.sampled_from(_NAMES))
            objs.append(
                {
                    "decision_time": (_T0 + pd.Timedelta(hours=4 * i)).isoformat(),
                    "policy": p,
                    "candidates": ["x"],
                    "action": "SELL_CALL" if name else "DO_NOTHING",
                    "instrument_name": name,
                    "valid": True,
                    "error": None,
                    # few distinct values: ties in spreads and peaks
                    "reward": draw(st.sampled_from([0.0, 1.0, 2.5, -1.0])),
                    "best_reward": 3.0,
                    "regret": 0.0,
                    "llm": None,
                }
            )
    return decisions_frame(objs)


@settings(max_examples=80, deadline=None)
@given(_decisions())
def test_equal_to_the_pandas_reference_on_drawn_decisions(decisions: pd.DataFrame) -> None:
    _same(decisions)


def test_equal_to_the_pandas_reference_on_an_empty_table() -> None:
    _same(decisions_frame([]))


def test_equal_to_the_pandas_reference_on_a_real_run(tmp_path: Path) -> None:
    """A real rule run (many rows, real names, ties in spreads between expiries)."""
    config = parse_config(BASE, tmp_path)
    run_dir = run_experiment(config, out_dir=tmp_path, quiet=True).run_dir
    decisions = load_run(run_dir).decisions
    assert len(disagreements(decisions)) > 10
    _same(decisions)


def test_duplicate_rows_are_refused_like_a_pivot() -> None:
    t = _T0
    d = pd.DataFrame(
        {
            "decision_time": [t, t],
            "policy": ["a", "a"],
            "choice": ["x", "y"],
            "label": ["x", "y"],
            "reward": [1.0, 2.0],
        }
    )
    with pytest.raises(ValueError, match="duplicate"):
        disagreements(d)
