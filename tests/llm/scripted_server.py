"""A real HTTP server speaking POST /v1/chat/completions, answering from a script.

Each request takes the next behaviour from a FIFO queue (or the default responder when the
queue is empty): a JSON answer, an HTTP status with headers, a delay, garbage text, a raw
non-JSON body. The server counts requests and the maximum number in flight at once, and can
pretend not to support `response_format` JSON schema (400, like older vLLM / llama.cpp).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    """What the server does with one request."""

    status: int = 200
    content: str | None = None  # assistant message content (status 200)
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # raw body instead of a chat completion / error JSON
    content_type: str = "application/json"
    delay_s: float = 0.0
    usage: tuple[int, int, int] = (120, 30, 0)  # prompt, completion, cached tokens
    message: str = ""  # error message for non-200


def answer(
    content: str | dict[str, Any],
    *,
    delay_s: float = 0.0,
    usage: tuple[int, int, int] = (120, 30, 0),
) -> Behaviour:
    """200 with `content` (dicts are JSON-encoded) as the assistant message."""
    text = content if isinstance(content, str) else json.dumps(content)
    return Behaviour(content=text, delay_s=delay_s, usage=usage)


def sell(name: str, rationale: str = "rich premium") -> Behaviour:
    """200 answering SELL_CALL of `name`."""
    return answer({"action": "SELL_CALL", "instrument_name": name, "rationale": rationale})


def do_nothing(rationale: str = "no edge", delay_s: float = 0.0) -> Behaviour:
    """200 answering DO_NOTHING."""
    return answer(
        {"action": "DO_NOTHING", "instrument_name": None, "rationale": rationale}, delay_s=delay_s
    )


def status(
    code: int, headers: dict[str, str] | None = None, message: str = "", **kw: Any
) -> Behaviour:
    """An HTTP error with an OpenAI-style error body."""
    return Behaviour(
        status=code, headers=dict(headers or {}), message=message or f"error {code}", **kw
    )


def garbage(text: str = "Honestly I would maybe sell something, hard to say.") -> Behaviour:
    """200 whose assistant content is not JSON at all."""
    return Behaviour(content=text)


def raw_body(body: str, content_type: str = "text/plain", code: int = 200) -> Behaviour:
    """A response with exactly `body` (by default a 200 that is not a chat completion)."""
    return Behaviour(status=code, body=body, content_type=content_type)


def first_enum_or_nothing(request: dict[str, Any]) -> Behaviour:
    """Default responder: sell the first name of the schema enum, else DO_NOTHING."""
    try:
        schema = request["response_format"]["json_schema"]["schema"]
        names = schema["properties"]["instrument_name"]["anyOf"][0]["enum"]
    except (KeyError, IndexError, TypeError):
        return do_nothing()
    return sell(names[0])


class ScriptedServer:
    """Chat-completions server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(
        self,
        *,
        default: Callable[[dict[str, Any]], Behaviour] | None = None,
        supports_json_schema: bool = True,
        latency_s: float = 0.0,
    ) -> None:
        self.default = default or (lambda request: do_nothing())
        self.supports_json_schema = supports_json_schema
        self.latency_s = latency_s
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.replies: list[Behaviour] = []  # what was answered, in order of arrival
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- script ----------------------------------------------------------------------------

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Append behaviours to the script (served first-in first-out)."""
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def request_count(self) -> int:
        """Requests received so far."""
        with self._lock:
            return len(self.requests)

    def reset_counts(self) -> None:
        """Forget received requests and the in-flight maximum."""
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
            self.replies.clear()
            self.max_in_flight = self.in_flight

    @property
    def url(self) -> str:
        """Base URL to give the SDK."""
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ScriptedServer:
        """Start serving on a background thread (reusing the port after a `stop`)."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body waits for the
            # client's delayed ACK (~40 ms) on a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(
                        404, {"error": {"message": "not found", "type": "invalid_request_error"}}
                    )
                    return
                request = json.loads(raw or b"{}")
                behaviour = server._accept(request, self.headers.get("Authorization", ""))
                try:
                    time.sleep(behaviour.delay_s + server.latency_s)
                    self._respond(request, behaviour)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _respond(self, request: dict[str, Any], b: Behaviour) -> None:
                if b.body is not None:
                    self._send(b.status, b.body, b.headers, b.content_type)
                elif b.status != 200:
                    error = {"message": b.message, "type": "server_error", "code": None}
                    if b.status == 400:
                        error["type"] = "invalid_request_error"
                    self._send(b.status, {"error": error}, b.headers)
                else:
                    prompt, completion, cached = b.usage
                    self._send(
                        200,
                        {
                            "id": f"chatcmpl-{len(server.requests)}",
                            "object": "chat.completion",
                            "created": 1_700_000_000,
                            "model": request.get("model", "?"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": b.content},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": prompt,
                                "completion_tokens": completion,
                                "total_tokens": prompt + completion,
                                "prompt_tokens_details": {"cached_tokens": cached},
                            },
                        },
                        b.headers,
                    )

            def _send(
                self,
                code: int,
                payload: Any,
                headers: dict[str, str] | None = None,
                content_type: str = "application/json",
            ) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 2048  # hundreds of concurrent connects must not be refused
            allow_reuse_address = True

        self._httpd = Server(("127.0.0.1", self.port or 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _accept(self, request: dict[str, Any], authorization: str) -> Behaviour:
        with self._lock:
            self.requests.append(request)
            self.authorizations.append(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fmt = request.get("response_format") or {}
            if not self.supports_json_schema and fmt.get("type") == "json_schema":
                behaviour = status(
                    400, message="response_format type 'json_schema' is not supported"
                )
            elif self._queue:
                behaviour = self._queue.popleft()
            else:
                behaviour = None
        if behaviour is None:
            behaviour = self.default(request)
        with self._lock:
            self.replies.append(behaviour)
        return behaviour


def main(argv: list[str] | None = None) -> None:
    """Serve until killed, printing the base URL first (for benchmarks in another process)."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    ap.add_argument(
        "--answer", choices=["first_candidate", "do_nothing"], default="first_candidate"
    )
    args = ap.parse_args(argv)
    default = (
        first_enum_or_nothing if args.answer == "first_candidate" else (lambda r: do_nothing())
    )
    server = ScriptedServer(default=default, latency_s=args.latency).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
