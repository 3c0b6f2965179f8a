"""CLI fixes of issue 16: runs housekeeping, cache clear asks, --json, option checks, help text,
one-line errors not wrapped, Ctrl-C prints the resume command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import build_parser, main
from harness.llm.cache import CachedResponse, ResponseCache
from tests.run_fixtures import write_fake_run

ROOT = Path(__file__).parents[1]


def _old(path: Path) -> None:
    """Backdate every file of a folder an hour, so it does not look like a live run."""
    past = time.time() - 3600
    for f in [path, *path.rglob("*")]:
        os.utime(f, (past, past))


def test_runs_list_and_clean_incomplete(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    write_fake_run(runs / "20240601T000000Z-aaaaaa-done")
    dead = runs / "20240602T000000Z-bbbbbb-dead"
    dead.mkdir()
    (dead / "config.yaml").write_text("name: dead\n")
    (dead / "decisions.jsonl").write_text("{}\n{}\n")
    _old(dead)
    live = runs / "20240603T000000Z-cccccc-live"
    live.mkdir()
    (live / "config.yaml").write_text("name: live\n")

    assert main(["runs", "list", "--runs-dir", str(runs), "--json"]) == 0
    listed = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert listed["20240601T000000Z-aaaaaa-done"]["status"] == "complete"
    assert listed[dead.name]["status"] == "incomplete"
    assert listed[dead.name]["decision_lines"] == 2
    assert main(["runs", "list", "--runs-dir", str(runs), "--incomplete", "--json"]) == 0
    assert {Path(r["path"]).name for r in json.loads(capsys.readouterr().out)} == {
        dead.name,
        live.name,
    }
    # Without a terminal and without --yes nothing is removed.
    assert main(["runs", "clean", "--incomplete", "--runs-dir", str(runs)]) == 2
    assert dead.exists()
    assert main(["runs", "clean", "--incomplete", "--yes", "--runs-dir", str(runs)]) == 0
    text = capsys.readouterr().out
    assert "removed 1 incomplete run folder(s)" in text and "may still be running" in text
    assert not dead.exists() and live.exists()
    assert (runs / "20240601T000000Z-aaaaaa-done").exists()


def test_cache_clear_asks_or_needs_yes(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "cache"
    with ResponseCache(directory) as cache:
        cache.put(CachedResponse(key="k1", key_payload={"model": "m"}, text="paid answer"))
    assert main(["cache", "--dir", str(directory), "clear"]) == 2
    assert "not cleared: 1 cached answers kept (pass --yes" in capsys.readouterr().err
    with ResponseCache(directory) as cache:
        assert cache.stats().entries == 1
    assert main(["cache", "--dir", str(directory), "clear", "--yes"]) == 0
    assert "removed 1 cached answers" in capsys.readouterr().out


def test_chain_option_checks_and_json(tmp_path: Path, capsys) -> None:
    for bad in (["--expiries", "0"], ["--width", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["chain", "--as-of", "2024-03-01T08:00Z", *bad])
        assert exc.value.code == 2
        assert "must be" in capsys.readouterr().err
    assert main(["chain", "--as-of", "2024-03-01T08:00Z", "--source", "parquet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "harness chain: error: chain --source parquet needs --path STORE_DIR "
        "(the Parquet store folder)"
    )
    argv = ["chain", "--as-of", "2024-03-01T08:00Z", "--expiries", "1", "--width", "5", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["underlying"] == "BTC" and data["options"]
    assert len({o["expiry"] for o in data["options"]}) == 1
    assert all(abs(o["strike"] / data["spot"] - 1) <= 0.05 for o in data["options"])


def test_compare_json_and_help_names_real_files(tmp_path: Path, capsys) -> None:
    a = write_fake_run(tmp_path / "a")
    b = write_fake_run(tmp_path / "b", llm_overrides={1: 2, 2: None})
    assert main(["compare", str(a.path), str(b.path), "--json", "--policy", "llm_v1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policies"][0]["policy"] == "llm_v1"
    assert data["written"][0].endswith("run_comparison.md")
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = capsys.readouterr().out
    assert "run_comparison.md" in help_text and "comparison.md/.html" not in help_text


def _actions(parser: argparse.ArgumentParser, path: str = "harness"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


def test_every_option_has_help_text() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, action in _actions(build_parser())
        if not action.help
    ]
    assert missing == []


def test_long_errors_are_one_unwrapped_line(tmp_path: Path, capsys) -> None:
    long_dir = tmp_path / ("x" * 120)
    assert main(["cache", "--dir", str(long_dir), "stats"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(long_dir) in err


def test_ctrl_c_prints_the_folder_and_resume_command(tmp_path: Path) -> None:
    cfg = {
        "name": "slow",
        "market": {"source": "synthetic", "seed": 3},
        "simulation": {
            "underlying": "BTC",
            "start": "2024-02-01",
            "end": "2024-03-01",
            "timeframe": "1h",
            "decision_interval_bars": 4,
        },
        "policies": [
            {
                "name": "slow",
                "type": "python",
                "ref": "tests.policies.custom_policy:slow_always_sell",
                "params": {"delay_s": 0.2},
            }
        ],
        "cache": {"dir": str(tmp_path / "cache")},
    }
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    # A suite started in the background of a script inherits SIGINT ignored, and so would the
    # child; a handled signal is reset to its default across exec, so the child gets Ctrl-C.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(runs), "-q"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 120
    while time.time() < deadline:
        folders = list(runs.glob("*-slow")) if runs.exists() else []
        log = folders[0] / "decisions.jsonl" if folders else None
        if log is not None and log.is_file() and log.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the run did not start scoring")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    run_dir = folders[0]
    assert f"interrupted; run folder: {run_dir}" in err
    assert f"resume with: harness run {path} --resume {run_dir}" in err


def test_harness_view_serves_on_loopback(tmp_path: Path) -> None:
    import socket

    import requests

    runs = tmp_path / "runs"
    write_fake_run(runs / "20240601T000000Z-aaaaaa-fake")
    with socket.socket() as s:  # a free port; the server binds it right after
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "view", str(runs), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/runs", timeout=2)
                break
            except requests.ConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail(f"harness view did not start: {proc.stderr.read()}")
                time.sleep(0.1)
        assert [e["id"] for e in r.json()] == ["20240601T000000Z-aaaaaa-fake"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert main(["view", str(tmp_path / "nope")]) == 2


def test_run_json_prints_one_document(tmp_path: Path, capsys) -> None:
    cfg = {
        "name": "js",
        "market": {"source": "synthetic", "seed": 3},
        "simulation": {
            "underlying": "BTC",
            "start": "2024-02-01",
            "end": "2024-02-20",
            "timeframe": "1h",
            "decision_interval_bars": 24,
        },
        "policies": [
            {"name": "always_sell", "type": "rule", "rule": "always_sell"},
            {"name": "never_sell", "type": "rule", "rule": "never_sell"},
        ],
        "cache": {"dir": str(tmp_path / "cache")},
        "bootstrap_resamples": 200,
    }
    path = tmp_path / "js.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policies"] == ["always_sell", "never_sell"]
    assert Path(data["run_dir"]).is_dir()
    assert data["comparison"][0]["policy"] == "never_sell"
    assert data["metrics"]["never_sell"]["sell_rate"] == 0.0
