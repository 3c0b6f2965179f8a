"""`type: python` policies: the loader, config validation, and a real run with one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.experiments.config import ConfigError, parse_config
from harness.experiments.preflight import check_config
from harness.experiments.runner import run_experiment
from harness.policies.python import PythonPolicyError, load_python_policy

REF = "tests.policies.custom_policy:highest_strike"


def _cfg(tmp: Path, policies: list[dict], **sim) -> dict:
    simulation = {
        "underlying": "BTC",
        "start": "2024-02-01",
        "end": "2024-02-20",
        "timeframe": "1h",
        "decision_interval_bars": 24,
        **sim,
    }
    return {
        "name": "custom",
        "market": {"source": "synthetic", "seed": 3},
        "simulation": simulation,
        "policies": policies,
        "cache": {"dir": str(tmp / "cache")},
        "bootstrap_resamples": 200,
    }


def test_loader_binds_params_and_checks_the_signature() -> None:
    policy = load_python_policy(REF, {"min_iv_rv": 0.5})
    assert policy.__name__ == "highest_strike"
    with pytest.raises(PythonPolicyError, match="must accept"):
        load_python_policy(REF, {"no_such_param": 1})
    with pytest.raises(PythonPolicyError, match="cannot import module"):
        load_python_policy("tests.policies.nope:f")
    with pytest.raises(PythonPolicyError, match="has no 'nope'"):
        load_python_policy("tests.policies.custom_policy:nope")


def test_config_entry_and_bad_ref_shape(tmp_path: Path) -> None:
    ok = parse_config(
        _cfg(tmp_path, [{"name": "mine", "type": "python", "ref": REF, "params": {"min_iv_rv": 0}}])
    )
    assert ok.policies[0].type == "python"
    with pytest.raises(ConfigError, match=r"policies\.0\.ref"):
        parse_config(_cfg(tmp_path, [{"name": "mine", "type": "python", "ref": "no_colon"}]))


def test_preflight_reports_every_problem_before_a_folder_exists(tmp_path: Path) -> None:
    cfg = parse_config(
        _cfg(
            tmp_path,
            [
                {"name": "a", "type": "rule", "rule": "iv_rich", "params": {"thresh": 1}},
                {"name": "b", "type": "python", "ref": REF, "params": {"bad": 1}},
                {"name": "c", "type": "llm", "model": "m", "prompt": "no_such_prompt"},
            ],
            end="2024-02-03",
        )
    )
    with pytest.raises(ConfigError) as exc:
        run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    msg = str(exc.value)
    assert "policies.0 (a): bad parameters for rule 'iv_rich'" in msg
    assert "policies.1 (b)" in msg and "must accept" in msg
    assert "policies.2 (c): prompt 'no_such_prompt' not found" in msg
    assert "shorter than target_dte - dte_tolerance" in msg
    assert not (tmp_path / "runs").exists()
    check_config(parse_config(_cfg(tmp_path, [{"name": "a", "type": "rule", "rule": "iv_rich"}])))


def test_a_run_with_a_python_policy_is_compared_and_reported(tmp_path: Path) -> None:
    cfg = parse_config(
        _cfg(
            tmp_path,
            [
                {"name": "always_sell", "type": "rule", "rule": "always_sell"},
                {"name": "mine", "type": "python", "ref": REF, "params": {"min_iv_rv": -1.0}},
            ],
        )
    )
    s = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    assert s.policies == ["always_sell", "mine"]
    rows = [json.loads(x) for x in (s.run_dir / "decisions.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["policy"] == "mine" and r["candidates"]]
    assert mine and all(r["action"] == "SELL_CALL" for r in mine)
    comparison = json.loads((s.run_dir / "comparison.json").read_text())
    assert [p["policy"] for p in comparison["pairs"]] == ["mine"]
    assert [(p["policy"], p["baseline"]) for p in comparison["all_pairs"]] == [
        ("always_sell", "mine")
    ]
    assert "p_holm" in comparison["all_pairs"][0]
    assert "Per decision," in (s.run_dir / "report.md").read_text()


def test_a_period_without_decisions_fails_in_one_line_and_leaves_no_folder(
    tmp_path: Path,
) -> None:
    from harness.experiments.runner import NoDecisionsError

    cfg = parse_config(
        _cfg(tmp_path, [{"name": "a", "type": "rule", "rule": "always_sell"}], end="2024-02-07")
    )
    with pytest.raises(NoDecisionsError) as exc:
        run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    assert "\n" not in str(exc.value)
    assert "no decision times between 2024-02-01 and 2024-02-07" in str(exc.value)
    assert list((tmp_path / "runs").iterdir()) == []
