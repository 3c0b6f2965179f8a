"""A process killed mid-batch, then resumed: no request is submitted twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.llm.batch import (
    BATCHES_FILE,
    BatchItem,
    BatchLedger,
    OpenAIBatchProvider,
    PollPolicy,
    run_batches,
)
from harness.llm.retry import RetryPolicy
from tests.llm.batch_server import BatchServer
from tests.llm.fixtures import KEY_ENV, SECRET

ROOT = Path(__file__).resolve().parents[2]
N = 6
METADATA = {"harness_run": "killed-run"}

# The child builds the same items and runs the batches; the test kills it part-way.
CHILD = """
import sys
from pathlib import Path
from harness.llm.batch import BatchItem, BatchLedger, BatchLimits, OpenAIBatchProvider, PollPolicy
from harness.llm.batch import run_batches
url, folder, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
items = [
    BatchItem(f"key-{i}", "gpt-4o-mini", url,
              {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"decision {i}"}]})
    for i in range(n)
]
run_batches(
    items,
    lambda base_url, model: OpenAIBatchProvider(base_url=base_url, api_key_env=sys.argv[4]),
    BatchLedger(folder / "batches.json"),
    limits=BatchLimits(max_requests=4),
    metadata={"harness_run": "killed-run"},
    poll=PollPolicy(initial_s=0.05, max_s=0.05),
)
"""


def _items(url: str) -> list[BatchItem]:
    return [
        BatchItem(
            f"key-{i}",
            "gpt-4o-mini",
            url,
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"decision {i}"}]},
        )
        for i in range(N)
    ]


def _start(server: BatchServer, folder: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), KEY_ENV: SECRET}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, server.url, str(folder), str(N), KEY_ENV],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(condition: Callable[[], bool], child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if child.poll() is not None:
            raise AssertionError(f"child ended early: {child.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "timed out waiting for the child"
        time.sleep(0.02)


def _recorded_batches(folder: Path) -> int:
    try:
        data = json.loads((folder / BATCHES_FILE).read_text())
    except (OSError, ValueError):
        return 0
    return sum(1 for e in data["entries"] if e["batch_id"])


def _resume(server: BatchServer, folder: Path) -> dict:
    return run_batches(
        _items(server.url),
        lambda base_url, model: OpenAIBatchProvider(
            base_url=base_url,
            api_key_env=KEY_ENV,
            retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.001),
        ),
        BatchLedger(folder / BATCHES_FILE),
        metadata=METADATA,
        poll=PollPolicy(initial_s=0.001, max_s=0.005),
    )


def _assert_no_secret(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_killed_after_create_resumes_without_resubmitting(tmp_path: Path, api_key: str) -> None:
    with BatchServer() as server:
        server.hold = True  # batches stay `validating` while the child polls
        child = _start(server, tmp_path)
        try:
            _wait_for(lambda: _recorded_batches(tmp_path) == 2, child)
        finally:
            child.kill()
            child.wait()
        server.hold = False
        results = _resume(server, tmp_path)
        assert sorted(results) == [f"key-{i}" for i in range(N)]
        assert all(result.status_code == 200 for result in results.values())
        assert server.created == 2 and len(server.uploads) == 2
        assert dict(server.submitted) == {f"key-{i}": 1 for i in range(N)}
    _assert_no_secret(tmp_path)


def test_batch_created_just_before_the_kill_is_found_not_resubmitted(
    tmp_path: Path, api_key: str
) -> None:
    with BatchServer() as server:
        server.create_delay_s = 3.0  # the first create lands; its answer comes too late
        child = _start(server, tmp_path)
        try:
            _wait_for(lambda: server.created == 1, child)
        finally:
            child.kill()
            child.wait()
        assert _recorded_batches(tmp_path) == 0
        server.create_delay_s = 0.0
        results = _resume(server, tmp_path)
        assert sorted(results) == [f"key-{i}" for i in range(N)]
        assert server.calls["GET /v1/batches"] >= 1
        assert server.created == 2  # the found one and the second file's
        assert dict(server.submitted) == {f"key-{i}": 1 for i in range(N)}
    _assert_no_secret(tmp_path)


def test_ledger_reload_sees_what_another_process_wrote(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    first = BatchLedger(folder / BATCHES_FILE)
    entry = first.add(_items("http://127.0.0.1:1/v1")[:2], METADATA)
    first.update(entry.name, file_id="file-1", batch_id="batch_1", status="in_progress")
    second = BatchLedger(folder / BATCHES_FILE)
    assert second.entries == first.entries
    assert second.entries[0].metadata["harness_request_file"] == entry.name
