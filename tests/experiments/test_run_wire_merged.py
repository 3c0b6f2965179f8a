"""Run integrity with the wire features: `n` samples pinned per sample in transcripts and
replayed offline, masked header values never sent (replay needs none, resume takes them from
the config given, a config.yaml copied from a run folder is refused)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import main
from harness.experiments.config import load_config
from harness.experiments.replay import replay_run
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
from tests.llm.provider_emulator import (
    ProviderEmulator,
    Reply,
    completion,
    do_nothing_json,
    openai_usage,
    sell_first,
)

HEADER = "X-Route-Token"
HEADER_VALUE = "route-tok-NEVER-WRITE-9f8e7d"


def _mixed_votes(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """Honours `n`; choice 1 of every three says DO_NOTHING, the others sell the first name."""
    n = int(request.get("n", 1))
    texts = [do_nothing_json() if i % 3 == 1 else sell_first(request) for i in range(n)]
    usage = openai_usage(prompt=700, completion=60 * n, reasoning=10 * n)
    return Reply(body=completion(request, [{"content": t} for t in texts], usage=usage))


def _write_config(tmp_path: Path, url: str, **llm: Any) -> Path:
    raw = config(tmp_path, url, extra_headers={HEADER: HEADER_VALUE}, **llm)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_n_samples_are_pinned_per_sample_and_replay_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ProviderEmulator(_mixed_votes) as srv:
        cfg_path = _write_config(
            tmp_path, srv.url, samples=3, temperature=0.7, seed=0, min_vote_share=0.7
        )
        s = run_experiment(load_config(cfg_path), out_dir=tmp_path / "runs", quiet=True)
        sent = srv.request_count
        received = {h.get(HEADER.lower()) for h in srv.headers}
    to_ask = sum(1 for r in rows(s.run_dir, "always_sell") if r["candidates"])
    assert sent == to_ask  # one `n` request per decision, billed once
    assert received == {HEADER_VALUE}  # the real value went out, never the mask
    assert f"{HEADER}: '***'" in (s.run_dir / "config.yaml").read_text()
    records = list(read_transcripts(s.run_dir / "transcripts.jsonl"))
    assert len(records) == 3 * to_ask
    by_key: dict[str, list] = {}
    for r in records:
        by_key.setdefault(r.cache_key or "", []).append(r)
    for group in by_key.values():
        assert sorted(r.sample for r in group) == [0, 1, 2]
        for r in group:
            assert r.n_choices == 3 and r.request.params["n"] == 3
            assert r.request.params["extra_headers"] == {HEADER: "***"}
            assert r.response is not None and r.response.finish_reason == "stop"
            # usage and cost once per request: on sample 0
            if r.sample == 0:
                assert r.usage["reasoning_tokens"] == 30 and r.cost_usd > 0
            else:
                assert r.usage == {} and r.cost_usd == 0
    # 2 of 3 votes sell: under min_vote_share 0.7, so DO_NOTHING with a note
    llm_rows = [r for r in rows(s.run_dir, "llm") if r["candidates"]]
    assert llm_rows and all(r["action"] == "DO_NOTHING" for r in llm_rows)
    assert s.llm_usage["llm"]["calls_made"] == to_ask
    assert_secret_nowhere([s.run_dir, tmp_path / "cache"], SECRET)
    assert_secret_nowhere([s.run_dir, tmp_path / "cache"], HEADER_VALUE)

    shutil.rmtree(tmp_path / "cache")
    monkeypatch.delenv(KEY_ENV)  # no key, no cache, no server
    result = replay_run(s.run_dir, out_dir=tmp_path / "replays", quiet=True)
    assert result.reproduced and result.rows == len(rows(s.run_dir))
    replayed = [r for r in rows(result.run_dir, "llm") if r["candidates"]]
    assert [r["llm"]["raw"] for r in replayed] == [r["llm"]["raw"] for r in llm_rows]
    assert all(r["action"] == "DO_NOTHING" and r["valid"] for r in replayed)


def test_resume_sends_the_header_values_of_the_config_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ProviderEmulator(_mixed_votes) as srv:
        cfg_path = _write_config(tmp_path, srv.url)
        s = run_experiment(
            load_config(cfg_path),
            out_dir=tmp_path / "runs",
            quiet=True,
            max_cost_usd=0.0005,
            config_path=cfg_path,
        )
        assert s.status == "stopped"
        first = srv.request_count
        code = main(["run", str(cfg_path), "--resume", str(s.run_dir), "-q", "--max-cost", "1"])
        assert code == 0 and srv.request_count > first
        assert {h.get(HEADER.lower()) for h in srv.headers} == {HEADER_VALUE}
    assert manifest(s.run_dir)["status"] == "complete"


def test_a_config_copied_from_a_run_folder_never_sends_the_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ProviderEmulator(_mixed_votes) as srv:
        cfg_path = _write_config(tmp_path, srv.url)
        s = run_experiment(load_config(cfg_path), out_dir=tmp_path / "runs", quiet=True)
        sent = srv.request_count
        copied = load_config(s.run_dir / "config.yaml")  # header values are '***' here
        again = run_experiment(copied, out_dir=tmp_path / "runs2", quiet=True)
        assert srv.request_count == sent  # nothing left with the mask as a header value
    status = again.policy_status["llm"]
    assert status["status"] == "skipped" and "hold the mask" in status["reason"]
