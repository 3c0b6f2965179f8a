"""Chat completions by a provider's batch API: request files, the provider seam, `batches.json`.

The wire half of batch execution. `batch_lines`/`split_batches` write OpenAI's JSONL request
format (`custom_id` = the response-cache key, one model and base_url per file, at most
`BatchLimits` lines and bytes per file); `parse_output_line` reads output and error file lines,
classifying errors with the live taxonomy of `harness.llm.client`; `BatchProvider` is the seam a
provider's batch API plugs into (`OpenAIBatchProvider` implements OpenAI's shape through the
openai SDK); `BatchLedger` keeps the jobs of a run in `batches.json` so a killed run resumes
without resubmitting; `run_batches` drives submit -> poll -> download.

The statuses of a batch (OpenAI): validating -> in_progress -> finalizing -> completed, or
failed (the input file did not validate, or the organisation's queue is full), expired (not done
within the 24 h window: the output file holds what was completed), cancelling -> cancelled (the
same). Lines that were never run come back in the error file with code `batch_expired` /
`batch_cancelled`; `run_batches` leaves them out of its result so the caller applies its
`leftovers` policy.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import openai

from harness import strict_json
from harness.llm.client import (
    DEFAULT_API_KEY_ENV,
    ChatClient,
    LLMCallError,
    LLMError,
    LLMServerError,
    LLMTimeout,
    LLMUnreachable,
    error_class_for_status,
)
from harness.llm.retry import (
    QUOTA_CODES,
    RetryPolicy,
    is_quota_exhausted,
    server_reason,
    sync_retrying,
)

log = logging.getLogger("harness.llm")

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
BATCHES_FILE = "batches.json"
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# Error-file codes of lines the provider never ran: absent from the result, not failures.
MISSING_CODES = frozenset({"batch_expired", "batch_cancelled"})
# OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS = 16
REQUEST_FILE_KEY = "harness_request_file"

T = TypeVar("T")


# -- request files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchItem:
    """One chat-completion request to go by batch."""

    custom_id: str  # the response-cache key of the request
    model: str
    base_url: str  # normalised (`normalise_base_url`)
    body: dict[str, Any]  # ChatClient.request_body(request)


@dataclass(frozen=True)
class BatchLimits:
    """Most requests and bytes one input file may hold (OpenAI: 50,000 and 200 MB)."""

    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ValueError("batch limits must be >= 1 (max_requests, max_bytes)")


def batch_line(item: BatchItem, endpoint: str = ENDPOINT) -> bytes:
    """One JSONL request line (newline included): custom_id, method, url, body."""
    line = {"custom_id": item.custom_id, "method": "POST", "url": endpoint, "body": item.body}
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def batch_lines(items: Sequence[BatchItem], endpoint: str = ENDPOINT) -> list[bytes]:
    """The JSONL request lines of `items`, in order."""
    return [batch_line(item, endpoint) for item in items]


def split_batches(
    items: Sequence[BatchItem], limits: BatchLimits, endpoint: str = ENDPOINT
) -> list[list[BatchItem]]:
    """Group `items` into input files: one model + base_url each, within `limits`.

    Order is kept within a group; groups appear in the order of their first item.
    """
    seen: set[str] = set()
    groups: dict[tuple[str, str], list[list[BatchItem]]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for item in items:
        if item.custom_id in seen:
            raise ValueError(f"custom_id {item.custom_id!r} appears twice in one batch submission")
        seen.add(item.custom_id)
        size = len(batch_line(item, endpoint))
        if size > limits.max_bytes:
            raise ValueError(
                f"request {item.custom_id!r} alone is {size} bytes, over the batch file limit "
                f"max_bytes={limits.max_bytes}"
            )
        key = (item.base_url, item.model)
        files = groups.setdefault(key, [[]])
        current = files[-1]
        if current and (
            len(current) >= limits.max_requests or sizes[key] + size > limits.max_bytes
        ):
            current = []
            files.append(current)
            sizes[key] = 0
        current.append(item)
        sizes[key] = sizes.get(key, 0) + size
    return [chunk for files in groups.values() for chunk in files]


# -- output and error files ------------------------------------------------------------------


@dataclass(frozen=True)
class BatchResult:
    """What came back for one custom_id: a chat-completion body, or a classified error."""

    custom_id: str
    status_code: int | None
    body: dict[str, Any] | None  # the chat completion body when status_code == 200
    error: LLMError | None  # classified with the live taxonomy (never cached)
    code: str | None = None  # the provider's error code (`batch_expired`, `rate_limit`...)

    @property
    def missing(self) -> bool:
        """True when the provider never ran this request (the batch expired or was cancelled)."""
        return self.code in MISSING_CODES


def _error_text(error: object) -> tuple[str, str | None, str | None]:
    """(message, code, type) of an OpenAI-style error object."""
    if isinstance(error, Mapping):
        code, kind = error.get("code"), error.get("type")
        message = error.get("message") or json.dumps(error)[:300]
        return (
            str(message)[:500],
            None if code is None else str(code),
            None if kind is None else str(kind),
        )
    return str(error)[:500], None, None


def parse_output_line(line: bytes | str) -> BatchResult:
    """One line of a batch output or error file (OpenAI's format) as a `BatchResult`."""
    text = line.decode() if isinstance(line, bytes) else line
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError(f"batch output line is not JSON: {text[:200]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        raise ValueError(f"batch output line has no custom_id: {text[:200]!r}")
    custom_id = data["custom_id"]
    response = data.get("response")
    if isinstance(response, Mapping) and response.get("status_code") is not None:
        status = int(response["status_code"])
        body = response.get("body")
        if status == 200 and isinstance(body, dict):
            return BatchResult(custom_id, 200, body, None)
        raw_error = body.get("error", body) if isinstance(body, Mapping) else body
        message, code, kind = _error_text(raw_error)
        if status == 200:  # a 200 line without a JSON body: as live, a server error
            error: LLMError = LLMServerError(
                f"batch line HTTP 200 but not a chat completion: {message}",
                attempts=1,
                status_code=200,
                reason=message,
            )
            return BatchResult(custom_id, 200, None, error, code)
        cls = error_class_for_status(status, quota_exhausted=bool({code, kind} & QUOTA_CODES))
        error = cls(
            f"HTTP {status} in the batch error file: {message}",
            attempts=1,
            status_code=status,
            reason=message,
        )
        return BatchResult(custom_id, status, None, error, code)
    message, code, _ = _error_text(data.get("error") or "no response and no error")
    error = LLMServerError(
        f"batch request not answered ({code or 'no code'}): {message}", attempts=0, reason=message
    )
    return BatchResult(custom_id, None, None, error, code)


def parse_output(data: bytes) -> list[BatchResult]:
    """Every non-empty line of an output or error file."""
    return [parse_output_line(line) for line in data.splitlines() if line.strip()]


# -- the provider seam -----------------------------------------------------------------------


@dataclass(frozen=True)
class BatchJob:
    """A batch as the provider reports it.

    `status`: validating | in_progress | finalizing | completed | failed | expired | cancelling |
    cancelled. `request_counts`: total, completed, failed. `errors`: the provider's validation
    errors of a failed batch, as text.
    """

    id: str
    status: str
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        """True once the batch will not change any more."""
        return self.status in TERMINAL_STATUSES


class BatchProvider(Protocol):
    """A provider's batch API: upload a request file, create, follow and cancel batches."""

    def upload(self, data: bytes, filename: str) -> str:
        """Upload a JSONL request file; its file id."""
        ...

    def create(self, input_file_id: str, metadata: dict[str, str]) -> BatchJob:
        """Start a batch over an uploaded file."""
        ...

    def retrieve(self, batch_id: str) -> BatchJob:
        """The batch now."""
        ...

    def list(self, limit: int = 100) -> list[BatchJob]:
        """The `limit` most recent batches, newest first."""
        ...

    def content(self, file_id: str) -> bytes:
        """Content of an output or error file."""
        ...

    def cancel(self, batch_id: str) -> BatchJob:
        """Ask the provider to stop a batch (completed lines are kept)."""
        ...


def _job(batch: Any) -> BatchJob:
    """A `BatchJob` from the openai SDK's `Batch`."""
    counts = batch.request_counts
    errors = []
    for error in getattr(batch.errors, "data", None) or []:
        where = f" (line {error.line})" if error.line is not None else ""
        errors.append(f"{error.code or 'error'}: {error.message or ''}{where}")
    return BatchJob(
        id=batch.id,
        status=batch.status,
        input_file_id=batch.input_file_id,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        request_counts=(
            {"total": counts.total, "completed": counts.completed, "failed": counts.failed}
            if counts is not None
            else {}
        ),
        metadata=dict(batch.metadata or {}),
        errors=errors,
    )


def _create_retryable(exc: BaseException) -> bool:
    # A 429 means the batch was not created; a timeout or 5xx may have created it, so those are
    # not retried blindly: `run_batches` looks the batch up by its metadata first.
    return (
        isinstance(exc, openai.APIStatusError)
        and exc.status_code == 429
        and not is_quota_exhausted(exc)
    )


class OpenAIBatchProvider:
    """OpenAI's Batch API (`/v1/files`, `/v1/batches`) through the openai SDK.

    Uses the same key variable, extra headers/query and timeout as the policy's `ChatClient`;
    every call is retried with `harness.llm.retry` (tenacity: backoff, Retry-After honoured),
    except `create`, which retries only a 429 (a timed-out create may have succeeded).

    Other providers differ, and plug in as another `BatchProvider` chosen by `provider_for`:
    - OpenRouter takes the requests inline: `POST /api/beta/batches` with `endpoint`, `model`
      and a `requests` array of {custom_id, body}, no file upload (202, status `validating`). Its
      provider would keep the lines in `upload` (returning a local id) and send them in `create`.
    - Together uses the same JSONL lines but uploads with purpose `batch-api` (a subclass
      overriding `upload`), and its statuses are upper-case (VALIDATING, IN_PROGRESS, ...):
      `retrieve` would lower-case them.
    - vLLM's `run-batch` is an offline CLI reading the same JSONL and writing OpenAI-format
      output lines: no server is involved; the run side exports lines and imports the output
      with `parse_output`.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key_env: str | None = DEFAULT_API_KEY_ENV,
        timeout_s: float = 60.0,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.chat = ChatClient(
            base_url=base_url,
            api_key_env=api_key_env,
            timeout_s=timeout_s,
            retry=retry,
            extra_headers=extra_headers,
            extra_query=extra_query,
        )
        self.base_url = self.chat.base_url

    def __repr__(self) -> str:
        return f"OpenAIBatchProvider(base_url={self.base_url!r})"

    def _call(
        self,
        what: str,
        fn: Callable[[openai.OpenAI], T],
        retry_if: Callable[[BaseException], bool] | None = None,
    ) -> T:
        sdk = self.chat.sdk_client()
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            return fn(sdk)

        retrying = (
            sync_retrying(self.chat.retry, self.chat.redact)
            if retry_if is None
            else sync_retrying(self.chat.retry, self.chat.redact, retry_if)
        )
        try:
            return retrying(attempt)
        except Exception as exc:
            # `from None`: the SDK exception carries the request headers (the key).
            raise self._error(exc, what, attempts) from None

    def _error(self, exc: Exception, what: str, attempts: int) -> LLMError:
        if isinstance(exc, LLMError):
            return exc
        reason = self.chat.redact(server_reason(exc))
        where = f"{what} at {self.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            return LLMTimeout(f"{where}: timeout", attempts=attempts, reason=reason)
        if isinstance(exc, openai.APIConnectionError):
            return LLMUnreachable(f"{where}: {reason}", attempts=attempts, reason=reason)
        if isinstance(exc, openai.APIStatusError):
            cls = error_class_for_status(exc.status_code, quota_exhausted=is_quota_exhausted(exc))
            return cls(
                f"{where}: HTTP {exc.status_code}: {reason} (after {attempts} attempts)",
                attempts=attempts,
                status_code=exc.status_code,
                reason=reason,
            )
        return LLMCallError(f"{where}: {reason}", attempts=attempts, reason=reason)

    def upload(self, data: bytes, filename: str) -> str:
        """Upload a request file with purpose `batch`; its file id."""
        return self._call(
            f"uploading {filename}",
            lambda sdk: (
                sdk.files.create(file=(filename, data, "application/jsonl"), purpose="batch").id
            ),
        )

    def create(self, input_file_id: str, metadata: dict[str, str]) -> BatchJob:
        """Create a batch over `/v1/chat/completions` with a 24 h window."""
        return self._call(
            f"creating a batch over {input_file_id}",
            lambda sdk: _job(
                sdk.batches.create(
                    input_file_id=input_file_id,
                    endpoint=ENDPOINT,
                    completion_window=COMPLETION_WINDOW,
                    metadata=metadata,
                )
            ),
            retry_if=_create_retryable,
        )

    def retrieve(self, batch_id: str) -> BatchJob:
        """`GET /v1/batches/{id}`."""
        return self._call(
            f"polling batch {batch_id}", lambda sdk: _job(sdk.batches.retrieve(batch_id))
        )

    def list(self, limit: int = 100) -> list[BatchJob]:
        """`GET /v1/batches`, following pages until `limit` batches (newest first)."""

        def fetch(sdk: openai.OpenAI) -> list[BatchJob]:
            out: list[BatchJob] = []
            for batch in sdk.batches.list(limit=min(limit, 100)):
                out.append(_job(batch))
                if len(out) >= limit:
                    break
            return out

        return self._call("listing batches", fetch)

    def content(self, file_id: str) -> bytes:
        """`GET /v1/files/{id}/content`."""
        return self._call(f"downloading {file_id}", lambda sdk: sdk.files.content(file_id).content)

    def cancel(self, batch_id: str) -> BatchJob:
        """`POST /v1/batches/{id}/cancel`."""
        return self._call(
            f"cancelling batch {batch_id}", lambda sdk: _job(sdk.batches.cancel(batch_id))
        )

    def close(self) -> None:
        """Close the SDK client."""
        self.chat.close()


# -- the ledger (batches.json) ---------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """One request file of a run and what became of it."""

    name: str  # the request file, in the ledger's folder
    model: str
    base_url: str
    metadata: dict[str, str]
    custom_ids: list[str]
    file_id: str | None = None  # recorded before the batch is created
    batch_id: str | None = None
    status: str = "written"  # written | uploaded | a provider status
    request_counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)
    downloaded: bool = False  # output and error files saved next to the request file

    @property
    def terminal(self) -> bool:
        """True once the provider will not change the batch any more."""
        return self.status in TERMINAL_STATUSES


class BatchLedger:
    """`batches.json` in the run folder: one entry per request file, saved after every change.

    Request files and downloaded output/error files live in `batch_files/` next to it. The file
    id is recorded before the batch is created, so after a kill `run_batches` can find a batch
    that was created but never recorded (by its metadata, through `provider.list`). Holds no
    credentials.
    """

    VERSION = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.folder = self.path.parent / "batch_files"
        self._lock = threading.Lock()
        self._entries: dict[str, LedgerEntry] = {}
        self.reload()

    def reload(self) -> None:
        """Read `batches.json` again (nothing when it does not exist yet)."""
        with self._lock:
            self._entries = {}
            if not self.path.exists():
                return
            try:
                data = json.loads(self.path.read_text())
                entries = [LedgerEntry(**raw) for raw in data["entries"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path} is not a batch ledger: {exc}") from None
            self._entries = {e.name: e for e in entries}

    @property
    def entries(self) -> list[LedgerEntry]:
        """Every request file of the run, in the order they were written."""
        with self._lock:
            return list(self._entries.values())

    def entry(self, name: str) -> LedgerEntry:
        """The entry of request file `name`."""
        with self._lock:
            return self._entries[name]

    def batch_ids(self, **match: str) -> list[str]:
        """Ids of the created batches whose metadata holds every `match` pair."""
        return [
            e.batch_id
            for e in self.entries
            if e.batch_id is not None and all(e.metadata.get(k) == v for k, v in match.items())
        ]

    def path_of(self, name: str, kind: str = "requests") -> Path:
        """Where request file `name` (`kind` requests) or its `output`/`errors` file is kept."""
        stem = name.removesuffix(".jsonl")
        return self.folder / (name if kind == "requests" else f"{stem}.{kind}.jsonl")

    def add(
        self, items: Sequence[BatchItem], metadata: Mapping[str, str], endpoint: str = ENDPOINT
    ) -> LedgerEntry:
        """Write a request file for `items` (one model + base_url) and record it."""
        with self._lock:  # held throughout: two policies adding at once get distinct names
            name = f"requests-{len(self._entries) + 1:04d}.jsonl"
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.path_of(name), b"".join(batch_lines(items, endpoint)))
            entry = LedgerEntry(
                name=name,
                model=items[0].model,
                base_url=items[0].base_url,
                metadata={**metadata, REQUEST_FILE_KEY: name},
                custom_ids=[item.custom_id for item in items],
            )
            self._entries[name] = entry
            self._save()
        return entry

    def update(self, name: str, **changes: Any) -> LedgerEntry:
        """Change fields of an entry and save."""
        with self._lock:
            entry = replace(self._entries[name], **changes)
            self._entries[name] = entry
            self._save()
        return entry

    def _save(self) -> None:
        data = {"version": self.VERSION, "entries": [asdict(e) for e in self._entries.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, strict_json.dumps(data, indent=1).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# -- running batches -------------------------------------------------------------------------


@dataclass(frozen=True)
class PollPolicy:
    """How often to poll a batch: exponential backoff between polls, in seconds.

    `max_wait_s`: stop waiting after this long (None: until every batch is terminal); the
    batches keep running at the provider and a later call resumes them from the ledger.
    """

    initial_s: float = 10.0
    max_s: float = 300.0
    factor: float = 2.0
    max_wait_s: float | None = None

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < 0 or self.factor < 1:
            raise ValueError("poll intervals must be >= 0 and factor >= 1")


class BatchFailed(LLMCallError):
    """A batch ended `failed` (its input was rejected, or the provider's queue was full)."""

    kind = "batch_failed"


class BatchStillRunning(LLMCallError):
    """`PollPolicy.max_wait_s` passed with batches still running (they stay in the ledger)."""

    kind = "batch_running"


def _check_metadata(metadata: Mapping[str, str]) -> None:
    if len(metadata) + 1 > MAX_METADATA_PAIRS:
        raise ValueError(f"batch metadata holds at most {MAX_METADATA_PAIRS - 1} pairs")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise ValueError(
                f"batch metadata {key!r}: keys up to 64 characters, string values up to 512"
            )


def run_batches(
    items: Sequence[BatchItem],
    provider_for: Callable[[str, str], BatchProvider],
    ledger: BatchLedger,
    *,
    limits: BatchLimits = BatchLimits(),
    metadata: Mapping[str, str],
    poll: PollPolicy = PollPolicy(),
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    resubmit: Iterable[str] = (),
) -> dict[str, BatchResult]:
    """Answer `items` by batch: submit, poll, download; a result per custom_id that came back.

    Requests the ledger already holds are not submitted again: pending ones are polled, answered
    ones are read from the saved output. A request whose earlier batch failed, expired or was
    cancelled before it ran is submitted again. Items the output lacks (an expired or cancelled
    batch) are absent from the result. Raises `BatchFailed` when a batch fails (after recording
    it) and `BatchStillRunning` after `poll.max_wait_s`. `resubmit` names custom_ids whose
    earlier error results are ignored, so they are submitted again (the caller's
    `leftovers: resubmit`); a later entry holding them is polled or read instead.
    """
    again = frozenset(resubmit)
    _check_metadata(metadata)
    say = progress or (lambda line: log.info("%s", line))
    wanted: dict[str, BatchItem] = {}
    for item in items:
        wanted.setdefault(item.custom_id, item)
    providers: dict[tuple[str, str], BatchProvider] = {}

    def provider(entry: LedgerEntry) -> BatchProvider:
        key = (entry.base_url, entry.model)
        if key not in providers:
            providers[key] = provider_for(entry.base_url, entry.model)
        return providers[key]

    results: dict[str, BatchResult] = {}
    active: list[str] = []
    claimed: set[str] = set()
    for entry in ledger.entries:
        ids = set(entry.custom_ids) & wanted.keys() - claimed
        if not ids or entry.status == "failed":
            continue
        if entry.downloaded:
            for result in _saved_results(ledger, entry):
                retry = result.custom_id in again and result.error is not None
                if result.custom_id in ids and not result.missing and not retry:
                    results[result.custom_id] = result
                    claimed.add(result.custom_id)
        else:
            active.append(entry.name)
            claimed |= ids
    fresh = [item for key, item in wanted.items() if key not in claimed]
    groups = split_batches(fresh, limits)
    for group in groups:
        active.append(ledger.add(group, metadata).name)
    if fresh:
        say(f"batch: {len(fresh)} new requests in {len(groups)} request files")

    for name in active:
        entry = ledger.entry(name)
        if entry.batch_id is None:
            _submit(ledger, entry, provider(entry), say)

    _poll_until_done(ledger, active, provider, poll, say, sleep)
    for name in active:
        for result in _saved_results(ledger, ledger.entry(name)):
            if result.custom_id in wanted and not result.missing:
                results[result.custom_id] = result
    return results


def _submit(
    ledger: BatchLedger, entry: LedgerEntry, provider: BatchProvider, say: Callable[[str], None]
) -> None:
    """Upload (file id recorded first) and create the batch of `entry`, or find it if created."""
    if entry.file_id is None:
        data = ledger.path_of(entry.name).read_bytes()
        file_id = provider.upload(data, entry.name)
        entry = ledger.update(entry.name, file_id=file_id, status="uploaded")
    else:
        # Uploaded by an earlier process: it may have created the batch and died before
        # recording it. Creating again would submit every request twice.
        for job in provider.list(limit=100):
            if job.input_file_id == entry.file_id and all(
                job.metadata.get(k) == v for k, v in entry.metadata.items()
            ):
                ledger.update(entry.name, batch_id=job.id, status=job.status)
                say(f"batch {job.id}: found the batch of {entry.name} created before a stop")
                return
    job = provider.create(entry.file_id, entry.metadata)
    ledger.update(entry.name, batch_id=job.id, status=job.status)
    say(
        f"batch {job.id}: submitted {len(entry.custom_ids)} requests of {entry.model} "
        f"({entry.name})"
    )


def _poll_until_done(
    ledger: BatchLedger,
    names: Sequence[str],
    provider: Callable[[LedgerEntry], BatchProvider],
    poll: PollPolicy,
    say: Callable[[str], None],
    sleep: Callable[[float], None],
) -> None:
    """Poll every unfinished batch of `names` with backoff until each is done and downloaded."""
    started = time.monotonic()
    delay = poll.initial_s
    while True:
        waiting = []
        for name in names:
            entry = ledger.entry(name)
            if entry.downloaded:
                continue
            if not entry.terminal:
                job = provider(entry).retrieve(entry.batch_id or "")
                entry = ledger.update(
                    name,
                    status=job.status,
                    request_counts=dict(job.request_counts),
                    output_file_id=job.output_file_id,
                    error_file_id=job.error_file_id,
                    errors=list(job.errors),
                )
                say(_progress_line(entry))
            if entry.status == "failed":
                raise BatchFailed(
                    f"batch {entry.batch_id} ({entry.name}: {len(entry.custom_ids)} requests of "
                    f"{entry.model} at {entry.base_url}) failed: "
                    f"{'; '.join(entry.errors) or 'the provider gave no reason'}. None of its "
                    "requests ran; the next run submits them again.",
                    attempts=1,
                    reason="; ".join(entry.errors),
                )
            if entry.terminal:
                _download(ledger, entry, provider(entry))
            else:
                waiting.append(entry)
        if not waiting:
            return
        if poll.max_wait_s is not None and time.monotonic() - started >= poll.max_wait_s:
            ids = ", ".join(f"{e.batch_id} ({e.status})" for e in waiting)
            raise BatchStillRunning(
                f"batches still running after {poll.max_wait_s:g}s: {ids}; they stay recorded "
                f"in {ledger.path} and are polled again by a resumed run"
            )
        sleep(delay)
        delay = min(max(delay, 1e-3) * poll.factor, poll.max_s)


def _progress_line(entry: LedgerEntry) -> str:
    counts = entry.request_counts
    total = counts.get("total") or len(entry.custom_ids)
    return (
        f"batch {entry.batch_id} ({entry.model}, {entry.name}): {entry.status}, "
        f"{counts.get('completed', 0)}/{total} completed, {counts.get('failed', 0)} failed"
    )


def _download(ledger: BatchLedger, entry: LedgerEntry, provider: BatchProvider) -> None:
    """Save the output and error files of a finished batch next to its request file."""
    for kind, file_id in (("output", entry.output_file_id), ("errors", entry.error_file_id)):
        path = ledger.path_of(entry.name, kind)
        _write_atomic(path, provider.content(file_id) if file_id else b"")
    ledger.update(entry.name, downloaded=True)


def _saved_results(ledger: BatchLedger, entry: LedgerEntry) -> Iterable[BatchResult]:
    """Results of a downloaded entry, from its saved output and error files."""
    if not entry.downloaded:
        return []
    out: list[BatchResult] = []
    for kind in ("output", "errors"):
        path = ledger.path_of(entry.name, kind)
        if path.exists():
            out.extend(parse_output(path.read_bytes()))
    return out
