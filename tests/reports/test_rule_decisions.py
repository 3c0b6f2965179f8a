"""The report's decisions table from a runner's arrays equals the one made of its rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.reports.rule_decisions as rule_decisions
from harness.experiments.config import parse_config
from harness.experiments.runner import ExperimentRunner
from harness.reports.report import (
    RunFolder,
    _identical_trade_pairs,
    _identical_trades,
    decisions_frame,
    write_report,
)
from harness.reports.rule_decisions import PlainChoices, plain_decisions_frame
from tests.experiments.sweep_fixtures import BASE

T0 = pd.Timestamp("2024-01-01", tz="UTC")
_float = st.floats(allow_nan=True, allow_infinity=True)
_choice = st.one_of(st.none(), st.just(""), st.sampled_from(["BTC-5JAN24-45000-C", 'é"x']))


@st.composite
def _runs(draw: st.DrawFn) -> tuple[list[str], list[int], list[float], list[PlainChoices]]:
    n = draw(st.integers(0, 6))
    hours = draw(
        st.one_of(
            st.lists(st.integers(0, 50), min_size=n, max_size=n, unique=True).map(sorted),
            st.lists(st.integers(0, 50), min_size=n, max_size=n),  # unsorted or repeated
        )
    )
    times = [(T0 + pd.Timedelta(hours=h)).isoformat() for h in hours]
    names = draw(st.lists(st.sampled_from(["iv_rich", "always_sell", "Z", "ä", "a b"]), max_size=3))
    policies = [
        PlainChoices(
            p,
            draw(st.lists(_choice, min_size=n, max_size=n)),
            np.array(draw(st.lists(_float, min_size=n, max_size=n)), dtype=float),
        )
        for p in names
    ]
    counts = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    best = draw(st.lists(_float, min_size=n, max_size=n))
    return times, counts, best, policies


def _rows(times, counts, best, policies) -> list[dict[str, Any]]:
    """The decisions.jsonl objects a runner writes for these plain choices (file order)."""
    return [
        {
            "decision_time": t,
            "policy": p.policy,
            "spot": 1.0,
            "spot_stale": False,
            "state": {},
            "candidates": ["BTC-X"] * k,
            "action": "SELL_CALL" if c else "DO_NOTHING",
            "instrument_name": c,
            "valid": True,
            "invalid_reason": None,
            "error": None,
            "reward": float(r),
            "best_reward": b,
            "best_instrument": None,
            "regret": b - float(r),
            "llm": None,
        }
        for p in policies
        for t, k, b, c, r in zip(times, counts, best, p.choices, p.rewards, strict=True)
    ]


@settings(max_examples=200, deadline=None)
@given(_runs())
def test_the_table_of_plain_choices_is_the_table_of_their_rows(run) -> None:
    with np.errstate(all="ignore"):
        want = decisions_frame(_rows(*run))
    pd.testing.assert_frame_equal(plain_decisions_frame(*run), want, check_exact=True)


def test_a_rule_run_reports_from_its_arrays_as_from_its_folder(tmp_path: Path, monkeypatch) -> None:
    """The runner's table is its rows' table, and report.md equals `harness report`'s."""
    made: list[pd.DataFrame] = []

    def spy(*args: Any) -> pd.DataFrame:
        made.append(plain_decisions_frame(*args))
        return made[-1]

    monkeypatch.setattr(rule_decisions, "plain_decisions_frame", spy)
    runner = ExperimentRunner(
        parse_config(BASE, tmp_path), out_dir=tmp_path, quiet=True, html_report=False
    )
    run_dir = runner.run().run_dir
    (table,) = made  # the fast path ran
    rows = runner.written_decisions()
    assert rows is not None and len(rows) > 100
    pd.testing.assert_frame_equal(table, decisions_frame(rows), check_exact=True)
    from_memory = (run_dir / "report.md").read_bytes()
    write_report(run_dir, html=False)  # every file read back
    assert (run_dir / "report.md").read_bytes() == from_memory


def test_a_run_with_an_invalid_choice_builds_its_table_from_its_rows(tmp_path: Path) -> None:
    """A row that is not plain (here: invalid) keeps the rows' path, with the same report."""
    cfg = dict(BASE, policies=[*BASE["policies"], _INVALID])
    runner = ExperimentRunner(
        parse_config(cfg, tmp_path), out_dir=tmp_path, quiet=True, html_report=False
    )
    run_dir = runner.run().run_dir
    assert "invalid" not in runner._plain and "always_sell" in runner._plain
    from_memory = (run_dir / "report.md").read_bytes()
    write_report(run_dir, html=False)
    assert (run_dir / "report.md").read_bytes() == from_memory
    assert b"(invalid)" in from_memory or b"Invalid" in from_memory


_INVALID = {"name": "invalid", "type": "python", "ref": "tests.reports.test_rule_decisions:stray"}


def stray(state: Any, candidates: Any) -> Any:
    """A python policy that sells a call nobody offered every other decision."""
    if not candidates:
        return None
    return None if state.time.hour % 8 else type("Stray", (), {"instrument_name": "NOPE"})()


@pytest.mark.parametrize("empty", [True, False])
def test_no_policies_or_no_times(empty: bool) -> None:
    times = [] if empty else [T0.isoformat()]
    choices = [] if empty else [PlainChoices("a", [None], np.array([0.0]))]
    got = plain_decisions_frame(times, [0] * len(times), [0.0] * len(times), choices)
    pd.testing.assert_frame_equal(
        got, decisions_frame([] if empty else _rows(times, [0], [0.0], choices))
    )


def test_identical_trades_read_the_same_from_memory_and_from_trades_csv(tmp_path: Path) -> None:
    opened = pd.date_range("2024-01-01", periods=4, freq="D", tz="UTC")
    names = ["BTC-5JAN24-45000-C", "BTC-6JAN24-45000-C", "BTC-7JAN24-45000-C", "BTC-8JAN24-4-C"]
    same = pd.DataFrame({"open_time": opened, "instrument_name": names})
    trades = pd.concat(
        [
            same.assign(policy="a"),
            same.assign(policy="b"),
            same.assign(policy="c", open_time=opened + pd.Timedelta(hours=1)),
            same.iloc[:3].assign(policy="d"),
        ],
        ignore_index=True,
    )[["policy", "open_time", "instrument_name"]]
    trades.to_csv(tmp_path / "trades.csv", index=False)
    config = {"policies": [{"name": p, "rule": "always_sell"} for p in "abcd"]}
    manifest = {"policies": list("abcd")}

    def folder(t: pd.DataFrame) -> RunFolder:
        return RunFolder(
            tmp_path, manifest, decisions_frame([]), t, pd.DataFrame(), {}, {}, (), config
        )

    memory, disk = folder(trades), folder(pd.read_csv(tmp_path / "trades.csv"))
    assert isinstance(memory.trades["open_time"].dtype, pd.DatetimeTZDtype)
    assert _identical_trade_pairs(memory) == _identical_trade_pairs(disk) == [("a", "b")]
    assert _identical_trades(memory) == _identical_trades(disk)
    assert "identical portfolio trades (4)" in _identical_trades(memory)[0]
