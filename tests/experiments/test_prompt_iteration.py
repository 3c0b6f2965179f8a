"""Prompt iteration: edit one prompt, re-run, only its decisions call the model; then compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.experiments.config import parse_config
from harness.experiments.runner import run_experiment
from harness.reports.compare import compare_runs
from tests.llm.scripted_server import ScriptedServer, first_enum_or_nothing, sell

KEY_ENV = "HARNESS_ITER_KEY"
MARKER = "Prefer the furthest strike offered."
PROMPTS = Path(__file__).parents[2] / "prompts"


def _responder(request: dict) -> object:
    """Sell the last candidate when the prompt carries MARKER, else the first."""
    text = " ".join(m["content"] for m in request["messages"])
    if MARKER in text:
        names = request["response_format"]["json_schema"]["schema"]["properties"][
            "instrument_name"
        ]["anyOf"][0]["enum"]
        return sell(names[-1])
    return first_enum_or_nothing(request)


def _config(tmp: Path, url: str, prompts_dir: Path) -> dict:
    llm = {
        "model": "gpt-4o-mini",
        "base_url": url,
        "api_key_env": KEY_ENV,
        "seed": 0,
        "prompts_dir": str(prompts_dir),
    }
    return {
        "name": "iter",
        "simulation": {
            "underlying": "ETH",
            "start": "2024-05-01",
            "end": "2024-06-05",
            "decision_interval_bars": 12,
        },
        "policies": [
            {"name": "always_sell", "type": "rule", "rule": "always_sell"},
            {"name": "llm_a", "type": "llm", "prompt": "alpha", **llm},
            {"name": "llm_b", "type": "llm", "prompt": "beta", **llm},
        ],
        "cache": {"dir": str(tmp / "cache")},
        "bootstrap_resamples": 200,
    }


def _rows(run_dir: Path, policy: str) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    return [r for r in rows if r["policy"] == policy]


def test_editing_one_prompt_recalls_only_its_decisions_and_compare_finds_the_changes(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-iteration-test")
    pdir = tmp_path / "prompts"
    pdir.mkdir()
    for stem in ("alpha", "beta"):
        for part in ("system", "user"):
            shutil.copy(PROMPTS / f"covered_call_v1.{part}.j2", pdir / f"{stem}.{part}.j2")
    # alpha and beta start as the same text: their requests are identical and share the cache
    with ScriptedServer(default=_responder) as srv:
        cfg = parse_config(_config(tmp_path, srv.url, pdir))
        first = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
        asked = sum(1 for r in _rows(first.run_dir, "llm_b") if r["candidates"])
        assert srv.request_count == asked
        # edit prompt beta only
        user = pdir / "beta.user.j2"
        user.write_text(user.read_text() + "\n" + MARKER + "\n")
        srv.reset_counts()
        second = run_experiment(cfg, out_dir=tmp_path / "runs2", quiet=True)
        assert srv.request_count == asked, "only the edited prompt's decisions may call the model"
    usage = second.llm_usage
    assert usage["llm_a"]["calls_made"] == 0 and usage["llm_a"]["served_from_cache"] == asked
    assert usage["llm_b"]["calls_made"] == asked
    manifest = json.loads((second.run_dir / "manifest.json").read_text())
    first_manifest = json.loads((first.run_dir / "manifest.json").read_text())
    assert manifest["prompt_ids"]["llm_b"] != first_manifest["prompt_ids"]["llm_b"]
    assert manifest["prompt_ids"]["llm_a"] == first_manifest["prompt_ids"]["llm_a"]

    cmp = compare_runs(first.run_dir, second.run_dir, policy="llm_b")
    (pc,) = cmp.policies
    a_rows = {r["decision_time"]: r for r in _rows(first.run_dir, "llm_b")}
    b_rows = {r["decision_time"]: r for r in _rows(second.run_dir, "llm_b")}
    expected_changed = sorted(
        t for t in a_rows if a_rows[t]["instrument_name"] != b_rows[t]["instrument_name"]
    )
    assert expected_changed, "the edit should change some choices"
    assert [c.decision_time.isoformat() for c in pc.changed] == expected_changed
    assert all(len(a_rows[t]["candidates"]) > 1 for t in expected_changed)
    diffs = [b_rows[t]["reward"] - a_rows[t]["reward"] for t in a_rows]
    assert pc.mean_change == pytest.approx(sum(diffs) / len(diffs))
    assert pc.ci_low <= pc.mean_change <= pc.ci_high
    assert pc.calls_made_b == asked
    assert compare_runs(first.run_dir, second.run_dir, policy="llm_a").policies[0].changed == ()
    # the CLI prints the comparison and writes it next to run B
    assert main(["compare", str(first.run_dir), str(second.run_dir), "--policy", "llm_b"]) == 0
    assert (second.run_dir / "run_comparison.html").is_file()
