"""A real HTTP server on 127.0.0.1 speaking OpenAI's Files + Batch API and live chat completions.

Endpoints (all under `/v1`): `POST /files` (multipart, purpose `batch`), `GET /files/{id}/content`,
`POST /batches`, `GET /batches/{id}`, `GET /batches` (newest first, `limit`/`after`),
`POST /batches/{id}/cancel`, and `POST /chat/completions`. Batch lines and live calls are
answered by the same script (`answer`: request body -> chat-completion dict or `ChatError`), so a
live run and a batch run can be compared.

A batch moves one state per `polls_per_state` retrieves: validating -> in_progress ->
finalizing -> completed. Scripted outcomes (`script`) make the next created batches `failed`
(validation errors), `expired` (partial output file, `batch_expired` lines in the error file) or
`cancelled`; `reject_creates` answers the next creates with 429 + Retry-After; `hold` freezes every
batch where it is; `create_delay_s` registers a batch and then delays the answer (a client killed
meanwhile has created a batch it never recorded). Input files are validated like OpenAI does
(JSONL, unique custom_id, method POST, the batch's endpoint, one model per file): a bad file
makes the batch `failed`. Counters: `calls` per endpoint, `submitted` per custom_id (every batch
created), `chat_calls` (live chat completions).
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True)
class ChatError:
    """A scripted error answer: HTTP `status` with an OpenAI-style error body."""

    status: int
    message: str
    code: str | None = None
    type: str = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        """The error JSON body."""
        return {
            "error": {"message": self.message, "type": self.type, "param": None, "code": self.code}
        }


Answer = Callable[[dict[str, Any]], "dict[str, Any] | ChatError"]


def completion(
    content: str | dict[str, Any] | None,
    *,
    finish_reason: str = "stop",
    usage: tuple[int, int, int] = (120, 30, 0),
    reasoning: str | None = None,
    reasoning_tokens: int = 0,
    refusal: str | None = None,
) -> dict[str, Any]:
    """A chat-completion body with one choice (dict content is JSON-encoded)."""
    text = json.dumps(content) if isinstance(content, dict) else content
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if refusal is not None:
        message["refusal"] = refusal
    prompt, completion_tokens, cached = usage
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        },
    }


def do_nothing(body: dict[str, Any]) -> dict[str, Any]:
    """Default script: DO_NOTHING with a rationale naming the last message's length."""
    last = body.get("messages", [{}])[-1].get("content", "")
    return completion(
        {"action": "DO_NOTHING", "instrument_name": None, "rationale": f"len {len(last)}"}
    )


@dataclass(frozen=True)
class Outcome:
    """How a created batch ends: `completed`, `failed`, `expired` or `cancelled`.

    `answered`: lines answered before an expiry/cancel (None: half, rounded down);
    `errors`: the validation errors of a `failed` batch.
    """

    kind: str = "completed"
    answered: int | None = None
    errors: tuple[str, ...] = ("Enqueued token limit reached for gpt-4o-mini",)


_FLOW = {
    "completed": ("validating", "in_progress", "finalizing", "completed"),
    "failed": ("validating", "failed"),
    "expired": ("validating", "in_progress", "expired"),
    "cancelled": ("validating", "in_progress", "cancelling", "cancelled"),
}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class _Batch:
    id: str
    seq: int
    input_file_id: str
    endpoint: str
    metadata: dict[str, str]
    lines: list[dict[str, Any]]
    outcome: Outcome
    created_at: int
    step: int = 0
    polls: int = 0
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    failed: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86400,
            "request_counts": {
                "total": len(self.lines),
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": dict(self.metadata),
        }


