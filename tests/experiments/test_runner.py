"""End to end: `harness run` on a small config with rule policies and an LLM policy served by a
local scripted chat server; every file of the run folder; resume after a kill; bad configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.experiments.config import ConfigError, load_config, parse_config
from harness.experiments.runner import LLMRequiredError, run_experiment
from harness.reports.report import write_report
from tests.llm.scripted_server import ScriptedServer, first_enum_or_nothing

KEY_ENV = "HARNESS_E2E_KEY"
SECRET = "sk-e2e-NEVER-WRITE-ME-9f8e7d6c5b4a"


def _config(
    tmp: Path,
    server_url: str | None,
    *,
    name: str = "e2e",
    prompt: str = "covered_call_v1",
    **sim: Any,
) -> dict:
    simulation = {
        "underlying": "BTC",
        "start": "2024-02-01",
        "end": "2024-03-05",
        "timeframe": "1h",
        "decision_interval_bars": 12,
    }
    simulation.update(sim)
    policies: list[dict] = [
        {"name": "always_sell", "type": "rule", "rule": "always_sell"},
        {"name": "iv_rich", "type": "rule", "rule": "iv_rich", "params": {"threshold": 0.0}},
        {"name": "oracle", "type": "rule", "rule": "oracle"},
    ]
    if server_url is not None:
        policies.append(
            {
                "name": "llm",
                "type": "llm",
                "model": "gpt-4o-mini",
                "prompt": prompt,
                "base_url": server_url,
                "api_key_env": KEY_ENV,
                "seed": 1,
                "max_concurrency": 4,
                "initial_backoff_s": 0.001,
                "max_backoff_s": 0.01,
            }
        )
    return {
        "name": name,
        "market": {"source": "synthetic", "seed": 3},
        "simulation": simulation,
        "policies": policies,
        "baseline": "always_sell",
        "cache": {"dir": str(tmp / "cache"), "mode": "read_write"},
        "bootstrap_resamples": 200,
    }


@pytest.fixture
def llm_server():
    with ScriptedServer(default=first_enum_or_nothing) as srv:
        yield srv


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]


def test_run_writes_every_file_and_second_run_calls_nothing(
    tmp_path, llm_server, monkeypatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = parse_config(_config(tmp_path, llm_server.url))
    s = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    d = s.run_dir
    assert s.skipped == {} and s.policies == ["always_sell", "iv_rich", "oracle", "llm"]
    for f in (
        "config.yaml",
        "manifest.json",
        "decisions.jsonl",
        "trades.csv",
        "equity.parquet",
        "labels.parquet",
        "metrics.json",
        "comparison.json",
    ):
        assert (d / f).is_file(), f
    # config.yaml is the resolved config and loads back to the same thing
    assert load_config(d / "config.yaml") == cfg
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["baseline"] == "always_sell"
    assert manifest["prompt_ids"]["llm"].startswith("covered_call_v1")
    assert (
        manifest["model_ids"] == {"llm": "gpt-4o-mini"}
        and manifest["data_fingerprint"] == "synthetic(seed=3)"
    )
    n = manifest["n_decisions"]
    rows = _rows(d)
    assert len(rows) == 4 * n
    labels = pd.read_parquet(d / "labels.parquet")
    reward = {
        (r.decision_time.isoformat(), r.instrument_name): r.reward
        for r in labels.itertuples()
        if r.action == "SELL_CALL"
    }
    for r in rows:
        assert r["regret"] >= -1e-9 and r["valid"]
        if r["action"] == "SELL_CALL":
            assert r["instrument_name"] in r["candidates"]
            assert r["reward"] == pytest.approx(reward[(r["decision_time"], r["instrument_name"])])
        else:
            assert r["reward"] == 0.0
    llm_rows = [r for r in rows if r["policy"] == "llm"]
    asked = [r for r in llm_rows if r["candidates"]]
    assert asked and all(r["llm"]["raw"] and r["llm"]["model"] == "gpt-4o-mini" for r in asked)
    # the scripted model sells the first candidate offered
    assert all(r["instrument_name"] == r["candidates"][0] for r in asked)
    assert llm_server.request_count == len(asked)
    trades = pd.read_csv(d / "trades.csv")
    assert set(trades["policy"]) <= set(s.policies) and "pnl_vs_hodl" in trades.columns
    equity = pd.read_parquet(d / "equity.parquet")
    assert set(equity["policy"]) == set(s.policies)
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["oracle"]["mean_regret"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["llm"]["n_decisions"] == n
    comparison = json.loads((d / "comparison.json").read_text())
    assert {p["policy"] for p in comparison["pairs"]} == {"iv_rich", "oracle", "llm"}
    oracle_pair = next(p for p in comparison["pairs"] if p["policy"] == "oracle")
    assert (
        oracle_pair["losses"] == 0
        and oracle_pair["ci_low"] <= oracle_pair["mean_diff"] <= oracle_pair["ci_high"]
    )
    # the API key is in no file the run or the cache wrote
    for root in (d, tmp_path / "cache"):
        for p in root.rglob("*"):
            if p.is_file():
                assert SECRET.encode() not in p.read_bytes(), p

    # the runner's report (decisions from memory) is byte for byte `harness report RUN_DIR`'s
    written = {f: (d / f).read_bytes() for f in ("report.md", "report.html")}
    write_report(d)
    assert {f: (d / f).read_bytes() for f in written} == written

    before = llm_server.request_count
    s2 = run_experiment(cfg, out_dir=tmp_path / "runs2", quiet=True)
    assert llm_server.request_count == before, "a warm cache must make zero HTTP requests"
    assert s2.llm_usage["llm"]["calls_made"] == 0
    assert [r["instrument_name"] for r in _rows(s2.run_dir)] == [r["instrument_name"] for r in rows]


def test_llm_without_key_is_skipped_or_required(tmp_path, llm_server, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = parse_config(_config(tmp_path, llm_server.url))
    s = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    assert "llm" in s.skipped and KEY_ENV in s.skipped["llm"]
    assert s.policies == ["always_sell", "iv_rich", "oracle"]
    assert (
        json.loads((s.run_dir / "manifest.json").read_text())["skipped"]["llm"] == s.skipped["llm"]
    )
    with pytest.raises(LLMRequiredError, match="llm"):
        run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True, require_llm=True)
    assert llm_server.request_count == 0


def test_read_only_cache_with_server_stopped_replays_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer(default=first_enum_or_nothing) as srv:
        cfg = parse_config(_config(tmp_path, srv.url))
        first = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    # server gone: read_only replays from the cache alone
    again = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True, cache_mode="read_only")
    assert again.skipped == {}
    assert [r["instrument_name"] for r in _rows(again.run_dir)] == [
        r["instrument_name"] for r in _rows(first.run_dir)
    ]
    # a different prompt misses the cache: read_only reports it skipped, naming a decision time
    other = parse_config(_config(tmp_path, "http://127.0.0.1:9/v1", prompt="covered_call_v2"))
    s = run_experiment(other, out_dir=tmp_path / "runs", quiet=True, cache_mode="read_only")
    assert "llm" in s.skipped and "2024-" in s.skipped["llm"]


def test_resume_after_a_killed_run(tmp_path, monkeypatch) -> None:
    env = {**os.environ, KEY_ENV: SECRET}
    with ScriptedServer(default=first_enum_or_nothing, latency_s=0.05) as srv:
        raw = _config(tmp_path, srv.url)
        raw["policies"][-1]["max_concurrency"] = 1
        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        n_dec = len(pd.date_range("2024-02-01", "2024-02-27", freq="12h"))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.cli",
                "run",
                str(cfg_path),
                "--out",
                str(tmp_path / "runs"),
                "-q",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 120
        run_dir = None
        while time.time() < deadline:
            dirs = list((tmp_path / "runs").glob("*-e2e")) if (tmp_path / "runs").exists() else []
            if dirs and (dirs[0] / "decisions.jsonl").exists() and srv.request_count >= 5:
                run_dir = dirs[0]
                break
            time.sleep(0.05)
        assert run_dir is not None, "the run did not get going"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert not (run_dir / "manifest.json").exists()
        written = len(_rows(run_dir))
        assert written >= 3 * n_dec  # the three rule policies had finished
        calls_before = srv.request_count
        monkeypatch.setenv(KEY_ENV, SECRET)
        s = run_experiment(load_config(cfg_path), resume=run_dir, quiet=True)
        assert s.resumed_decisions == written
        assert s.run_dir == run_dir and (run_dir / "manifest.json").exists()
        rows = _rows(run_dir)
        assert len(rows) == 4 * n_dec
        assert len({(r["policy"], r["decision_time"]) for r in rows}) == len(rows)
        # answers fetched before the kill came from the cache
        assert srv.request_count - calls_before < sum(
            1 for r in rows if r["policy"] == "llm" and r["candidates"]
        )


def test_bad_configs_name_file_field_and_problem(tmp_path) -> None:
    base = _config(tmp_path, None)
    cases = [
        (
            {"policies": [{"name": "x", "type": "rule", "rule": "magic"}]},
            "policies.0.rule: unknown rule policy 'magic'",
        ),
        (
            {"simulation": {**base["simulation"], "decision_interval_bars": "four"}},
            "simulation.decision_interval_bars",
        ),
        (
            {"simulation": {**base["simulation"], "start": "2024-03-01", "end": "2024-02-01"}},
            "must be after start",
        ),
        ({"baseline": "nobody"}, "baseline 'nobody' is not one of the policies"),
        ({"reward": {"kind": "sharpe"}}, "reward.kind"),
        (
            {"policies": [{"name": "x", "model": "gpt-4o-mini"}]},
            "policies.0 (x): every policy entry states its `type`",
        ),
    ]
    for i, (patch, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump({**base, **patch}))
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        assert str(path) in str(exc.value) and message in str(exc.value), str(exc.value)
    assert main(["run", str(tmp_path / "bad0.yaml")]) == 2
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_cli_run_chain_and_cache(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config(tmp_path, None, name="cli")))
    assert main(["run", str(cfg), "--out", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert "always_sell" in text and "oracle vs always_sell" in text and "run folder:" in text
    assert (
        main(["chain", "--underlying", "ETH", "--as-of", "2024-03-01T08:00Z", "--expiries", "1"])
        == 0
    )
    text = capsys.readouterr().out
    assert "ETH at 2024-03-01T08:00:00+00:00" in text and "strike" in text
    assert main(["cache", "--dir", str(tmp_path / "nope"), "stats"]) == 2
    assert "no cache at" in capsys.readouterr().err


def test_quickstart_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "configs" / "quickstart.yaml")
    assert {p.name for p in cfg.policies} >= {"always_sell", "oracle", "llm_v1"}
    load_config(Path(__file__).parents[2] / "configs" / "prompt_iteration.yaml")


def test_runs_started_in_the_same_second_get_distinct_folders(tmp_path: Path) -> None:
    import multiprocessing

    from harness.experiments.runner import create_run_dir

    # Eight processes and eight threads at once: every one must get its own new folder.
    with multiprocessing.get_context("fork").Pool(8) as pool:
        by_process = pool.starmap(create_run_dir, [(tmp_path, "same")] * 8)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as ex:
        by_thread = list(ex.map(lambda _: create_run_dir(tmp_path, "same"), range(8)))
    dirs = by_process + by_thread
    assert len(set(dirs)) == 16
    assert all(d.is_dir() and d.name.endswith("-same") for d in dirs)
    assert len(list(tmp_path.iterdir())) == 16


def test_a_colliding_run_id_is_drawn_again(tmp_path: Path, monkeypatch) -> None:
    from harness.experiments import runner

    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(runner.secrets, "token_hex", lambda n: next(suffixes))
    monkeypatch.setattr(
        runner.pd.Timestamp,
        "now",
        classmethod(lambda cls, tz=None: pd.Timestamp("2026-01-01", tz="UTC")),
    )
    first = runner.create_run_dir(tmp_path, "x")
    second = runner.create_run_dir(tmp_path, "x")
    assert first.name == "20260101T000000Z-aaaaaa-x"
    assert second.name == "20260101T000000Z-bbbbbb-x"


def test_two_full_runs_started_at_once_both_complete(tmp_path: Path) -> None:
    cfg_path = tmp_path / "rules.yaml"
    cfg = _config(tmp_path, None, name="twin")
    cfg_path.write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        str(cfg_path),
        "--out",
        str(tmp_path / "runs"),
        "--quiet",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-400:] for o in outs]
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 3
    assert all(
        json.loads((f / "manifest.json").read_text())["status"] == "complete" for f in folders
    )
