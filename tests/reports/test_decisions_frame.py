"""The report's decisions table: one typed row per decisions.jsonl object, rule and LLM alike."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from harness.experiments.config import parse_config
from harness.experiments.runner import run_experiment
from harness.reports.report import (
    DECISION_COLUMNS,
    _decision_columns,
    _num,
    choice_label,
    decisions_frame,
)
from tests.experiments.sweep_fixtures import BASE

RULE = {
    "decision_time": "2024-01-01T04:00:00+00:00",
    "policy": "always_sell",
    "candidates": [{"instrument_name": "BTC-5JAN24-45000-C"}],
    "action": "SELL_CALL",
    "instrument_name": "BTC-5JAN24-45000-C",
    "valid": True,
    "error": None,
    "reward": 12.5,
    "best_reward": 20.0,
    "regret": 7.5,
    "llm": None,
}
LLM = {
    **RULE,
    "policy": "gpt",
    "action": "DO_NOTHING",
    "instrument_name": None,
    "valid": False,
    "error": "timeout",
    "reward": float("inf"),  # not finite: shown as missing
    "best_reward": 3,  # an int in the file
    "regret": None,
    "llm": {
        "rationale": "IV is cheap",
        "cost_usd": 0.002,
        "cost_saved_usd": None,
        "calls_made": 1,
        "cache_hit": True,
        "prompt_id": "covered_call_v1",
        "model": "gpt-4o-mini",
    },
}


def _row(df: pd.DataFrame, policy: str) -> dict[str, Any]:
    return df[df["policy"] == policy].iloc[0].to_dict()


def test_rule_and_llm_rows_have_every_column_typed() -> None:
    notes: list[str] = []
    df = decisions_frame([RULE, LLM, None, {"policy": "x"}], notes=notes)
    assert list(df.columns) == DECISION_COLUMNS
    assert notes == ["decisions.jsonl: 2 unreadable line(s) skipped."]
    rule = _row(df, "always_sell")
    assert rule["n_candidates"] == 1.0 and rule["choice"] == "BTC-5JAN24-45000-C"
    assert rule["label"] == "BTC-5JAN24-45000-C" and rule["valid"] and pd.isna(rule["error"])
    assert (rule["reward"], rule["best_reward"], rule["regret"]) == (12.5, 20.0, 7.5)
    assert not rule["is_llm"] and not rule["llm_cache_hit"]
    assert (rule["llm_cost_usd"], rule["llm_cost_saved_usd"], rule["llm_calls_made"]) == (0, 0, 0)
    assert pd.isna(rule["rationale"]) and pd.isna(rule["prompt_id"]) and pd.isna(rule["model"])
    llm = _row(df, "gpt")
    assert llm["choice"] == "DO_NOTHING" and llm["label"] == "DO_NOTHING (invalid) (error)"
    assert llm["error"] == "timeout" and not llm["valid"]
    assert math.isnan(llm["reward"]) and llm["best_reward"] == 3.0 and math.isnan(llm["regret"])
    assert llm["is_llm"] and llm["llm_cache_hit"] and llm["rationale"] == "IV is cheap"
    assert (llm["llm_cost_usd"], llm["llm_cost_saved_usd"], llm["llm_calls_made"]) == (
        0.002,
        0.0,
        1.0,
    )
    assert (llm["prompt_id"], llm["model"]) == ("covered_call_v1", "gpt-4o-mini")
    assert str(df["decision_time"].dtype).endswith(", UTC]")
    assert df["valid"].dtype == bool and df["reward"].dtype == float


def test_an_empty_llm_object_is_a_rule_row_and_duplicates_keep_the_last() -> None:
    later = {**RULE, "reward": 1.0, "llm": {}}
    notes: list[str] = []
    df = decisions_frame([RULE, later], notes=notes)
    assert len(df) == 1 and df["reward"].iloc[0] == 1.0 and not df["is_llm"].iloc[0]
    assert notes == ["decisions.jsonl: 1 duplicate (decision_time, policy) row(s) dropped."]


def test_no_rows_gives_the_columns() -> None:
    df = decisions_frame([])
    assert list(df.columns) == DECISION_COLUMNS and df.empty


def _decision_row(obj: dict[str, Any]) -> tuple[Any, ...]:
    """Reference: one decisions.jsonl object as a tuple of DECISION_COLUMNS, field by field."""
    llm = obj.get("llm")
    choice = choice_label(obj.get("action"), obj.get("instrument_name"))
    valid = obj.get("valid") is not False
    error = obj.get("error")
    cands = obj.get("candidates")
    head = (
        float(len(cands)) if isinstance(cands, list) else math.nan,
        llm.get("rationale") if isinstance(llm, dict) else None,
        obj.get("decision_time"),
        obj.get("policy"),
        obj.get("action"),
        obj.get("instrument_name"),
        choice,
        choice + ("" if valid else " (invalid)") + (" (error)" if error else ""),
        valid,
        str(error) if error else None,
        _num(obj.get("reward")),
        _num(obj.get("best_reward")),
        _num(obj.get("regret")),
    )
    if not isinstance(llm, dict) or not llm:
        return (*head, False, 0.0, 0.0, 0.0, False, None, None)
    return (
        *head,
        True,
        _num(llm.get("cost_usd"), 0.0),
        _num(llm.get("cost_saved_usd"), 0.0),
        _num(llm.get("calls_made"), 0.0),
        bool(llm.get("cache_hit", False)),
        llm.get("prompt_id"),
        llm.get("model"),
    )


_maybe_num = st.one_of(
    st.none(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True)
)
_decision_obj = st.fixed_dictionaries(
    {
        "decision_time": st.sampled_from(
            ["2024-01-01T00:00:00+00:00", "2024-01-01T04:00:00+00:00"]
        ),
        "policy": st.sampled_from(["always_sell", "iv_rich"]),
        "action": st.sampled_from(["SELL_CALL", "DO_NOTHING", None, "BUY"]),
        "instrument_name": st.one_of(st.none(), st.text(max_size=8)),
        "valid": st.one_of(st.booleans(), st.none()),
        "error": st.one_of(st.none(), st.just(""), st.text(max_size=8)),
        "reward": _maybe_num,
        "best_reward": _maybe_num,
        "regret": _maybe_num,
        "llm": st.one_of(
            st.sampled_from([None, {}]),
            st.fixed_dictionaries(
                {"rationale": st.text(max_size=5), "model": st.just("m"), "cost_usd": _maybe_num},
                optional={"cache_hit": st.booleans(), "calls_made": st.integers(0, 3)},
            ),
        ),
    },
    optional={"candidates": st.one_of(st.none(), st.lists(st.just("BTC-X"), max_size=3))},
)


@given(st.lists(_decision_obj, min_size=1, max_size=8))
def test_decision_columns_give_the_frame_of_decision_rows(objs: list[dict[str, Any]]) -> None:
    by_column = pd.DataFrame(_decision_columns(objs), columns=DECISION_COLUMNS)
    by_row = pd.DataFrame([_decision_row(o) for o in objs], columns=DECISION_COLUMNS)
    pd.testing.assert_frame_equal(by_column, by_row)


def test_decision_columns_on_a_run_folder_give_the_frame_of_decision_rows(tmp_path: Path) -> None:
    """A real rule run's decisions.jsonl (many rows, real names and floats)."""
    config = parse_config(BASE, tmp_path)
    run_dir = run_experiment(config, out_dir=tmp_path, quiet=True).run_dir
    objs = [json.loads(x) for x in (run_dir / "decisions.jsonl").open()]
    assert len(objs) > 100
    by_column = pd.DataFrame(_decision_columns(objs), columns=DECISION_COLUMNS)
    by_row = pd.DataFrame([_decision_row(o) for o in objs], columns=DECISION_COLUMNS)
    pd.testing.assert_frame_equal(by_column, by_row)
