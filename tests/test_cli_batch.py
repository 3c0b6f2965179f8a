"""`harness run --batch` output and `harness batch export|import` (round trip through a file in
the format `vllm run-batch` writes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.experiments.config import parse_config
from harness.experiments.runner import run_experiment
from harness.llm.cache import ResponseCache
from tests.experiments.batch_fixtures import KEY_ENV, SECRET, choices, config, pick, transcripts
from tests.llm.batch_server import BatchServer


@pytest.fixture
def server() -> Iterator[BatchServer]:
    with BatchServer(pick) as srv:
        yield srv


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def _write(tmp: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_batch_prints_what_it_submitted_and_how_to_resume(
    tmp_path: Path, server: BatchServer, capsys: pytest.CaptureFixture[str]
):
    path = _write(tmp_path, config(tmp_path, server.url))
    code = main(["run", str(path), "--out", str(tmp_path / "runs"), "--batch"])
    assert code == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    ids = [b["id"] for b in server.batches()]
    assert ids and all(i in text for i in ids)
    assert "requests submitted by batch" in text
    assert "resume with: harness run" in text and "--batch" in text
    assert server.chat_calls == 0


def _vllm_output(requests: Path, out: Path) -> int:
    """Answer every request line like `vllm run-batch` does (OpenAI's output line format)."""
    lines = []
    for i, raw in enumerate(requests.read_text().splitlines()):
        req = json.loads(raw)
        assert req["method"] == "POST" and req["url"] == "/v1/chat/completions"
        body = {"id": f"cmpl-{i}", "model": req["body"]["model"], **pick(req["body"])}
        lines.append(
            {
                "id": f"vllm-{i}",
                "custom_id": req["custom_id"],
                "response": {"status_code": 200, "request_id": f"vllm-batch-{i}", "body": body},
                "error": None,
            }
        )
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return len(lines)


def test_export_import_round_trip_feeds_a_fully_cached_run(
    tmp_path: Path, server: BatchServer, capsys: pytest.CaptureFixture[str]
):
    data = config(tmp_path, server.url, cache="offline-cache")
    path = _write(tmp_path, data)
    requests = tmp_path / "requests.jsonl"
    assert main(["batch", "export", str(path), "--out", str(requests), "-q"]) == 0
    lines = [json.loads(x) for x in requests.read_text().splitlines()]
    assert lines and len({x["custom_id"] for x in lines}) == len(lines)
    assert {x["body"]["model"] for x in lines} == {"gpt-4o-mini"}
    assert SECRET not in requests.read_text()

    results = tmp_path / "results.jsonl"
    n = _vllm_output(requests, results)
    capsys.readouterr()
    assert main(["batch", "import", str(results), "--config", str(path), "-q"]) == 0
    assert f"{n} answers stored" in capsys.readouterr().out
    with ResponseCache(tmp_path / "offline-cache") as cache:
        assert all(x["custom_id"] in cache for x in lines)

    # A live run of the same config is now served entirely from the cache...
    before = sum(server.calls.values())
    cached = run_experiment(parse_config(data), out_dir=tmp_path / "runs", quiet=True)
    assert sum(server.calls.values()) == before
    recs = [r for r in transcripts(cached.run_dir) if r["policy"] == "llm"]
    assert recs and all(r["from_cache"] for r in recs)
    # ... with the decisions a live run against the same answers makes.
    live = run_experiment(
        parse_config(config(tmp_path, server.url, cache="live-cache")),
        out_dir=tmp_path / "runs",
        quiet=True,
    )
    assert choices(cached.run_dir) == choices(live.run_dir)

    # Everything is answered: a second export is empty, a second import stores nothing new.
    again = tmp_path / "again.jsonl"
    assert main(["batch", "export", str(path), "--out", str(again), "-q"]) == 0
    assert again.read_text() == ""
    capsys.readouterr()
    assert main(["batch", "import", str(results), "--config", str(path), "-q"]) == 0
    assert f"{n} already cached" in capsys.readouterr().out


def test_export_of_a_run_folder_and_import_of_unknown_lines(
    tmp_path: Path, server: BatchServer, capsys: pytest.CaptureFixture[str]
):
    data = config(tmp_path, server.url, cache="c1")
    run = run_experiment(parse_config(data), out_dir=tmp_path / "runs", quiet=True)
    out = tmp_path / "from-run.jsonl"
    assert main(["batch", "export", str(run.run_dir), "--out", str(out), "-q"]) == 0
    assert out.read_text() == ""  # the run answered everything: the cache has it all
    stray = tmp_path / "stray.jsonl"
    stray.write_text(
        json.dumps({"custom_id": "0" * 64, "response": {"status_code": 200, "body": pick_body()}})
        + "\n"
    )
    path = _write(tmp_path, data)
    assert main(["batch", "import", str(stray), "--config", str(path), "-q"]) == 1
    assert "1 not requests of this config" in capsys.readouterr().out


def pick_body() -> dict:
    return {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}
        ]
    }


def test_import_names_the_bad_line(tmp_path: Path, server: BatchServer, capsys):
    path = _write(tmp_path, config(tmp_path, server.url))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "response": null, "error": null}\nnot json\n')
    assert main(["batch", "import", str(bad), "--config", str(path), "-q"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_plan_shows_which_cost_a_batch_run_pays(
    tmp_path: Path, server: BatchServer, capsys: pytest.CaptureFixture[str]
):
    from harness.experiments.plan import plan_experiment

    data = config(tmp_path, server.url)
    live = plan_experiment(parse_config(data))[0]
    data["policies"][1]["execution"] = "batch"
    batch = plan_experiment(parse_config(data))[0]
    assert live.execution == "live" and live.cost_usd == live.cost_live_usd > 0
    assert batch.execution == "batch" and batch.cost_usd == batch.cost_batch_usd
    assert batch.cost_usd == pytest.approx(live.cost_usd / 2)
    path = _write(tmp_path, config(tmp_path, server.url))
    assert main(["plan", str(path), "--batch"]) == 0
    out = capsys.readouterr().out
    assert "batch" in out and "<= 24 h" in out
    assert sum(server.calls.values()) == 0
