"""The leaderboard's per-decision rewards, read from a trial's decisions.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from harness import strict_json
from harness.experiments.sweep_outputs import (
    _ordered_rewards,
    _read_rewards,
    _rewards_by_policy,
    _rewards_of_rows,
)

ROWS = [
    {
        "decision_time": "2024-01-01T00:00:00+00:00",
        "policy": "always_sell",
        "spot": 42000.5,
        "state": {"atm_iv": 0.5, "return_1d": None},
        "candidates": ["BTC-5JAN24-45000-C"],
        "reward": 12.25,
        "llm": None,
    },
    {
        "decision_time": "2024-01-01T00:00:00+00:00",
        "policy": "gpt",
        "candidates": [],
        "reward": None,  # a non-finite reward is written as null
        "llm": {"model": "gpt-4o-mini", "raw": '{"a": 1}\n---\n', "cost_usd": 0.001},
    },
    {"decision_time": "2024-01-01T04:00:00+00:00", "policy": "always_sell", "reward": 0},
    {"decision_time": "2024-01-01T04:00:00+00:00", "policy": "gpt", "reward": -0.1},
]


def test_rewards_are_each_lines_policy_time_and_reward(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    got = _read_rewards(path)
    assert list(got.columns) == ["policy", "decision_time", "reward"]
    assert got["policy"].tolist() == ["always_sell", "gpt", "always_sell", "gpt"]
    assert got["decision_time"].tolist() == [r["decision_time"] for r in ROWS]
    assert got["reward"].iloc[[0, 2, 3]].tolist() == [12.25, 0.0, -0.1]
    assert pd.isna(got["reward"].iloc[1]) and got["reward"].dtype == float
    # the same frame as parsing every line in Python
    parsed = [json.loads(x) for x in path.read_text().splitlines()]
    expected = pd.DataFrame(
        [(r["policy"], r["decision_time"], r["reward"]) for r in parsed],
        columns=["policy", "decision_time", "reward"],
    )
    pd.testing.assert_frame_equal(got, expected)


def test_an_empty_file_has_no_rewards(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text("")
    got = _read_rewards(path)
    assert got.empty and list(got.columns) == ["policy", "decision_time", "reward"]


def test_rewards_of_rows_in_memory_equal_the_file_read(tmp_path: Path) -> None:
    # the runner's in-memory objects keep a non-finite reward as a float; the file has null
    in_memory = [dict(r) for r in ROWS]
    in_memory[1]["reward"] = float("inf")
    in_memory.append({"decision_time": "2024-01-01T08:00:00+00:00", "policy": "gpt"})
    in_memory[-1]["reward"] = float("nan")
    path = tmp_path / "decisions.jsonl"
    path.write_text("".join(strict_json.dumps(r) + "\n" for r in in_memory))
    pd.testing.assert_frame_equal(_rewards_of_rows(in_memory), _read_rewards(path))


_row = st.fixed_dictionaries(
    {
        "policy": st.sampled_from(["always_sell", "iv_rich", "gpt", "é"]),
        "decision_time": st.sampled_from(
            [f"2024-01-0{d}T{h:02d}:00:00+00:00" for d in (1, 2) for h in (0, 4, 20)]
        ),
    },
    optional={
        "reward": st.one_of(st.none(), st.floats(), st.integers(-3, 3), st.just(np.float64(2.5)))
    },
)


@given(st.lists(_row, max_size=12), st.booleans())
def test_ordered_rewards_equal_the_grouped_frame(rows: list[dict], in_order: bool) -> None:
    """The one-pass rewards per policy (a fresh run's rows) = the group-by of the rows' frame;
    rows it does not take (out of order, repeated times) give None and the group-by path."""
    if in_order:  # a fresh run's shape: each policy's times increasing
        rows = sorted(rows, key=lambda r: r["decision_time"])
    fast = _ordered_rewards(rows)
    want = _rewards_by_policy(_rewards_of_rows(rows))
    if fast is None:
        keys = [(r["policy"], r["decision_time"]) for r in rows]
        assert not in_order or len(set(keys)) < len(keys)
        return
    assert list(fast) == sorted(want)
    for policy, series in want.items():
        pd.testing.assert_series_equal(fast[policy], series)
        assert fast[policy].index.dtype == series.index.dtype


def test_rows_without_a_text_policy_or_time_take_the_frame_path() -> None:
    assert _ordered_rewards([{"policy": None, "decision_time": "t", "reward": 1.0}]) is None
    assert _ordered_rewards([{"policy": "p", "reward": 1.0}]) is None
