"""A real viewer server on 127.0.0.1 (port 0) over a runs folder of fake runs and a sweep."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from harness.reports.view.app import create_app
from tests.run_fixtures import FakeRun, write_fake_run

RUN_A = "20240601T000000Z-aaaaaa-fake"
RUN_B = "20240602T000000Z-bbbbbb-fake"
SWEEP = "20240603T000000Z-cccccc-sweep"
# Run B's LLM decides differently at these indices (candidate index, None = DO_NOTHING).
CHANGES = {1: 2, 2: None, 5: 0, 9: 1}


@dataclass
class Viewer:
    """The served runs folder and the server's base URL."""

    base: str
    runs_dir: Path
    run_a: FakeRun
    run_b: FakeRun


@pytest.fixture(scope="package")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    root = tmp_path_factory.mktemp("view_runs")
    a = write_fake_run(root / RUN_A)
    b = write_fake_run(root / RUN_B, prompt_id="covered_call_v2@bbbb2222", llm_overrides=CHANGES)
    sweep = root / SWEEP
    (sweep / "trials").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"name": "delta_sweep"}))
    write_fake_run(sweep / "trials" / "t-001", fail_llm=True)
    write_fake_run(sweep / "trials" / "t-002", skip_llm=True)
    server = uvicorn.Server(
        uvicorn.Config(create_app(root), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("viewer server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Viewer(f"http://127.0.0.1:{port}", root, a, b)
    server.should_exit = True
    thread.join(timeout=10)