class BatchServer:
    """OpenAI-compatible Files/Batch/chat server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, answer: Answer | None = None, *, polls_per_state: int = 1) -> None:
        self.answer: Answer = answer or do_nothing
        self.polls_per_state = polls_per_state
        self.hold = False
        self.create_delay_s = 0.0
        self.calls: Counter[str] = Counter()
        self.submitted: Counter[str] = Counter()
        self.authorizations: list[str] = []
        self.chat_bodies: list[dict[str, Any]] = []  # live chat request bodies, in order
        self.uploads: list[dict[str, Any]] = []  # {"id", "filename", "purpose", "bytes"}
        self._outcomes: list[Outcome] = []
        self._rejects: list[str] = []  # Retry-After values of the next rejected creates
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, _Batch] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- script ------------------------------------------------------------------------------

    def script(self, *outcomes: Outcome | str) -> None:
        """Outcomes of the next created batches, in order (then `completed`)."""
        with self._lock:
            self._outcomes.extend(o if isinstance(o, Outcome) else Outcome(o) for o in outcomes)

    def reject_creates(self, n: int = 1, retry_after: str = "0") -> None:
        """Answer the next `n` `POST /v1/batches` with 429 and this Retry-After."""
        with self._lock:
            self._rejects.extend([retry_after] * n)

    @property
    def chat_calls(self) -> int:
        """Live `POST /v1/chat/completions` calls received."""
        return self.calls["POST /v1/chat/completions"]

    @property
    def created(self) -> int:
        """Batches created."""
        return len(self._batches)

    def batches(self) -> list[dict[str, Any]]:
        """Every batch as the API shows it, oldest first."""
        with self._lock:
            return [b.view() for b in sorted(self._batches.values(), key=lambda b: b.seq)]

    def file_text(self, file_id: str) -> str:
        """Content of a stored file."""
        return self._files[file_id].decode()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base_url clients use (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> BatchServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    # -- behaviour ---------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq:06d}"

    def _answer_line(self, index: int, line: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(ok, output line) for one request line."""
        result = self.answer(line["body"])
        request_id = f"req_{hashlib.sha256(line['custom_id'].encode()).hexdigest()[:12]}"
        if isinstance(result, ChatError):
            response = {"status_code": result.status, "request_id": request_id}
            response["body"] = result.body()
            ok = False
        else:
            body = _with_identity(result, line["body"])
            response = {"status_code": 200, "request_id": request_id, "body": body}
            ok = True
        out = {
            "id": f"batch_req_{index:06d}",
            "custom_id": line["custom_id"],
            "response": response,
            "error": None,
        }
        return ok, out

    def _finish(self, batch: _Batch, answered: int, missing_code: str | None) -> None:
        """Answer the first `answered` lines; the rest get `missing_code` in the error file."""
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, line in enumerate(batch.lines[:answered]):
            ok, out = self._answer_line(index, line)
            (outputs if ok else errors).append(out)
        batch.completed, batch.failed = len(outputs), len(errors)
        if missing_code is not None:
            message = {
                "batch_expired": "This request could not be executed before the completion "
                "window expired.",
                "batch_cancelled": "This request was cancelled before it could be executed.",
            }[missing_code]
            for index, line in enumerate(batch.lines[answered:], start=answered):
                errors.append(
                    {
                        "id": f"batch_req_{index:06d}",
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {"code": missing_code, "message": message},
                    }
                )
        if outputs:
            batch.output_file_id = self._store(outputs)
        if errors:
            batch.error_file_id = self._store(errors)

    def _store(self, lines: list[dict[str, Any]]) -> str:
        file_id = self._new_id("file-")
        self._files[file_id] = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        return file_id

    def _advance(self, batch: _Batch) -> None:
        if self.hold or batch.status in TERMINAL:
            return
        batch.polls += 1
        if batch.polls < self.polls_per_state:
            return
        batch.polls = 0
        flow = _FLOW[batch.outcome.kind]
        batch.step = min(batch.step + 1, len(flow) - 1)
        batch.status = flow[batch.step]
        half = len(batch.lines) // 2
        answered = batch.outcome.answered if batch.outcome.answered is not None else half
        if batch.status == "in_progress":
            batch.completed = min(answered, half) if batch.outcome.kind != "completed" else half
        elif batch.status == "finalizing":
            batch.completed = len(batch.lines)
        elif batch.status == "completed":
            self._finish(batch, len(batch.lines), None)
        elif batch.status == "expired":
            self._finish(batch, answered, "batch_expired")
        elif batch.status == "cancelled":
            self._finish(batch, answered, "batch_cancelled")
        elif batch.status == "failed":
            batch.errors = [
                {"code": "failed", "message": text, "param": None, "line": None}
                for text in batch.outcome.errors
            ]

    def _validate(self, data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[str]]:
        lines: list[dict[str, Any]] = []
        problems: list[str] = []
        ids: set[str] = set()
        models: set[str] = set()
        for number, raw in enumerate(data.splitlines(), start=1):
            try:
                line = json.loads(raw)
            except ValueError:
                problems.append(f"line {number}: not valid JSON")
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or custom_id in ids:
                problems.append(f"line {number}: custom_id missing or duplicated")
            if line.get("method") != "POST" or line.get("url") != endpoint:
                problems.append(f"line {number}: method must be POST and url {endpoint}")
            models.add(str(line.get("body", {}).get("model")))
            ids.add(str(custom_id))
            lines.append(line)
        if len(models) > 1:
            problems.append(f"the file mixes models: {sorted(models)}")
        if not lines:
            problems.append("the input file is empty")
        return lines, problems

    # -- endpoints -------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, headers: Any):
        """(status, headers, JSON-able or bytes) for one request."""
        with self._lock:
            self.authorizations.append(headers.get("Authorization", ""))
            route = _route(method, path)
            self.calls[route] += 1
            if route == "POST /v1/chat/completions":
                return self._chat(json.loads(body))
            if route == "POST /v1/files":
                return self._upload(body, headers.get("Content-Type", ""))
            if route == "GET /v1/files/{id}/content":
                file_id = path.split("/")[3]
                if file_id not in self._files:
                    return 404, {}, ChatError(404, f"No such File object: {file_id}").body()
                return 200, {}, self._files[file_id]
            if route == "POST /v1/batches":
                return self._create(json.loads(body))
            if route == "GET /v1/batches":
                return self._list(query)
            if route in ("GET /v1/batches/{id}", "POST /v1/batches/{id}/cancel"):
                batch = self._batches.get(path.split("/")[3])
                if batch is None:
                    return 404, {}, ChatError(404, "No such batch").body()
                if route.endswith("cancel"):
                    return self._cancel(batch)
                self._advance(batch)
                return 200, {}, batch.view()
            return 404, {}, ChatError(404, f"no route {method} {path}").body()

    def _chat(self, body: dict[str, Any]):
        self.chat_bodies.append(body)
        result = self.answer(body)
        if isinstance(result, ChatError):
            return result.status, {}, result.body()
        return 200, {}, _with_identity(result, body)

    def _upload(self, body: bytes, content_type: str):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields or purpose != "batch":
            return 400, {}, ChatError(400, "a file and purpose=batch are required").body()
        filename, data = fields["file"]
        file_id = self._new_id("file-")
        self._files[file_id] = data
        record = {"id": file_id, "filename": filename, "purpose": purpose, "bytes": len(data)}
        self.uploads.append(record)
        view = {**record, "object": "file", "created_at": int(time.time()), "status": "processed"}
        return 200, {}, view

    def _create(self, body: dict[str, Any]):
        if self._rejects:
            retry_after = self._rejects.pop(0)
            error = ChatError(429, "Too many batch creations", "rate_limit_exceeded", "requests")
            return 429, {"Retry-After": retry_after}, error.body()
        file_id = body.get("input_file_id")
        if file_id not in self._files:
            return 400, {}, ChatError(400, f"input_file_id {file_id} not found").body()
        if body.get("completion_window") != "24h":
            return 400, {}, ChatError(400, "completion_window must be 24h").body()
        endpoint = body.get("endpoint", "")
        lines, problems = self._validate(self._files[file_id], endpoint)
        outcome = self._outcomes.pop(0) if self._outcomes else Outcome()
        if problems:
            outcome = Outcome("failed", errors=tuple(problems))
        batch = _Batch(
            id=self._new_id("batch_"),
            seq=self._seq,
            input_file_id=file_id,
            endpoint=endpoint,
            metadata=dict(body.get("metadata") or {}),
            lines=lines,
            outcome=outcome,
            created_at=int(time.time()),
        )
        self._batches[batch.id] = batch
        self.submitted.update(line["custom_id"] for line in lines if "custom_id" in line)
        view = batch.view()
        if self.create_delay_s:
            # The batch exists; its creator hears of it only later (or never, when killed).
            self._lock.release()
            try:
                time.sleep(self.create_delay_s)
            finally:
                self._lock.acquire()
        return 200, {}, view

    def _list(self, query: dict[str, str]):
        ordered = sorted(self._batches.values(), key=lambda b: b.seq, reverse=True)
        after = query.get("after")
        if after is not None:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        limit = int(query.get("limit", 20))
        page = ordered[:limit]
        return (
            200,
            {},
            {
                "object": "list",
                "data": [b.view() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(ordered) > limit,
            },
        )

    def _cancel(self, batch: _Batch):
        if batch.status not in TERMINAL:
            done = batch.completed
            batch.outcome = Outcome("cancelled", answered=done)
            batch.status, batch.step = "cancelling", _FLOW["cancelled"].index("cancelling")
        return 200, {}, batch.view()


def _with_identity(result: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """`result` with a deterministic id and the request's model, as a server would fill them."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return {"id": f"chatcmpl-{digest}", "model": request.get("model"), **result}


_ROUTES = (
    ("POST", re.compile(r"^/v1/chat/completions$"), "POST /v1/chat/completions"),
    ("POST", re.compile(r"^/v1/files$"), "POST /v1/files"),
    ("GET", re.compile(r"^/v1/files/[^/]+/content$"), "GET /v1/files/{id}/content"),
    ("POST", re.compile(r"^/v1/batches$"), "POST /v1/batches"),
    ("GET", re.compile(r"^/v1/batches$"), "GET /v1/batches"),
    ("GET", re.compile(r"^/v1/batches/[^/]+$"), "GET /v1/batches/{id}"),
    ("POST", re.compile(r"^/v1/batches/[^/]+/cancel$"), "POST /v1/batches/{id}/cancel"),
)


def _route(method: str, path: str) -> str:
    for verb, pattern, name in _ROUTES:
        if verb == method and pattern.match(path):
            return name
    return f"{method} {path}"


class _Handler(BaseHTTPRequestHandler):
    owner: BatchServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        code, headers, payload = self.owner.handle(method, parts.path, query, body, self.headers)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        content_type = "application/octet-stream" if isinstance(payload, bytes) else None
        self.send_header("Content-Type", content_type or "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        # The client may have been killed while waiting (the resume tests do that on purpose).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")
