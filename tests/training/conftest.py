"""Shared fixtures of the training tests: one small run with rules and LLM policies.

Six weeks of synthetic BTC; three rules, three LLM policies answered by a local chat server (one
of them, `llm_messy`, answers with reasoning blocks, fences and some invalid answers, on the
history-hint prompt `covered_call_v3`), one LLM policy skipped for lack of a key. Made once per
session; the report is skipped (the exporter never reads it).
"""

from __future__ import annotations

import json
import os

# `datasets` reads these when imported: no test may reach the Hugging Face Hub
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.experiments.config import parse_config
from harness.experiments.markets import build_market
from harness.experiments.runner import run_experiment
from harness.llm.prompts import default_prompts_dir
from harness.simulator import CoveredCallSimulator
from harness.training.export import RunExamples, load_run

NO_KEY_ENV = "HARNESS_EXPORT_TEST_UNSET_KEY"


class ChatServer:
    """Local /v1/chat/completions: answers by the length of the user message, records every prompt.

    len(user) % 3 == 0: DO_NOTHING; 1: the first offered name; 2: the last offered name.
    Model `fake-messy` wraps that answer the way reasoning models do (see `messy`), and on every
    fifth user length answers something unparseable.
    """

    def __init__(self) -> None:
        self.received: list[tuple[str, str, str]] = []  # (model, system, user)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                msgs = {m["role"]: m["content"] for m in body["messages"]}
                with server._lock:
                    server.received.append((body["model"], msgs["system"], msgs["user"]))
                schema = body["response_format"]["json_schema"]["schema"]
                names = schema["properties"]["instrument_name"]["anyOf"][0]["enum"]
                pick = [None, names[0], names[-1]][len(msgs["user"]) % 3]
                answer = {
                    "action": "SELL_CALL" if pick else "DO_NOTHING",
                    "instrument_name": pick,
                    "rationale": "scripted",
                }
                content = json.dumps(answer)
                if body["model"] == "fake-messy":
                    content = messy(answer, len(msgs["user"]), names)
                data = json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 1_700_000_000,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 100,
                            "completion_tokens": 20,
                            "total_tokens": 120,
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def users(self, model: str) -> list[str]:
        """User messages received for `model`."""
        return [u for m, _, u in self.received if m == model]

    def close(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()


def messy(answer: dict[str, Any], n: int, names: list[str]) -> str:
    """`answer` as a reasoning model might write it; unparseable when n % 5 == 4."""
    if n % 5 == 4:
        return "I would rather not choose today."
    draft = json.dumps({"action": "SELL_CALL", "instrument_name": names[0], "rationale": "draft"})
    style = (n // 3) % 3
    if style == 0:  # a drafted answer inside the reasoning, the final one after it
        return f"<think>First idea: {draft}. Let me reconsider.</think>\n{json.dumps(answer)}"
    if style == 1:  # a fenced answer after prose, lower-case action
        low = {**answer, "action": answer["action"].lower()}
        return f"Looking at the spread.\n```json\n{json.dumps(low)}\n```"
    return f"{draft}\nOn reflection, final answer: {json.dumps(answer)} (done)"


def llm_entry(name: str, model: str, url: str, **extra: Any) -> dict[str, Any]:
    """An LLM policy block for the local server (no key, no retries worth waiting for)."""
    return {
        "name": name,
        "type": "llm",
        "model": model,
        "base_url": url,
        "api_key_env": None,
        "max_attempts": 1,
        "timeout_s": 20,
        "max_concurrency": 8,
        **extra,
    }


@pytest.fixture(scope="session")
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def prompts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of prompts/ so a test can edit a prompt after the run."""
    d = tmp_path_factory.mktemp("prompts")
    for f in default_prompts_dir().glob("covered_call_v1.*.j2"):
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def run_config(
    chat_server: ChatServer, prompts_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    assert NO_KEY_ENV not in os.environ
    return parse_config(
        {
            "name": "export_test",
            "market": {"source": "synthetic", "seed": 7},
            "simulation": {
                "underlying": "BTC",
                "start": "2024-02-01",
                "end": "2024-03-14",
                "timeframe": "1h",
                "decision_interval_bars": 6,
            },
            "policies": [
                {"name": "always_sell", "type": "rule", "rule": "always_sell"},
                {
                    "name": "iv_rich",
                    "type": "rule",
                    "rule": "iv_rich",
                    "params": {"threshold": 0.05},
                },
                {"name": "oracle", "type": "rule", "rule": "oracle"},
                llm_entry("llm", "fake-plain", chat_server.url, prompts_dir=str(prompts_dir)),
                llm_entry("llm_anon", "fake-anon", chat_server.url, anonymize=True),
                llm_entry("llm_messy", "fake-messy", chat_server.url, prompt="covered_call_v3"),
                {"name": "llm_nokey", "type": "llm", "model": "fake", "api_key_env": NO_KEY_ENV},
            ],
            "reward": {"kind": "pnl_vs_hodl", "drawdown_penalty": 20.0},
            "cache": {"dir": str(tmp_path_factory.mktemp("llm-cache")), "mode": "off"},
            "baseline": "always_sell",
        }
    )


@pytest.fixture(scope="session")
def run_dir(run_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import harness.reports.report

    # the human report is half the run's time and the exporter never reads it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness.reports.report, "write_report", lambda run_dir, **kw: None)
        summary = run_experiment(run_config, out_dir=tmp_path_factory.mktemp("runs"), quiet=True)
    assert "llm_nokey" in summary.skipped
    assert {"always_sell", "iv_rich", "oracle", "llm", "llm_anon"} <= set(summary.policies)
    return summary.run_dir


@pytest.fixture(scope="session")
def run_sim(run_config) -> CoveredCallSimulator:
    return CoveredCallSimulator(build_market(run_config.market), run_config.simulation)


@pytest.fixture(scope="session")
def loaded(run_dir: Path, run_sim: CoveredCallSimulator):
    """load_run per policy, sharing one rebuilt market."""
    cache: dict[str, RunExamples] = {}

    def get(policy: str) -> RunExamples:
        if policy not in cache:
            cache[policy] = load_run(run_dir, policy, simulator=run_sim)
        return cache[policy]

    return get
