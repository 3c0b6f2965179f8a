"""Run health end to end: endpoints that never answer are skipped, failing ones fail, and
neither enters a comparison; --require-llm exits 2; the key is in no written file."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.experiments.config import ConfigError, parse_config
from harness.experiments.runner import LLMRequiredError, run_experiment
from tests.experiments.run_health_fixtures import (
    KEY_ENV,
    SECRET,
    assert_secret_nowhere,
    config,
    manifest,
    rows,
)
from tests.llm.scripted_server import ScriptedServer, first_enum_or_nothing, status


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def _never(behaviour):
    return lambda request: behaviour


SHAPES = {
    "401 echoing the key": (
        status(401, message=f"Incorrect API key provided: {SECRET}"),
        "401",
    ),
    "402 out of credit": (status(402, message="Insufficient credits"), "402"),
    "404 model not found": (
        status(404, message="The model `gpt-4o-mini` does not exist"),
        "does not exist",
    ),
    "400 twice with the same text": (
        status(400, message="This model's maximum context length is 128 tokens"),
        "rejected twice with the same error",
    ),
    "always 500": (status(500, message="upstream overloaded"), "HTTP 500"),
    "429 forever": (status(429, {"Retry-After": "0"}, message="slow down"), "HTTP 429"),
}


@pytest.mark.parametrize("shape", [*SHAPES, "closed port"])
def test_an_endpoint_that_never_answers_is_skipped_and_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    if shape == "closed port":
        srv = None
        url, expected = _closed_port_url(), "unreachable"
    else:
        behaviour, expected = SHAPES[shape]
        srv = ScriptedServer(default=_never(behaviour)).start()
        url = srv.url
    try:
        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(config(tmp_path, url)))
        started = time.perf_counter()
        code = main(["run", str(cfg_path), "--out", str(tmp_path / "runs"), "-q"])
        assert code == 0
        (run_dir,) = (tmp_path / "runs").iterdir()
        m = manifest(run_dir)
        st = m["policy_status"]["llm"]
        assert st["status"] == "skipped" and expected in st["reason"], st
        assert m["skipped"]["llm"] == st["reason"]
        assert m["policy_status"]["always_sell"] == {"status": "ok"}
        assert "llm" not in m["policies"] and rows(run_dir, "llm") == []
        pairs = json.loads((run_dir / "comparison.json").read_text())["pairs"]
        assert {p["policy"] for p in pairs} == {"oracle"}
        if srv is not None:
            # Only the first request (with its retries, and the one re-send of a 400) was sent.
            assert 1 <= srv.request_count <= 4, srv.request_count
        assert time.perf_counter() - started < 60
        if shape in ("closed port", "401 echoing the key"):
            # --require-llm: the same run exits 2 (and still writes its folder)
            req = ["run", str(cfg_path), "--out", str(tmp_path / "req"), "-q", "--require-llm"]
            assert main(req) == 2
            (req_dir,) = (tmp_path / "req").iterdir()
            assert manifest(req_dir)["policy_status"]["llm"]["status"] == "skipped"
        assert_secret_nowhere([tmp_path], SECRET)
    finally:
        if srv is not None:
            srv.stop()


def _fails_30_percent():
    """The first request succeeds; afterwards 30% of prompts (by content hash) get HTTP 500."""
    first = threading.Event()

    def respond(request: dict):
        if not first.is_set():
            first.set()
            return first_enum_or_nothing(request)
        text = request["messages"][-1]["content"]
        # salted so this market's prompts fail near 30% (unsalted: 3 of 31 after issue #15's
        # synthetic market change, below the 10% the test needs to cross)
        if int(hashlib.sha256(("fail:" + text).encode()).hexdigest(), 16) % 10 < 3:
            return status(500, message="upstream overloaded")
        return first_enum_or_nothing(request)

    return respond


def test_a_policy_failing_30_percent_fails_stops_early_and_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer(default=_fails_30_percent()) as srv:
        cfg = parse_config(config(tmp_path, srv.url, max_attempts=1, max_concurrency=1))
        with pytest.raises(LLMRequiredError, match="llm failed") as exc:
            run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True, require_llm=True)
        sent = srv.request_count
    s = exc.value.summary
    assert s is not None
    m = manifest(s.run_dir)
    n = m["n_decisions"]
    st = m["policy_status"]["llm"]
    assert st["status"] == "failed"
    assert "max_error_rate 0.1" in st["reason"] and st["top_error"].startswith("HTTP 500")
    llm_rows = rows(s.run_dir, "llm")
    asked = [r for r in llm_rows if r["candidates"]]
    errors = [r for r in asked if r["error"]]
    assert st["asked"] == len(asked) and st["errors"] == len(errors)
    assert st["error_rate"] == pytest.approx(len(errors) / len(asked), abs=1e-4)
    # stopped once failure was certain: errors > 10% of the decisions to ask, not all asked
    to_ask = sum(1 for r in rows(s.run_dir, "always_sell") if r["candidates"])
    assert len(errors) == int(0.1 * to_ask) + 1 and sent < to_ask and len(llm_rows) < n
    # failed: in metrics and decisions for inspection, out of every comparison
    assert "llm" in s.policies and "llm" in s.metrics
    assert s.metrics["llm"]["error_rate"] == pytest.approx(st["error_rate"], abs=1e-4)
    assert all(c.policy != "llm" for c in s.comparison)
    pairs = json.loads((s.run_dir / "comparison.json").read_text())["pairs"]
    assert {p["policy"] for p in pairs} == {"oracle"}
    report = (s.run_dir / "report.md").read_text()
    assert "failed" in report


def test_consecutive_failures_stop_the_policy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    first = threading.Event()

    def respond(request: dict):
        if not first.is_set():
            first.set()
            return first_enum_or_nothing(request)
        return status(503, message="down for maintenance")

    with ScriptedServer(default=respond) as srv:
        cfg = parse_config(
            config(
                tmp_path,
                srv.url,
                max_attempts=1,
                max_concurrency=1,
                max_error_rate=1.0,
                max_consecutive_errors=5,
            )
        )
        s = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
        assert srv.request_count == 6  # the probe, then five failures in a row
    st = s.policy_status["llm"]
    assert st["status"] == "failed" and "5 failed decisions in a row" in st["reason"]
    assert st["asked"] == 6 and st["errors"] == 5


class _Summary:
    """The parts of a run's summary the tests read, from its folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        m = manifest(run_dir)
        self.policy_status = m["policy_status"]
        self.metrics = json.loads((run_dir / "metrics.json").read_text())


