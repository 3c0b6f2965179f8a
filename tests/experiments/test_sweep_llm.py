"""LLM trials in a sweep ask each distinct prompt once (one cache writer), via a scripted server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.experiments.sweep import run_sweep
from tests.experiments.sweep_fixtures import write_sweep
from tests.llm.scripted_server import ScriptedServer, first_enum_or_nothing

KEY_ENV = "HARNESS_SWEEP_KEY"
PROMPTS = Path(__file__).parents[2] / "prompts"


def _rows(trial_dir: Path, policy: str) -> list[dict]:
    rows = [json.loads(x) for x in (trial_dir / "decisions.jsonl").read_text().splitlines()]
    return [r for r in rows if r["policy"] == policy]


def test_llm_sweep_makes_one_request_per_distinct_prompt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-sweep-test")
    pdir = tmp_path / "prompts"
    pdir.mkdir()
    for stem in ("alpha", "beta"):
        for part in ("system", "user"):
            shutil.copy(PROMPTS / f"covered_call_v1.{part}.j2", pdir / f"{stem}.{part}.j2")
    with (pdir / "beta.system.j2").open("a") as fh:
        fh.write("\nPrefer the nearest strike offered.\n")
    with ScriptedServer(default=first_enum_or_nothing) as srv:
        base = {
            "name": "llm-base",
            "simulation": {
                "underlying": "ETH",
                "start": "2024-05-01",
                "end": "2024-05-25",
                "decision_interval_bars": 12,
            },
            "policies": [
                {"name": "always_sell", "type": "rule", "rule": "always_sell"},
                {
                    "name": "llm_a",
                    "type": "llm",
                    "model": "gpt-4o-mini",
                    "base_url": srv.url,
                    "api_key_env": KEY_ENV,
                    "seed": 0,
                    "prompt": "alpha",
                    "prompts_dir": str(pdir),
                },
            ],
            "cache": {"dir": str(tmp_path / "cache")},
            "bootstrap_resamples": 200,
        }
        sweep = {
            "name": "llm-grid",
            "base": "base.yaml",
            "axes": {
                "policies.llm_a.prompt": ["alpha", "beta"],
                "reward.drawdown_penalty": [0.0, 0.5],
            },
        }
        path = write_sweep(tmp_path, sweep, base)
        summary = run_sweep(path, workers=2, out_dir=tmp_path / "runs", quiet=True)
        assert summary.n_complete == 4
        data = json.loads((summary.sweep_dir / "sweep.json").read_text())
        dirs = {t["index"]: summary.sweep_dir / "trials" / t["trial_id"] for t in data["trials"]}
        asked = {i: [r for r in _rows(d, "llm_a") if r["candidates"]] for i, d in dirs.items()}
        # trials 0, 1 use prompt alpha, 2, 3 beta; the second of each pair only hits the cache
        distinct = len(asked[0]) + len(asked[2])
        assert distinct > 0
        assert srv.request_count == distinct
        for i in (1, 3):
            assert all(r["llm"]["cache_hit"] for r in asked[i])
        assert {r["instrument_name"] for r in asked[0]} == {r["instrument_name"] for r in asked[1]}
