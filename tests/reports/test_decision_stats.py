"""A run's per-policy decision statistics from numpy arrays equal `decision_stats` of its rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.reports.report import RunFolder, decision_stats, decisions_frame

T0 = pd.Timestamp("2024-01-01", tz="UTC")
_num = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
    st.integers(-5, 5),
)


@st.composite
def _rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 400))  # beyond numpy's pairwise-summation blocks
    rows = []
    for i in range(n):
        rows.append(
            {
                "decision_time": (T0 + pd.Timedelta(hours=i // 2)).isoformat(),
                "policy": draw(st.sampled_from(["always_sell", "iv_rich", "llm"])),
                "candidates": draw(st.one_of(st.none(), st.lists(st.just("BTC-X"), max_size=2))),
                "action": draw(st.sampled_from(["SELL_CALL", "DO_NOTHING", None])),
                "instrument_name": None,
                "valid": draw(st.one_of(st.booleans(), st.none())),
                "error": draw(st.one_of(st.none(), st.just(""), st.just("timeout"))),
                "reward": draw(_num),
                "best_reward": 0.0,
                "regret": draw(_num),
                "llm": draw(st.one_of(st.none(), st.fixed_dictionaries({"cost_usd": _num}))),
            }
        )
    return rows


def _same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for k, x in b.items():
        assert a[k] == x or (math.isnan(a[k]) and math.isnan(x)), k


@settings(max_examples=40, deadline=None)  # up to 400 drawn rows each: ~0.35 s an example
@given(_rows())
def test_stats_from_arrays_equal_the_frame_reductions(rows) -> None:
    decisions = decisions_frame(rows)
    run = RunFolder(Path("."), {}, decisions, pd.DataFrame(), pd.DataFrame(), {}, {}, ())
    assert (run._stats_arrays is not None) == bool(rows)  # the array path is compared
    for p in ["always_sell", "iv_rich", "llm", "absent"]:
        with np.errstate(over="ignore"):  # the reference's sum of huge values overflows to inf
            want = decision_stats(decisions[decisions["policy"] == p])
        _same(run.decision_stats(p), want)


def test_a_table_without_the_usual_dtypes_takes_the_frame_path() -> None:
    decisions = decisions_frame([]).astype({"reward": object})
    run = RunFolder(Path("."), {}, decisions, pd.DataFrame(), pd.DataFrame(), {}, {}, ())
    assert run._stats_arrays is None
    assert run.decision_stats("x") == {"n_decisions": 0.0}
