"""Sweeps end to end: backends agree, re-runs skip and resume, outputs and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.experiments.sweep import SweepRunner, run_sweep
from harness.experiments.sweep_backends import TrialTask, config_json, run_trial
from harness.experiments.sweep_outputs import TrialRecord, build_leaderboard, trial_board
from tests.experiments.sweep_fixtures import GRID, trial_errors, write_sweep

ROOT = Path(__file__).parents[2]


def _board(sweep_dir: Path) -> pd.DataFrame:
    board = pd.read_parquet(sweep_dir / "leaderboard.parquet")
    return board.drop(columns=["trial_id"]).sort_values(["trial", "policy"]).reset_index(drop=True)


def _decision_keys(trial_dir: Path) -> list[tuple[str, str]]:
    rows = [json.loads(x) for x in (trial_dir / "decisions.jsonl").read_text().splitlines()]
    return [(r["policy"], r["decision_time"]) for r in rows]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("local")
    path = write_sweep(folder)
    summary = run_sweep(path, workers=2, out_dir=folder / "runs", quiet=True)
    assert (summary.n_trials, summary.n_complete, summary.n_failed) == (4, 4, 0), trial_errors(
        summary.sweep_dir
    )
    return summary.sweep_dir


def test_outputs_of_a_sweep(local_sweep: Path) -> None:
    data = json.loads((local_sweep / "sweep.json").read_text())
    assert data["status"] == "complete"
    assert data["axes"] == ["simulation.target_delta", "simulation.target_dte"]
    assert [t["status"] for t in data["trials"]] == ["complete"] * 4
    trials = sorted((local_sweep / "trials").iterdir())
    assert sorted(p.name.rsplit("-", 1)[1] for p in trials) == ["t000", "t001", "t002", "t003"]
    for t in trials:  # normal run folders, data and report.md, no HTML charts
        assert (t / "manifest.json").exists() and (t / "report.md").exists()
        assert not (t / "report.html").exists() and not (t / "figures").exists()
    board = pd.read_parquet(local_sweep / "leaderboard.parquet")
    assert len(board) == 4 * 3
    assert set(board["policy"]) == {"always_sell", "iv_rich", "oracle"}
    assert not board.loc[board["policy"] == "oracle", "candidate"].any()
    cand = board[board["candidate"]]
    # the leaderboard ranks candidates by mean reward; adjusted p-values never shrink
    assert cand["mean_reward"].is_monotonic_decreasing
    assert (cand["p_holm"] >= cand["p_value"] - 1e-12).all()
    assert (cand["p_bh"] <= cand["p_holm"] + 1e-12).all()
    # the run's own paired comparison is carried over
    t0 = next(p for p in trials if p.name.endswith("-t000"))
    pairs = json.loads((t0 / "comparison.json").read_text())["pairs"]
    row = board[(board["trial"] == 0) & (board["policy"] == "iv_rich")].iloc[0]
    iv = next(p for p in pairs if p["policy"] == "iv_rich")
    assert row["diff_vs_baseline"] == pytest.approx(iv["mean_diff"])
    sel = data["selection"]
    assert sel["winner"]["policy"] == cand.iloc[0]["policy"]
    assert sel["n_candidates"] == 8
    assert 0.0 <= sel["deflated_sharpe"]["dsr"] <= 1.0
    assert 0.0 <= sel["pbo"]["pbo"] <= 1.0
    html = (local_sweep / "sweep_report.html").read_text()
    assert data["headline"].split(" in trial")[0] in html
    assert "Heatmap: iv_rich" in html and "Deflated Sharpe Ratio" in html
    assert "survive" in data["headline"]


def test_leaderboard_from_worker_summaries_equals_one_read_from_the_folders(
    local_sweep: Path,
) -> None:
    # the pool's workers summarized their trials (`TrialOutcome.board`); reading every trial
    # folder afresh in the driver must give the very same leaderboard and reward series
    data = json.loads((local_sweep / "sweep.json").read_text())
    records = [
        TrialRecord(t["index"], t["trial_id"], t["point"], local_sweep / "trials" / t["trial_id"])
        for t in data["trials"]
    ]
    board, series = build_leaderboard(records, data["axes"])
    pd.testing.assert_frame_equal(board, pd.read_parquet(local_sweep / "leaderboard.parquet"))
    assert len(series) == 12 and all(len(s) > 0 for s in series.values())


def test_a_trial_outcome_carries_the_trial_board(tmp_path: Path) -> None:
    path = write_sweep(tmp_path)
    runner = SweepRunner(path, workers=1, out_dir=tmp_path / "runs", quiet=True)
    trial = runner.sweep.trials[0]
    folder = runner._trial_dir(trial)
    outcome = run_trial(TrialTask(0, str(folder), config_json(trial.config), False))
    assert outcome.status == "complete" and outcome.board is not None, outcome.error
    again = trial_board(folder)
    assert [e["policy"] for e in outcome.board.entries] == ["always_sell", "iv_rich", "oracle"]
    pd.testing.assert_frame_equal(pd.DataFrame(outcome.board.entries), pd.DataFrame(again.entries))
    for name, r in again.rewards.items():
        pd.testing.assert_series_equal(outcome.board.rewards[name], r)
    # a failed trial carries none (the driver reports its error instead)
    bad = run_trial(TrialTask(1, str(tmp_path / "nowhere"), "{not json", False))
    assert bad.status == "failed" and bad.board is None


def test_ray_backend_gives_the_same_leaderboard(
    ray_session: None, local_sweep: Path, tmp_path: Path
) -> None:
    path = write_sweep(tmp_path)
    summary = run_sweep(path, backend="ray", out_dir=tmp_path / "runs", quiet=True)
    assert summary.n_complete == 4
    pd.testing.assert_frame_equal(_board(summary.sweep_dir), _board(local_sweep))
    for t in (summary.sweep_dir / "trials").iterdir():  # files came back from the workers
        assert (t / "decisions.jsonl").exists() and (t / "report.md").exists()


def test_the_ray_command_warms_the_workers_and_keeps_the_callers_ray(
    ray_session: None, local_sweep: Path, tmp_path: Path
) -> None:
    # in-process (one Ray per test session): `start_ray` finds the session's Ray, warms two
    # workers, and the sweep leaves that Ray running because it did not start it
    import ray

    from harness.cli import main

    path = write_sweep(tmp_path)
    out = tmp_path / "runs"
    assert main(["sweep", str(path), "--backend", "ray", "--out", str(out), "-q"]) == 0
    assert ray.is_initialized()
    (sweep_dir,) = out.iterdir()
    pd.testing.assert_frame_equal(_board(sweep_dir), _board(local_sweep))


def test_the_command_with_two_workers_gives_the_same_leaderboard(
    local_sweep: Path, tmp_path: Path
) -> None:
    # the console path: the worker server is started before the driver imports the runner
    path = write_sweep(tmp_path)
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(path), "--workers", "2"]
    done = subprocess.run([*cmd, "--out", str(out), "-q"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (sweep_dir,) = out.iterdir()
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "complete"
    pd.testing.assert_frame_equal(_board(sweep_dir), _board(local_sweep))


def test_resume_after_killing_a_sweep_midway(local_sweep: Path, tmp_path: Path) -> None:
    path = write_sweep(tmp_path)
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(path), "--workers", "1"]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            state = list(out.glob("*/sweep.json"))
            if state:
                trials = json.loads(state[0].read_text()).get("trials", [])
                if any(t["status"] == "complete" for t in trials):
                    break
            if proc.poll() is not None:
                pytest.fail("the sweep finished before it could be killed")
            time.sleep(0.05)
        else:
            pytest.fail("no trial finished in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = json.loads(state[0].read_text())
    assert any(t["status"] != "complete" for t in killed["trials"])

    summary = run_sweep(path, workers=1, out_dir=out, quiet=True)
    assert summary.sweep_dir == state[0].parent  # the same sweep folder continues
    assert summary.n_already_done >= 1
    assert summary.n_complete == 4
    pd.testing.assert_frame_equal(_board(summary.sweep_dir), _board(local_sweep))
    trials = sorted((summary.sweep_dir / "trials").iterdir())
    assert len(trials) == 4  # no second folder for the interrupted trial
    for t in trials:
        keys = _decision_keys(t)
        assert len(keys) == len(set(keys))

    # an interrupted trial (no manifest, half its decisions, a torn last line) resumes
    victim = trials[1]
    (victim / "manifest.json").unlink()
    lines = (victim / "decisions.jsonl").read_text().splitlines()
    half = lines[: len(lines) // 2]
    (victim / "decisions.jsonl").write_text("\n".join(half) + "\n" + lines[-1][:20])
    again = run_sweep(path, workers=1, out_dir=out, quiet=True)
    assert again.n_already_done == 3
    manifest = json.loads((victim / "manifest.json").read_text())
    assert manifest["resumed_decisions"] == len(half)
    pd.testing.assert_frame_equal(_board(again.sweep_dir), _board(local_sweep))
    # --fresh starts a new folder (nothing run here)
    assert SweepRunner(path, out_dir=out, quiet=True, fresh=True).dir != again.sweep_dir


def test_cli_reports_sweep_file_errors_before_running(tmp_path: Path, capsys) -> None:
    spec = dict(GRID, axes={"simulation.target_delta": [0.2], "policies.nope.model": ["m"]})
    path = write_sweep(tmp_path, spec)
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err.replace("\n", "") and "policies.nope.model" in err
    assert not (tmp_path / "runs").exists()