def test_rates_are_over_asked_decisions(tmp_path: Path, monkeypatch, capsys) -> None:
    """Every asked decision fails: the error rate is 100%, not diluted by empty decisions."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    first = threading.Event()

    def respond(request: dict):
        if not first.is_set():
            first.set()
            return status(400, message="first text")
        return status(400, message="another text")

    # The 400 changes text on its retry: not skipped; every decision then fails.
    raw = config(tmp_path, "", max_attempts=1, max_error_rate=0.99, max_consecutive_errors=10_000)
    raw["simulation"]["delta_tolerance"] = 0.02  # some decisions without any candidate
    with ScriptedServer(default=respond) as srv:
        raw["policies"][-1]["base_url"] = srv.url
        raw["policies"][-1]["structured_output"] = False
        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        assert main(["run", str(cfg_path), "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    text = capsys.readouterr().out
    # the console: status and rate columns, a failed line, no comparison line for it
    assert "failed llm" in text and "100.0%" in text and "errors" in text
    assert "llm vs always_sell" not in text and "oracle vs always_sell" in text
    s = _Summary(run_dir)
    llm_rows = rows(s.run_dir, "llm")
    asked = [r for r in llm_rows if r["candidates"]]
    assert 0 < len(asked) < len(llm_rows)
    assert s.metrics["llm"]["error_rate"] == 1.0 and s.policy_status["llm"]["status"] == "failed"


def test_a_key_pasted_as_api_key_env_is_never_written(tmp_path: Path, monkeypatch) -> None:
    pasted = "sk-pasted-INTO-THE-WRONG-FIELD-77aa88bb"
    raw = config(tmp_path, _closed_port_url(), api_key_env=pasted)
    try:
        cfg = parse_config(raw)
    except ConfigError as exc:  # the config layer may reject it outright
        assert pasted not in str(exc)
        return
    s = run_experiment(cfg, out_dir=tmp_path / "runs", quiet=True)
    assert s.policy_status["llm"]["status"] == "skipped"
    assert pasted not in s.skipped["llm"]
    files = assert_secret_nowhere([tmp_path / "runs"], pasted)
    assert files >= 8
    assert "api_key_env: '***'" in (s.run_dir / "config.yaml").read_text()
    # the masked config still parses (a bare *** would be a YAML alias)
    assert yaml.safe_load((s.run_dir / "config.yaml").read_text())["name"] == "health"
