"""run_batches and OpenAIBatchProvider against the local batch server, in each failure mode."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness.llm.batch import (
    BATCHES_FILE,
    BatchFailed,
    BatchItem,
    BatchLedger,
    BatchLimits,
    BatchResult,
    BatchStillRunning,
    OpenAIBatchProvider,
    PollPolicy,
    run_batches,
)
from harness.llm.client import (
    ChatClient,
    ChatRequest,
    LLMBadRequest,
    LLMKeyMissing,
    LLMRateLimited,
    normalise_base_url,
)
from harness.llm.retry import RetryPolicy
from tests.llm.batch_server import BatchServer, ChatError, Outcome, completion
from tests.llm.fixtures import KEY_ENV, SECRET

FAST_POLL = PollPolicy(initial_s=0.001, max_s=0.005, factor=2.0)
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.01)
METADATA = {"harness_run": "run-1", "policy": "gpt"}


def _requests(n: int, model: str = "gpt-4o-mini") -> list[ChatRequest]:
    return [
        ChatRequest(model=model, messages=(("user", f"decision {i}"),), max_tokens=50)
        for i in range(n)
    ]


def _items(server: BatchServer, requests: list[ChatRequest]) -> list[BatchItem]:
    client = ChatClient(base_url=server.url, api_key_env=KEY_ENV)
    return [
        BatchItem(
            custom_id=f"key-{r.messages[0][1].replace(' ', '-')}-{r.model}",
            model=r.model,
            base_url=normalise_base_url(server.url),
            body=client.request_body(r),
        )
        for r in requests
    ]


def _provider_for(base_url: str, model: str) -> OpenAIBatchProvider:
    return OpenAIBatchProvider(base_url=base_url, api_key_env=KEY_ENV, retry=FAST_RETRY)


def _run(
    items: list[BatchItem], ledger: BatchLedger, lines: list[str] | None = None, **kw: Any
) -> dict[str, BatchResult]:
    settings: dict[str, Any] = {"metadata": METADATA, "poll": FAST_POLL, "limits": BatchLimits()}
    settings.update(kw)
    return run_batches(
        items,
        _provider_for,
        ledger,
        progress=(lines.append if lines is not None else None),
        **settings,
    )


def _by_message(body: dict[str, Any]) -> dict[str, Any] | ChatError:
    text = body["messages"][-1]["content"]
    if text.endswith(" 3"):
        return ChatError(400, "Invalid value for 'temperature'", "invalid_value")
    return completion({"action": "DO_NOTHING", "rationale": text})


def _no_secret_written(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_completed_batches_match_live_answers(tmp_path: Path, api_key: str) -> None:
    requests = _requests(5) + _requests(3, model="o4-mini")
    with BatchServer(_by_message, polls_per_state=2) as server:
        items = _items(server, requests)
        lines: list[str] = []
        ledger = BatchLedger(tmp_path / BATCHES_FILE)
        results = _run(items, ledger, lines, limits=BatchLimits(max_requests=2))
        assert server.chat_calls == 0
        assert server.calls["POST /v1/batches"] == 5  # 3 files of gpt-4o-mini, 2 of o4-mini
        assert all(n == 1 for n in server.submitted.values()) and len(server.submitted) == 8
        # the same answers asked live
        live_client = ChatClient(base_url=server.url, api_key_env=KEY_ENV, retry=FAST_RETRY)
        for request, item in zip(requests, items, strict=True):
            result = results[item.custom_id]
            if request.messages[0][1].endswith(" 3"):
                assert isinstance(result.error, LLMBadRequest) and result.status_code == 400
                with pytest.raises(LLMBadRequest):
                    live_client.complete(request)
                continue
            live = live_client.complete(request)
            batch = live_client.parse_completion(result.body or {}, request)
            assert batch.choices == live.choices and batch.usage == live.usage
            assert batch.request_params == live.request_params
        live_client.close()
        # a progress line per poll: status and counts
        assert any("in_progress" in line and "completed" in line for line in lines)
        assert any(line.endswith("0 failed") and ": completed," in line for line in lines)
        entries = ledger.entries
        assert {e.status for e in entries} == {"completed"}
        assert sorted(ledger.batch_ids(policy="gpt")) == sorted(e.batch_id for e in entries)
        assert ledger.batch_ids(policy="other") == []
        for server_auth in server.authorizations:
            assert server_auth == f"Bearer {SECRET}"
    _no_secret_written(tmp_path)


def test_second_call_reads_the_saved_output_and_submits_nothing(
    tmp_path: Path, api_key: str
) -> None:
    with BatchServer() as server:
        items = _items(server, _requests(4))
        first = _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        calls = dict(server.calls)
        again = _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        assert dict(server.calls) == calls
        assert {k: r.body for k, r in again.items()} == {k: r.body for k, r in first.items()}


def test_failed_batch_names_the_batch_and_the_provider_text(tmp_path: Path, api_key: str) -> None:
    with BatchServer() as server:
        server.script(Outcome("failed", errors=("Enqueued token limit reached for gpt-4o-mini",)))
        items = _items(server, _requests(3))
        ledger = BatchLedger(tmp_path / BATCHES_FILE)
        with pytest.raises(BatchFailed) as caught:
            _run(items, ledger)
        (batch_id,) = ledger.batch_ids()
        assert batch_id in str(caught.value)
        assert "Enqueued token limit reached" in str(caught.value)
        assert ledger.entries[0].status == "failed"
        # the failed batch ran nothing: a later call submits its requests again
        results = _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        assert len(results) == 3 and all(n == 2 for n in server.submitted.values())


def test_invalid_input_file_fails_validation(tmp_path: Path, api_key: str) -> None:
    with BatchServer() as server:
        items = _items(server, _requests(2))
        # one request file mixing two models: the server rejects it like OpenAI does
        mixed = [
            items[0],
            BatchItem(
                items[1].custom_id,
                items[0].model,
                items[0].base_url,
                {**items[1].body, "model": "other"},
            ),
        ]
        with pytest.raises(BatchFailed, match="mixes models"):
            _run(mixed, BatchLedger(tmp_path / BATCHES_FILE))


def test_expired_batch_keeps_its_completed_answers(tmp_path: Path, api_key: str) -> None:
    with BatchServer() as server:
        server.script(Outcome("expired", answered=3))
        items = _items(server, _requests(5))
        ledger = BatchLedger(tmp_path / BATCHES_FILE)
        results = _run(items, ledger)
        assert sorted(results) == sorted(item.custom_id for item in items[:3])
        assert ledger.entries[0].status == "expired"
        # the two that never ran go again on the next call; the three answered do not
        again = _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        assert len(again) == 5
        assert [server.submitted[item.custom_id] for item in items] == [1, 1, 1, 2, 2]


def test_cancelled_batch_keeps_what_was_done(tmp_path: Path, api_key: str) -> None:
    with BatchServer() as server:
        items = _items(server, _requests(4))
        provider = _provider_for(server.url, "gpt-4o-mini")
        ledger = BatchLedger(tmp_path / BATCHES_FILE)
        with pytest.raises(BatchStillRunning):
            _run(items, ledger, poll=PollPolicy(initial_s=0.001, max_wait_s=0.0))
        (batch_id,) = ledger.batch_ids()
        assert ledger.entries[0].status == "in_progress"  # half done at the first poll
        assert provider.cancel(batch_id).status == "cancelling"
        results = _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        ledger.reload()
        assert sorted(results) == sorted(item.custom_id for item in items[:2])
        assert ledger.entry("requests-0001.jsonl").status == "cancelled"
        provider.close()


def test_429_on_create_waits_what_retry_after_says(tmp_path: Path, api_key: str) -> None:
    with BatchServer() as server:
        server.reject_creates(1, retry_after="1")
        items = _items(server, _requests(2))
        started = time.perf_counter()
        results = _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        assert time.perf_counter() - started >= 1.0
        assert len(results) == 2 and server.calls["POST /v1/batches"] == 2
        assert server.created == 1


def test_429_on_every_create_is_reported(tmp_path: Path, api_key: str) -> None:
    with BatchServer() as server:
        server.reject_creates(3)
        items = _items(server, _requests(1))
        ledger = BatchLedger(tmp_path / BATCHES_FILE)
        with pytest.raises(LLMRateLimited, match="creating a batch"):
            _run(items, ledger)
        assert server.created == 0 and ledger.entries[0].file_id is not None
        # next call: the uploaded file is reused (listed first, nothing found), then created
        _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        assert len(server.uploads) == 1 and server.created == 1


def test_batch_created_but_not_recorded_is_found_by_its_metadata(
    tmp_path: Path, api_key: str
) -> None:
    with BatchServer() as server:
        items = _items(server, _requests(3))
        ledger = BatchLedger(tmp_path / BATCHES_FILE)
        entry = ledger.add(items, METADATA)
        provider = _provider_for(server.url, "gpt-4o-mini")
        file_id = provider.upload(ledger.path_of(entry.name).read_bytes(), entry.name)
        ledger.update(entry.name, file_id=file_id)
        provider.create(file_id, entry.metadata)  # the process "died" before recording this
        lines: list[str] = []
        results = _run(items, BatchLedger(tmp_path / BATCHES_FILE), lines)
        assert len(results) == 3 and server.created == 1
        assert server.calls["GET /v1/batches"] == 1
        assert any("created before a stop" in line for line in lines)
        provider.close()


def test_missing_key_is_reported_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with BatchServer() as server:
        items = _items(server, _requests(1))
        with pytest.raises(LLMKeyMissing):
            _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        assert sum(server.calls.values()) == 0


def test_ledger_records_the_file_id_before_the_batch(tmp_path: Path, api_key: str) -> None:
    with BatchServer() as server:
        server.reject_creates(3)
        items = _items(server, _requests(2))
        with pytest.raises(LLMRateLimited):
            _run(items, BatchLedger(tmp_path / BATCHES_FILE))
    data = json.loads((tmp_path / BATCHES_FILE).read_text())
    (entry,) = data["entries"]
    assert entry["file_id"] and entry["batch_id"] is None
    assert entry["custom_ids"] == [item.custom_id for item in items]
    assert (tmp_path / "batch_files" / entry["name"]).exists()


def test_metadata_limits_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metadata"):
        run_batches(
            [], _provider_for, BatchLedger(tmp_path / BATCHES_FILE), metadata={"k": "v" * 600}
        )


def test_errors_are_kept_unless_the_caller_asks_to_resubmit(tmp_path: Path, api_key: str) -> None:
    flaky = {"left": 1}

    def answer(body: dict[str, Any]) -> dict[str, Any] | ChatError:
        if body["messages"][-1]["content"].endswith(" 1") and flaky["left"]:
            flaky["left"] -= 1
            return ChatError(500, "upstream hiccup", type="server_error")
        return completion({"action": "DO_NOTHING"})

    with BatchServer(answer) as server:
        items = _items(server, _requests(2))
        first = _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        assert first[items[1].custom_id].error is not None
        # a plain resume returns the saved error: nothing is submitted again
        again = _run(items, BatchLedger(tmp_path / BATCHES_FILE))
        assert again[items[1].custom_id].status_code == 500 and server.created == 1
        # leftovers: resubmit names it: it goes again, alone
        third = _run(items, BatchLedger(tmp_path / BATCHES_FILE), resubmit=[items[1].custom_id])
        assert third[items[1].custom_id].status_code == 200
        assert third[items[0].custom_id].status_code == 200
        assert (
            server.submitted[items[1].custom_id] == 2 and server.submitted[items[0].custom_id] == 1
        )
