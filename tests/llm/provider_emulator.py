"""Provider-shaped chat-completions servers for the tests: real HTTP on 127.0.0.1 (port 0).

Each shape answers the way one kind of provider does, with that provider's extra fields, errors
and quirks (OpenAI strict structured outputs, vLLM without response_format, Ollama ignoring it,
llama.cpp timings, reasoning fields, `<think>` in content, OpenRouter extras, 402 and errors
inside an HTTP 200, o-series parameter rules with their real error texts, ...). A shape is a
function `(request_json, headers, server) -> Reply`; the server counts what it receives.
Error texts were taken from public provider documentation and issue reports.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NAME = re.compile(r"\b[A-Z]{3,4}-\d{1,2}[A-Z]{3}\d{2}-\d+-C\b")


@dataclass
class Reply:
    """One HTTP response."""

    status: int = 200
    body: Any = None  # dict -> JSON, str -> as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


Shape = Callable[[dict[str, Any], Mapping[str, str], "ProviderEmulator"], Reply]


# -- answers -------------------------------------------------------------------------------------


def candidates(request: Mapping[str, Any]) -> list[str]:
    """Candidate names: the schema enum when sent, else the names in the user message."""
    try:
        schema = request["response_format"]["json_schema"]["schema"]
        return list(schema["properties"]["instrument_name"]["anyOf"][0]["enum"])
    except (KeyError, IndexError, TypeError):
        pass
    text = " ".join(str(m.get("content", "")) for m in request.get("messages", []))
    return list(dict.fromkeys(NAME.findall(text)))


def sell_first(request: Mapping[str, Any], analysis: str = "IV 10 pts over RV; flat trend.") -> str:
    """The JSON answer selling the first candidate (with the analysis field first)."""
    names = candidates(request)
    return json.dumps(
        {
            "analysis": analysis,
            "action": "SELL_CALL" if names else "DO_NOTHING",
            "instrument_name": names[0] if names else None,
            "rationale": "rich premium",
        }
    )


def do_nothing_json() -> str:
    """The JSON answer doing nothing."""
    return json.dumps(
        {
            "analysis": "spread negative",
            "action": "DO_NOTHING",
            "instrument_name": None,
            "rationale": "no edge",
        }
    )


def openai_usage(prompt: int = 812, completion: int = 64, reasoning: int = 0) -> dict[str, Any]:
    """OpenAI's usage object with its detail blocks."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion(
    request: Mapping[str, Any],
    messages: list[dict[str, Any]],
    *,
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    choice_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A chat.completion body with one choice per message."""
    body: dict[str, Any] = {
        "id": "chatcmpl-emulated",
        "object": "chat.completion",
        "created": 1_733_100_000,
        "model": request.get("model", "?"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", **m},
                "finish_reason": finish_reason,
                **(choice_extra or {}),
            }
            for i, m in enumerate(messages)
        ],
    }
    if usage is not None:
        body["usage"] = usage
    body.update(extra or {})
    return body


def openai_error(
    status: int, message: str, type_: str, code: str | None, param: str | None = None
) -> Reply:
    """An error in OpenAI's envelope."""
    return Reply(
        status, {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


# -- shapes --------------------------------------------------------------------------------------


def openai_strict(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """OpenAI: strict json_schema honoured, `n` honoured, every extra field OpenAI sends."""
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema" and not fmt["json_schema"].get("strict"):
        return openai_error(400, "strict must be true", "invalid_request_error", None)
    n = int(request.get("n", 1))
    messages = [
        {"content": sell_first(request), "refusal": None, "annotations": []} for _ in range(n)
    ]
    return Reply(
        body=completion(
            request,
            messages,
            usage=openai_usage(),
            extra={"system_fingerprint": "fp_0ba0d124f1", "service_tier": "default"},
            choice_extra={"logprobs": None},
        )
    )


VLLM_SCHEMA_ERROR = (
    "1 validation error for ChatCompletionRequest\nresponse_format\n  guided decoding backend "
    "does not support this response_format type"
)


def vllm_no_response_format(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """vLLM without guided decoding: 400 on any response_format (vLLM's error envelope)."""
    if request.get("response_format") is not None:
        return Reply(
            400,
            {
                "object": "error",
                "message": VLLM_SCHEMA_ERROR,
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
        )
    usage = {
        "prompt_tokens": 700,
        "completion_tokens": 60,
        "total_tokens": 760,
        "prompt_tokens_details": None,
    }
    return Reply(
        body=completion(
            request,
            [{"content": sell_first(request), "reasoning_content": None, "tool_calls": []}],
            usage=usage,
            extra={"prompt_logprobs": None, "kv_transfer_params": None},
            choice_extra={"logprobs": None, "stop_reason": None},
        )
    )


def ollama(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """Ollama: ignores response_format and `n`; prose around a fenced JSON block."""
    text = f"Looking at the table, the first strike pays best.\n\n```json\n{sell_first(request)}\n```\nHope this helps!"
    return Reply(
        body=completion(
            request,
            [{"content": text}],
            usage={"prompt_tokens": 650, "completion_tokens": 90, "total_tokens": 740},
            extra={"system_fingerprint": "fp_ollama"},
        )
    )


def llama_cpp(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """llama.cpp server: grammar-constrained JSON plus its `timings` block."""
    return Reply(
        body=completion(
            request,
            [{"content": sell_first(request)}],
            usage={"prompt_tokens": 640, "completion_tokens": 70, "total_tokens": 710},
            extra={
                "system_fingerprint": "b4600-abc",
                "timings": {
                    "prompt_n": 640,
                    "prompt_ms": 210.5,
                    "predicted_n": 70,
                    "predicted_ms": 1400.2,
                    "predicted_per_second": 50.0,
                },
            },
        )
    )


DRAFT = json.dumps({"action": "DO_NOTHING", "instrument_name": None, "rationale": "draft"})


def reasoning_content(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """DeepSeek-R1 / vLLM reasoning parser: reasoning in `reasoning_content`, answer in content."""
    thought = f"Let me think. A first draft: {DRAFT}. No: the spread is rich, sell."
    return Reply(
        body=completion(
            request,
            [{"content": sell_first(request), "reasoning_content": thought}],
            usage=openai_usage(800, 400, 300),
        )
    )


def openrouter_reasoning(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """OpenRouter: reasoning in `message.reasoning`, plus its provider/native_finish_reason."""
    return Reply(
        body=completion(
            request,
            [
                {
                    "content": sell_first(request),
                    "reasoning": "Spread +10 vol points; sell.",
                    "refusal": None,
                }
            ],
            usage={**openai_usage(), "cost": 0.00012, "is_byok": False},
            extra={"provider": "OpenAI"},
            choice_extra={"native_finish_reason": "stop", "logprobs": None},
        )
    )


def think_in_content(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """R1/Qwen3 served without a reasoning parser: `<think>` with a different draft in content."""
    names = candidates(request)
    draft = json.dumps({"action": "SELL_CALL", "instrument_name": names[0], "rationale": "draft"})
    text = f"<think>\nMaybe {draft}? But the trend is strongly up, so stay out.\n</think>\n\n{do_nothing_json()}"
    return Reply(body=completion(request, [{"content": text}], usage=openai_usage(700, 300)))


def reasoning_exhausted(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """A reasoning model that spent the whole budget thinking: content null, finish length."""
    budget = int(request.get("max_completion_tokens") or request.get("max_tokens") or 400)
    return Reply(
        body=completion(
            request,
            [{"content": None, "refusal": None, "annotations": []}],
            finish_reason="length",
            usage=openai_usage(800, budget, budget),
        )
    )


def openrouter(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """OpenRouter extras: provider name, native_finish_reason, usage cost."""
    return Reply(
        body=completion(
            request,
            [{"content": sell_first(request), "refusal": None, "reasoning": None}],
            usage={**openai_usage(), "cost": 0.0001},
            extra={"provider": "Together"},
            choice_extra={"native_finish_reason": "stop", "logprobs": None},
        )
    )


def openrouter_402(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """OpenRouter out of credits."""
    return Reply(
        402,
        {
            "error": {
                "code": 402,
                "message": "Insufficient credits. Add more using https://openrouter.ai/credits",
            }
        },
    )


def openrouter_error_in_200(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """OpenRouter: the upstream failed after the request was accepted; HTTP 200, error choice."""
    return Reply(
        body=completion(
            request,
            [{"content": ""}],
            finish_reason="error",
            extra={"provider": "Lambda"},
            choice_extra={
                "native_finish_reason": "error",
                "error": {"code": 502, "message": "Upstream error from Lambda: overloaded"},
            },
        )
    )


def error_body_in_200(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """A proxy that answers 200 with only an error object."""
    return Reply(body={"error": {"code": 503, "message": "no provider available"}})


def retry_after_once(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """429 with Retry-After: 1 on the first request, then OpenAI answers."""
    if srv.request_count == 1:
        return Reply(
            429,
            {
                "error": {
                    "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            headers={"Retry-After": "1"},
        )
    return openai_strict(request, headers, srv)


def always_429(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """A rate limit that never clears."""
    return Reply(
        429,
        {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
        headers={"Retry-After": "0"},
    )


def auth_echo(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """401 echoing the key it received in the message."""
    key = headers.get("authorization", "").removeprefix("Bearer ")
    return openai_error(
        401,
        f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    )


def model_not_found(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """404 for an unknown model."""
    return openai_error(
        404,
        f"The model `{request.get('model')}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


MAX_TOKENS_ERROR = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
TEMPERATURE_ERROR = "Unsupported value: 'temperature' does not support {value} with this model. Only the default (1) value is supported."


def o_series(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """OpenAI o-series / gpt-5 parameter rules, with their real error texts."""
    if "max_tokens" in request:
        return openai_error(
            400, MAX_TOKENS_ERROR, "invalid_request_error", "unsupported_parameter", "max_tokens"
        )
    temperature = request.get("temperature")
    if temperature is not None and temperature != 1:
        return openai_error(
            400,
            TEMPERATURE_ERROR.format(value=temperature),
            "invalid_request_error",
            "unsupported_value",
            "temperature",
        )
    if "top_p" in request:
        return openai_error(
            400,
            "Unsupported parameter: 'top_p' is not supported with this model.",
            "invalid_request_error",
            "unsupported_parameter",
            "top_p",
        )
    return Reply(
        body=completion(
            request,
            [{"content": sell_first(request), "refusal": None, "annotations": []}],
            usage=openai_usage(800, 900, 832),
            extra={"system_fingerprint": None, "service_tier": "default"},
        )
    )


def context_length(
    request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator
) -> Reply:
    """OpenAI's context-length 400 (names neither response_format nor a schema)."""
    return openai_error(
        400,
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.",
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )


def refusal(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """A structured-output refusal: content null, `refusal` text."""
    return Reply(
        body=completion(
            request,
            [{"content": None, "refusal": "I'm sorry, I can't help with trading decisions."}],
            usage=openai_usage(800, 12),
        )
    )


def truncated(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """The answer cut at the token limit mid-JSON."""
    return Reply(
        body=completion(
            request,
            [{"content": '{"analysis": "The IV - RV spread is 10 points and the trend is'}],
            finish_reason="length",
            usage=openai_usage(800, 400),
        )
    )


def no_usage(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """A valid answer without any `usage` object."""
    return Reply(body=completion(request, [{"content": sell_first(request)}]))


def html_200(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """A captive portal / wrong base_url: an HTML page with status 200."""
    return Reply(
        body="<!doctype html><html><body><h1>Welcome</h1></body></html>", content_type="text/html"
    )


def always_500(request: dict[str, Any], headers: Mapping[str, str], srv: ProviderEmulator) -> Reply:
    """A server that fails every request."""
    return openai_error(
        500, "The server had an error while processing your request.", "server_error", None
    )


SHAPES: dict[str, Shape] = {
    f.__name__: f
    for f in (
        openai_strict,
        vllm_no_response_format,
        ollama,
        llama_cpp,
        reasoning_content,
        openrouter_reasoning,
        think_in_content,
        reasoning_exhausted,
        openrouter,
        openrouter_402,
        openrouter_error_in_200,
        error_body_in_200,
        retry_after_once,
        always_429,
        auth_echo,
        model_not_found,
        o_series,
        context_length,
        refusal,
        truncated,
        no_usage,
        html_200,
        always_500,
    )
}


class ProviderEmulator:
    """A chat-completions server answering in one provider's shape; counts what it receives."""

    def __init__(self, shape: str | Shape = "openai_strict") -> None:
        self.shape: Shape = SHAPES[shape] if isinstance(shape, str) else shape
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.query: list[str] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        """Base URL to give the SDK."""
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        """Requests received so far."""
        with self._lock:
            return len(self.requests)

    def start(self) -> ProviderEmulator:
        """Serve on a background thread."""
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                path, _, query = self.path.partition("?")
                headers = {k.lower(): v for k, v in self.headers.items()}  # names lowercased
                with emulator._lock:
                    emulator.requests.append(request)
                    emulator.headers.append(headers)
                    emulator.query.append(query)
                if path.rstrip("/") != "/v1/chat/completions":
                    reply = openai_error(
                        404, f"Invalid URL (POST {path})", "invalid_request_error", None
                    )
                else:
                    reply = emulator.shape(request, headers, emulator)
                body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                data = body.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 512
            allow_reuse_address = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (the port is then closed: 'connection refused')."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ProviderEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
