"""LLM trials in a sweep ask each distinct prompt once (one cache writer), via a scripted server.

With several workers the driver prefetches every request into the cache, then the replays run
in the workers with the cache opened read-only: the same answers as a sequential sweep.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.experiments.config import parse_config
from harness.experiments.runner import create_run_dir, run_config_text
from harness.experiments.sweep import run_sweep
from harness.experiments.sweep_backends import DRIVER, TrialTask, config_json, run_trial
from tests.experiments.sweep_fixtures import trial_errors, write_sweep
from tests.llm.scripted_server import ScriptedServer, first_enum_or_nothing

KEY_ENV = "HARNESS_SWEEP_KEY"
PROMPTS = Path(__file__).parents[2] / "prompts"
# fields of a decision row that say how it was served (timing, cache), not what was decided
SERVING = ("cache_hit", "calls_made", "latency_s", "cost_usd", "cost_saved_usd", "replayed")


def _rows(trial_dir: Path, policy: str) -> list[dict]:
    rows = [json.loads(x) for x in (trial_dir / "decisions.jsonl").read_text().splitlines()]
    return [r for r in rows if r["policy"] == policy]


def _prompts(tmp_path: Path) -> Path:
    pdir = tmp_path / "prompts"
    pdir.mkdir(exist_ok=True)
    for stem in ("alpha", "beta"):
        for part in ("system", "user"):
            shutil.copy(PROMPTS / f"covered_call_v1.{part}.j2", pdir / f"{stem}.{part}.j2")
    with (pdir / "beta.system.j2").open("a") as fh:
        fh.write("\nPrefer the nearest strike offered.\n")
    return pdir


def _sweep(
    tmp_path: Path, pdir: Path, workers: int, backend: str = "local"
) -> tuple[int, dict[int, Path], Path]:
    """Run the 2 prompts x 2 penalties sweep against a fresh server and cache; (requests,
    trial folders by index, sweep folder)."""
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
        summary = run_sweep(
            path,
            workers=workers,
            backend=backend,  # type: ignore[arg-type]
            out_dir=tmp_path / "runs",
            quiet=True,
        )
        assert summary.n_complete == 4, trial_errors(summary.sweep_dir)
        data = json.loads((summary.sweep_dir / "sweep.json").read_text())
        dirs = {t["index"]: summary.sweep_dir / "trials" / t["trial_id"] for t in data["trials"]}
        return srv.request_count, dirs, summary.sweep_dir


def _decided(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    if row.get("llm"):
        row["llm"] = {k: v for k, v in row["llm"].items() if k not in SERVING}
    return row


@pytest.fixture(scope="module")
def parallel(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[int, Path], Path]:
    tmp = tmp_path_factory.mktemp("llm-parallel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, "sk-sweep-test")
        return _sweep(tmp, _prompts(tmp), workers=2)


def test_llm_sweep_makes_one_request_per_distinct_prompt(parallel) -> None:
    requests, dirs, sweep_dir = parallel
    asked = {i: [r for r in _rows(d, "llm_a") if r["candidates"]] for i, d in dirs.items()}
    # trials 0, 1 use prompt alpha, 2, 3 beta: the requests of the two distinct prompts only
    distinct = len(asked[0]) + len(asked[2])
    assert distinct > 0
    assert requests == distinct
    # the driver asked them all first; every trial then replayed from the cache in a worker
    prefetch = json.loads((sweep_dir / "sweep.json").read_text())["llm_prefetch"]
    assert prefetch["calls_made"] == distinct
    assert prefetch["replayed_in_workers"] == 4 and prefetch["run_in_driver"] == 0
    for i in dirs:
        assert all(r["llm"]["cache_hit"] for r in asked[i])
    assert {r["instrument_name"] for r in asked[0]} == {r["instrument_name"] for r in asked[1]}


def test_parallel_replays_equal_a_sequential_sweep(parallel, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-sweep-test")
    _, par_dirs, _ = parallel
    requests, seq_dirs, sweep_dir = _sweep(tmp_path, _prompts(tmp_path), workers=1)
    assert json.loads((sweep_dir / "sweep.json").read_text())["llm_prefetch"] is None
    assert requests == sum(
        len([r for r in _rows(seq_dirs[i], "llm_a") if r["candidates"]]) for i in (0, 2)
    )
    for i, d in seq_dirs.items():
        for policy in ("always_sell", "llm_a"):
            seq = [_decided(r) for r in _rows(d, policy)]
            par = [_decided(r) for r in _rows(par_dirs[i], policy)]
            assert seq == par
        seq_m = json.loads((d / "metrics.json").read_text())
        par_m = json.loads((par_dirs[i] / "metrics.json").read_text())
        for policy, m in seq_m.items():
            for k, v in m.items():
                # the sequential first trial paid (live or batch); a replay never does
                if not k.startswith("cost_usd"):
                    assert par_m[policy][k] == pytest.approx(v, nan_ok=True), (i, policy, k)


def _same_decisions(a: dict[int, Path], b: dict[int, Path]) -> None:
    for i, d in a.items():
        for policy in ("always_sell", "llm_a"):
            assert [_decided(r) for r in _rows(d, policy)] == [
                _decided(r) for r in _rows(b[i], policy)
            ]


def test_ray_replays_llm_trials_from_the_drivers_prefetch(
    ray_session: None, parallel, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-sweep-test")
    requests, dirs, sweep_dir = _sweep(tmp_path, _prompts(tmp_path), workers=2, backend="ray")
    prefetch = json.loads((sweep_dir / "sweep.json").read_text())["llm_prefetch"]
    assert requests == prefetch["calls_made"] == parallel[0]
    assert prefetch["replayed_in_workers"] == 4
    _same_decisions(dirs, parallel[1])


def test_a_replay_without_the_answers_goes_back_to_the_driver(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "name": "llm-miss",
            "simulation": {
                "start": "2024-05-01",
                "end": "2024-05-12",
                "decision_interval_bars": 24,
            },
            "policies": [
                {
                    "name": "llm_a",
                    "type": "llm",
                    "model": "gpt-4o-mini",
                    "base_url": "http://127.0.0.1:9/v1",  # never contacted: read-only replay
                    "api_key_env": KEY_ENV,
                }
            ],
            "cache": {"dir": str(tmp_path / "empty-cache")},
            "bootstrap_resamples": 100,
        }
    )
    d = create_run_dir(tmp_path / "trials", "t000")
    (d / "config.yaml").write_text(run_config_text(cfg))
    outcome = run_trial(TrialTask(0, str(d), config_json(cfg), False, llm_replay=True))
    assert outcome.status == DRIVER
    assert "llm_a" in (outcome.error or "")
    assert not (d / "manifest.json").exists()  # not finished: a re-run runs it again
