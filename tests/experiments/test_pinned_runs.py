"""Answers pinned to the run: transcripts.jsonl, `harness replay` offline, resume refusing a
changed prompt, the spend cap stopping cleanly and resuming, and `harness plan` figures."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import bpe_openai
import pytest
import yaml

from harness.cli import main
from harness.experiments.config import load_config, parse_config
from harness.experiments.plan import plan_experiment
from harness.experiments.replay import replay_run
from harness.experiments.run_health import ResumeRefused
from harness.experiments.runner import run_experiment
from harness.llm.transcripts import read_transcripts
from tests.experiments.run_health_fixtures import (
    KEY_ENV,
    SECRET,
    assert_secret_nowhere,
    config,
    manifest,
    rows,
)
from tests.llm.scripted_server import ScriptedServer, first_enum_or_nothing, garbage, status

PROMPTS = Path(__file__).parents[2] / "prompts"


def _mixed(request: dict):
    """By prompt hash: mostly the first candidate, some DO_NOTHING-ish garbage, a few 500s."""
    text = request["messages"][-1]["content"]
    h = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 20
    if h in (0, 1, 2):
        return garbage()
    if h in (3, 4, 5):
        return status(500, message="flaky upstream")
    return first_enum_or_nothing(request)


def test_replay_with_cache_deleted_and_no_server_reproduces_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer(default=_mixed) as srv:
        raw = config(tmp_path, srv.url, max_attempts=1, max_error_rate=0.5)
        retry = {"name": "llm_retry", "on_invalid": "retry", "seed": 2}
        raw["policies"].append({**raw["policies"][-1], **retry})
        cfg = parse_config(raw)
        first = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    run_dir = first.run_dir
    records = list(read_transcripts(run_dir / "transcripts.jsonl"))
    llm_rows = [r for r in rows(run_dir) if r["llm"] and r["candidates"]]
    assert {r.policy for r in records} == {"llm", "llm_retry"}
    assert any(r.error for r in records) and any(r.attempt == 1 for r in records)
    for r in records:
        assert r.request.messages and r.request.messages[0]["role"] == "system"
        assert r.cache_key and r.prompt_id and r.prompt_id.startswith("covered_call_v1@")
        assert (r.response is None) == (r.error is not None)
        assert "temperature" in r.request.params and "messages" not in r.request.params
    # every asked decision has its first request in the transcripts
    assert {(r.policy, r.decision_time) for r in records if r.attempt == 0} == {
        (r["policy"], r["decision_time"]) for r in llm_rows
    }
    shutil.rmtree(tmp_path / "cache")
    monkeypatch.delenv(KEY_ENV)  # no key, no cache, no server
    code = main(["replay", str(run_dir), "--out", str(tmp_path / "replays"), "-q"])
    assert code == 0
    (replay_dir,) = (tmp_path / "replays").iterdir()
    assert not (tmp_path / "cache").exists()
    a = {(r["policy"], r["decision_time"]): r for r in rows(run_dir)}
    b = {(r["policy"], r["decision_time"]): r for r in rows(replay_dir)}
    assert a.keys() == b.keys()
    for key, ra in a.items():
        rb = b[key]
        for f in ("action", "instrument_name", "valid", "invalid_reason", "error", "reward"):
            assert ra[f] == rb[f], (key, f)
        if ra["llm"]:
            assert ra["llm"]["raw"] == rb["llm"]["raw"]
            assert ra["llm"]["rationale"] == rb["llm"]["rationale"]
            assert rb["llm"]["replayed"] is True and rb["llm"]["calls_made"] == 0
    assert manifest(replay_dir)["replay"] is True
    result = replay_run(run_dir, out_dir=tmp_path / "replays2", quiet=True)
    assert result.reproduced and result.rows == len(a) and result.prompt_changes == 0


def test_resume_after_a_prompt_edit_refuses(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    pdir = tmp_path / "prompts"
    pdir.mkdir()
    for part in ("system", "user"):
        shutil.copy(PROMPTS / f"covered_call_v1.{part}.j2", pdir / f"mine.{part}.j2")
    with ScriptedServer(default=first_enum_or_nothing) as srv:
        raw = config(tmp_path, srv.url, prompt="mine", prompts_dir=str(pdir))
        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        s = run_experiment(load_config(cfg_path), out_dir=tmp_path / "runs", quiet=True)
        user = pdir / "mine.user.j2"
        user.write_text(user.read_text() + "\nBe brief.\n")
        before = (s.run_dir / "decisions.jsonl").read_text()
        with pytest.raises(ResumeRefused, match="prompt changed since the run started"):
            run_experiment(load_config(cfg_path), resume=s.run_dir, quiet=True)
        code = main(["run", str(cfg_path), "--resume", str(s.run_dir), "-q"])
        sent = srv.request_count
    assert code == 2
    assert (s.run_dir / "decisions.jsonl").read_text() == before
    assert manifest(s.run_dir)["prompt_ids"]["llm"].startswith("mine@")
    assert sent == sum(1 for r in rows(s.run_dir, "llm") if r["candidates"])


def test_spend_cap_stops_cleanly_and_resume_continues(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    cap = 0.0015
    with ScriptedServer(default=first_enum_or_nothing) as srv:
        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(config(tmp_path, srv.url)))
        s = run_experiment(
            load_config(cfg_path),
            out_dir=tmp_path / "runs",
            quiet=True,
            max_cost_usd=cap,
            config_path=cfg_path,
        )
        sent_first = srv.request_count
        m = manifest(s.run_dir)
        assert m["status"] == "stopped" and s.status == "stopped"
        assert f"--resume {s.run_dir}" in m["resume"] and str(cfg_path) in m["resume"]
        st = m["policy_status"]["llm"]
        assert st["status"] == "failed" and st["stopped"] is True
        assert "run --max-cost of $0.0015 reached" in st["reason"]
        spent = sum(
            r.cost_usd
            for r in read_transcripts(s.run_dir / "transcripts.jsonl")
            if not r.from_cache
        )
        assert 0 < spent <= cap and s.llm_usage["llm"]["cost_usd_incurred"] == pytest.approx(spent)
        to_ask = sum(1 for r in rows(s.run_dir, "always_sell") if r["candidates"])
        done = [r for r in rows(s.run_dir, "llm") if r["candidates"]]
        assert 0 < len(done) < to_ask and sent_first == len(done)
        assert all(c.policy != "llm" for c in s.comparison)
        # resume with a larger budget: only the rest is asked, the run completes
        code = main(["run", str(cfg_path), "--resume", str(s.run_dir), "-q", "--max-cost", "1"])
        assert code == 0
        assert srv.request_count - sent_first == to_ask - len(done)
    m = manifest(s.run_dir)
    assert m["status"] == "complete" and m["policy_status"]["llm"]["status"] == "ok"
    assert len([r for r in rows(s.run_dir, "llm") if r["candidates"]]) == to_ask
    assert_secret_nowhere([s.run_dir, tmp_path / "cache"], SECRET)


def test_policy_max_cost_stops_only_that_policy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer(default=first_enum_or_nothing) as srv:
        raw = config(tmp_path, srv.url, max_cost_usd=0.0)
        s = run_experiment(parse_config(raw), out_dir=tmp_path / "runs", quiet=True)
        assert srv.request_count == 0
    assert s.policy_status["llm"]["status"] == "failed"
    assert "llm max_cost_usd of $0.0000 reached" in s.policy_status["llm"]["reason"]
    assert s.policy_status["oracle"]["status"] == "ok" and s.status == "stopped"


def test_plan_counts_tokens_cost_and_cache_hits(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer(default=first_enum_or_nothing) as srv:
        # Separate requests per sample here; `n` sampling is planned in the test below.
        raw = config(tmp_path, srv.url, samples=2, seed=0, sample_with_n=False)
        fast = parse_config(raw)  # rate limits are not part of a request: same cache keys
        raw["policies"][-1]["requests_per_minute"] = 30
        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        cfg = load_config(cfg_path)
        (before,) = plan_experiment(cfg)
        assert srv.request_count == 0  # planning sends nothing
        s = run_experiment(fast, out_dir=tmp_path / "runs", quiet=True)
        sent = srv.request_count
        (after,) = plan_experiment(cfg)
        assert srv.request_count == sent
    records = [r for r in read_transcripts(s.run_dir / "transcripts.jsonl") if r.attempt == 0]
    enc = bpe_openai.get_encoding("o200k_base")
    tokens = sum(
        3 + sum(3 + len(enc.encode(m["content"])) for m in r.request.messages) for r in records
    )
    to_ask = sum(1 for r in rows(s.run_dir, "always_sell") if r["candidates"])
    assert before.to_ask == to_ask and before.requests == 2 * to_ask == len(records) == sent
    assert before.cached == 0 and before.prompt_tokens == tokens
    assert before.tokenizer == "bpe-openai o200k_base"
    assert before.max_output_tokens == before.requests * 400
    # gpt-4o-mini: $0.15 / M input, $0.60 / M output, batch at half price
    live = (tokens * 0.15 + before.requests * 400 * 0.60) / 1e6
    assert before.cost_live_usd == pytest.approx(live)
    assert before.cost_batch_usd == pytest.approx(live / 2)
    assert before.wall_s == pytest.approx(before.requests / 30 * 60, abs=0.1)
    assert "requests_per_minute" in before.wall_basis
    assert after.cached == after.requests and after.prompt_tokens == 0 and after.wall_s == 0
    assert main(["plan", str(cfg_path)]) == 0
    text = capsys.readouterr().out
    assert "llm" in text and "bpe-openai o200k_base" in text and f"{before.requests:,}" in text
    assert "400 tokens per answer (sent as max_tokens)" in text


def test_plan_budgets_n_answers_per_request_and_reasoning_defaults(tmp_path: Path) -> None:
    # Nothing is sent: the URL is never contacted.
    url = "http://127.0.0.1:9/v1"
    (with_n,) = plan_experiment(parse_config(config(tmp_path, url, samples=3, seed=0)))
    assert with_n.requests == with_n.to_ask  # one `n` request per decision
    assert with_n.max_output_tokens == with_n.to_ask * 3 * 400  # n answers each
    assert (with_n.token_param, with_n.token_budget) == ("max_tokens", 400)
    (reasoning,) = plan_experiment(parse_config(config(tmp_path, url, model="o3-mini")))
    assert (reasoning.token_param, reasoning.token_budget) == ("max_completion_tokens", 8000)
    assert reasoning.max_output_tokens == reasoning.requests * 8000
    # o3-mini: $1.10 / M input, $4.40 / M output (model_prices.yaml)
    live = (reasoning.prompt_tokens * 1.10 + reasoning.requests * 8000 * 4.40) / 1e6
    assert reasoning.cost_live_usd == pytest.approx(live)
