"""A fresh rule run keeps its plain rows as arguments until read: the objects it then makes,
and the rewards it hands the sweep's leaderboard without them, are those of decisions.jsonl."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from harness import strict_json
from harness.experiments.config import parse_config
from harness.experiments.runner import ExperimentRunner
from harness.experiments.sweep_outputs import (
    _ordered_rewards,
    _plain_series,
    _read_rewards,
    _rewards_by_policy,
    _rewards_of_rows,
    trial_board,
)
from tests.experiments.sweep_fixtures import BASE


def _runner(tmp: Path) -> ExperimentRunner:
    # the sweep tests' tiny three-rule config (always_sell, iv_rich, oracle)
    config = parse_config({**BASE, "name": "kept", "bootstrap_resamples": 100})
    runner = ExperimentRunner(config, out_dir=tmp, quiet=True, html_report=False)
    runner.run()
    return runner


def test_kept_rows_and_plain_rewards_are_those_of_the_file(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    lines = (runner.run_dir / "decisions.jsonl").read_text().splitlines()
    plain = runner.plain_rewards()
    assert plain is not None  # every row of a rule run is plain
    # the leaderboard's rewards from the arrays = those read from the file
    from_arrays = trial_board(runner.run_dir, plain_rewards=plain)
    from_file = trial_board(runner.run_dir)
    pd.testing.assert_frame_equal(
        pd.DataFrame(from_arrays.entries), pd.DataFrame(from_file.entries)
    )
    assert from_arrays.rewards.keys() == from_file.rewards.keys()
    for name, series in from_file.rewards.items():
        pd.testing.assert_series_equal(from_arrays.rewards[name], series)
    # the row objects, made when read, are the lines' objects (each line is their text)
    rows = runner.written_decisions()
    assert rows is not None and len(rows) == len(lines)
    assert all(type(r) is dict for r in rows)
    assert [strict_json.dumps(r, default=str) for r in rows] == lines
    assert runner.written_decisions() is rows  # made once


_times = st.lists(
    st.integers(0, 10_000).map(lambda h: pd.Timestamp(h * 3600, unit="s", tz="UTC").isoformat()),
    max_size=8,
)
_reward = st.one_of(st.floats(), st.integers(-3, 3).map(float))


@given(_times, st.lists(st.sampled_from(["a", "b", "é"]), unique=True, max_size=3), st.data())
def test_plain_series_are_the_rewards_of_their_rows(times, policies, data) -> None:
    rewards = {
        p: np.array(data.draw(st.lists(_reward, min_size=len(times), max_size=len(times))))
        for p in policies
    }
    kept = {p: r.copy() for p, r in rewards.items()}
    rows = [
        {"decision_time": t, "policy": p, "reward": float(rewards[p][i])}
        for i, t in enumerate(times)
        for p in policies
    ]
    got = _plain_series(times, rewards)
    for p in policies:  # the runner's arrays are left as they were
        np.testing.assert_array_equal(rewards[p], kept[p])
    if got is None:  # times not increasing: the file is read instead
        assert any(not a < b for a, b in pairwise(times))
        return
    assert list(got) == sorted(policies)
    if rows:  # the rows' own path (one pass, or the group-by of their frame)
        want = _ordered_rewards(rows)
        assert want is not None
        for p, series in want.items():
            pd.testing.assert_series_equal(got[p], series)
            pd.testing.assert_series_equal(got[p], _rewards_by_policy(_rewards_of_rows(rows))[p])


def test_read_rewards_is_not_needed_for_a_plain_trial(tmp_path: Path, monkeypatch) -> None:
    runner = _runner(tmp_path)
    plain = runner.plain_rewards()
    monkeypatch.setattr(
        "harness.experiments.sweep_outputs._read_rewards",
        lambda path: (_ for _ in ()).throw(AssertionError("file read")),
    )
    board = trial_board(runner.run_dir, plain_rewards=plain)
    assert [e["policy"] for e in board.entries] == ["always_sell", "iv_rich", "oracle"]
    assert _read_rewards is not None
