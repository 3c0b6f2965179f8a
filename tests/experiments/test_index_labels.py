"""The runner's per-decision best label: the numpy sort gives the group-by's idxmax."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.experiments.runner import ExperimentRunner

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _reference(labels: pd.DataFrame, times: pd.DatetimeIndex) -> list[tuple]:
    """The former pandas path: groupby idxmax, then the row's name and reward per time."""
    best_idx = labels.groupby("decision_time")["reward"].idxmax()
    best = labels.loc[best_idx.to_numpy()]
    by_t = dict(
        zip(
            pd.DatetimeIndex(best["decision_time"]).as_unit("ns").asi8,
            zip(best["instrument_name"], best["reward"], strict=True),
            strict=True,
        )
    )
    return [by_t[int(t)] for t in times.as_unit("ns").asi8]


def _labels(rows: list[tuple[int, str | None, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "decision_time": [T0 + pd.Timedelta(hours=4 * t) for t, _, _ in rows],
            "instrument_name": [n for _, n, _ in rows],
            "reward": [r for _, _, r in rows],
        }
    )


def _same(a: list[tuple], b: list[tuple]) -> bool:
    def norm(x: object) -> object:
        return None if x is None or (isinstance(x, float) and x != x) else x

    return [tuple(map(norm, x)) for x in a] == [tuple(map(norm, x)) for x in b]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from(["BTC-5JAN24-45000-C", "BTC-5JAN24-46000-C", "BTC-X", None]),
            # few values: ties, and NaN that is never the best unless alone
            st.sampled_from([0.0, 1.5, -2.0, 1.5, float("nan")]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_best_per_decision_is_the_groupby_idxmax(rows: list) -> None:
    labels = _labels(rows)
    times = pd.DatetimeIndex(sorted(set(labels["decision_time"])))
    runner = SimpleNamespace()
    by_time = labels.groupby("decision_time")["reward"]
    if by_time.count().min() == 0:  # a time with only missing rewards: both refuse
        with pytest.raises(ValueError, match="all NA"):
            ExperimentRunner._index_labels(runner, labels, times)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="all NA"):
            _reference(labels, times)
        return
    ExperimentRunner._index_labels(runner, labels, times)  # type: ignore[arg-type]
    assert _same(runner._best, _reference(labels, times))
    for (t, name), r in runner._reward_of.items():
        assert isinstance(t, int)
        got = labels[
            (labels["decision_time"] == pd.Timestamp(t, tz="UTC"))
            & (
                labels["instrument_name"].isna()
                if name is None or name != name
                else labels["instrument_name"] == name
            )
        ]["reward"].to_numpy()
        assert (np.isnan(r) and np.isnan(got[-1])) or r == got[-1]
