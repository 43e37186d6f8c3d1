"""A scripted fake LLM server on 127.0.0.1 that speaks Anthropic's Messages API
(POST /v1/messages) and OpenAI's chat completions (POST /v1/chat/completions).

For tests and benchmarks: the real SDKs talk HTTP to it through `base_url`. Answers come
from a queue of scripted items (replies, HTTP errors, malformed bodies, slow answers),
then from an optional responder function; every request is recorded.

    with FakeLLMServer() as server:
        server.push(Fail(429), Reply('{"changes": {"DEPTH": 9}, "hypothesis": "deeper"}'))
        client = anthropic.Anthropic(api_key="test", base_url=server.anthropic_url)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int = 120
    output_tokens: int = 40
    delay: float = 0.0  # seconds before answering (a slow response)
    # When the client streams: seconds between chunks of about four characters each, so a
    # slow model (a small one under llama.cpp on a CPU) can be played back at its pace.
    chunk_delay: float = 0.0
    # Prompt-cache usage: Anthropic reports these beside input_tokens (which excludes
    # them); OpenAI reports cached_tokens inside prompt_tokens.
    cache_read: int = 0
    cache_write: int = 0


@dataclass(frozen=True)
class Fail:
    status: int  # 429, 500, 529, 401, ...
    message: str = "scripted failure"
    retry_after: float | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Malformed:
    body: bytes = b'{"id": "broken", "content": ['  # a 200 whose JSON does not parse
    delay: float = 0.0


Script = Reply | Fail | Malformed


@dataclass(frozen=True)
class RecordedRequest:
    api: str  # "anthropic" or "openai"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    time: float

    @property
    def system(self) -> str:
        if self.api == "anthropic":
            system = self.body.get("system", "")
            if isinstance(system, list):  # text blocks (marked for the prompt cache)
                return "".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
            return system if isinstance(system, str) else json.dumps(system)
        return "\n".join(m["content"] for m in self.body.get("messages", [])
                         if m.get("role") == "system")

    @property
    def messages(self) -> list[dict[str, str]]:
        return [m for m in self.body.get("messages", []) if m.get("role") != "system"]

    @property
    def text(self) -> str:
        """System prompt and every message, joined: what the model was shown."""
        return "\n".join([self.system, *(str(m.get("content", "")) for m in self.messages)])


Responder = Callable[[RecordedRequest], Script]
_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                     403: "permission_error", 429: "rate_limit_error", 500: "api_error",
                     529: "overloaded_error"}


class FakeLLMServer:
    """`response_formats` plays a server with limited structured output: a request whose
    `response_format` is not among them ("json_schema", "json_object+schema",
    "json_object"; () for none) is refused, naming the field, with `refusal_status`: 400 as
    older OpenAI-compatible servers answer, or 500 with a pydantic validation body as
    llama.cpp's server (llama-cpp-python 0.3) does. `stream_usage=False` plays a server
    that ignores stream_options: no usage chunk."""

    def __init__(self, responder: Responder | None = None, latency: float = 0.0,
                 response_formats: tuple[str, ...] | None = None, refusal_status: int = 400,
                 stream_usage: bool = True, interrupts: bool = False) -> None:
        self.responder = responder
        self.latency = latency  # added to every answer
        self.response_formats = response_formats
        self.refusal_status = refusal_status
        self.stream_usage = stream_usage
        # llama-cpp-python's server (interrupt_requests, on by default): a new request
        # ends the stream in progress at once, without a finish reason or [DONE].
        self.interrupts = interrupts
        self.arrivals = 0
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Script] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="fake-llm")

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *items: Script) -> None:
        with self._lock:
            self._queue.extend(items)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _next(self, request: RecordedRequest) -> Script:
        with self._lock:
            self.requests.append(request)
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(request)
        return Fail(500, "the fake server has no scripted response left")


def _handler(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/").endswith("/v1/messages"):
                api = "anthropic"
            elif self.path.rstrip("/").endswith("/chat/completions"):
                api = "openai"
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "request body is not JSON"}})
                return
            request = RecordedRequest(api, self.path, {k.lower(): v for k, v in
                                                       self.headers.items()}, body, time.time())
            with server._lock:
                server.arrivals += 1
                arrival = server.arrivals
            refusal = _refusal(server, body)
            if refusal is not None:
                with server._lock:
                    server.requests.append(request)
                self._send(server.refusal_status, refusal)
                return
            item = server._next(request)
            time.sleep(server.latency + item.delay)
            model = str(body.get("model", "fake-model"))
            if isinstance(item, Malformed):
                self._send_raw(200, item.body)
            elif isinstance(item, Fail):
                self._send(item.status, _error(api, item), item.retry_after)
            elif body.get("stream"):
                events = _events(api, item, model)
                if not server.stream_usage:
                    events = [e for e in events if "usage" not in e or api == "anthropic"]
                self._stream(events, item.chunk_delay, arrival)
            else:
                self._send(200, _reply(api, item, model))

        def _stream(self, events: list[dict[str, Any]], chunk_delay: float,
                    arrival: int) -> None:
            """Server-sent events, one write per event, then the connection closes; with
            `interrupts`, it stops where a later request arrived."""
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for i, event in enumerate(events):
                    if i and chunk_delay:
                        time.sleep(chunk_delay)
                    if server.interrupts and server.arrivals != arrival:
                        return  # cut short: no finish reason, no [DONE]
                    name = event.pop("__event__", None)
                    head = f"event: {name}\n" if name else ""
                    data = "[DONE]" if event.get("__done__") else json.dumps(event)
                    self.wfile.write(f"{head}data: {data}\n\n".encode())
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up

        def _send(self, status: int, payload: dict[str, Any],
                  retry_after: float | None = None) -> None:
            self._send_raw(status, json.dumps(payload).encode(), retry_after)

        def _send_raw(self, status: int, data: bytes, retry_after: float | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if retry_after is not None:
                    self.send_header("retry-after", f"{retry_after:g}")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

    return Handler


def _format_of(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    kind = str(fmt.get("type"))
    return "json_object+schema" if kind == "json_object" and "schema" in fmt else kind


def _refusal(server: FakeLLMServer, body: dict[str, Any]) -> dict[str, Any] | None:
    """The error body for a response_format the server does not take, else None."""
    fmt = _format_of(body)
    if server.response_formats is None or fmt is None or fmt in server.response_formats:
        return None
    if server.refusal_status >= 500:  # llama-cpp-python's server: pydantic, as a 500
        return {"error": {"message": (
            "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': "
            "\"Input should be 'text' or 'json_object'\", 'input': '" + str(fmt) + "'}]"),
            "type": "internal_server_error", "param": None, "code": None}}
    return {"error": {"message": "Unrecognized request argument supplied: response_format",
                      "type": "invalid_request_error", "code": server.refusal_status}}


def _reply(api: str, item: Reply, model: str) -> dict[str, Any]:
    if api == "anthropic":
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": item.text}], "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": item.input_tokens,
                          "output_tokens": item.output_tokens}}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": item.text}}],
            "usage": {"prompt_tokens": item.input_tokens,
                      "completion_tokens": item.output_tokens,
                      "total_tokens": item.input_tokens + item.output_tokens}}


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _events(api: str, item: Reply, model: str) -> list[dict[str, Any]]:
    """The streamed form of `_reply`, as each API's SDK expects it."""
    if api == "anthropic":
        events: list[dict[str, Any]] = [
            {"__event__": "message_start", "type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": item.input_tokens, "output_tokens": 1,
                          "cache_read_input_tokens": item.cache_read,
                          "cache_creation_input_tokens": item.cache_write}}},
            {"__event__": "content_block_start", "type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}]
        events += [{"__event__": "content_block_delta", "type": "content_block_delta",
                    "index": 0, "delta": {"type": "text_delta", "text": piece}}
                   for piece in _pieces(item.text)]
        events += [{"__event__": "content_block_stop", "type": "content_block_stop",
                    "index": 0},
                   {"__event__": "message_delta", "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": item.output_tokens}},
                   {"__event__": "message_stop", "type": "message_stop"}]
        return events
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                          "content": piece},
                                    "finish_reason": None}]} for piece in _pieces(item.text)]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {
        "prompt_tokens": item.input_tokens, "completion_tokens": item.output_tokens,
        "total_tokens": item.input_tokens + item.output_tokens,
        "prompt_tokens_details": {"cached_tokens": item.cache_read}}})
    chunks.append({"__done__": True})
    return chunks


def _error(api: str, item: Fail) -> dict[str, Any]:
    if api == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(item.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": item.message}}
    return {"error": {"message": item.message, "type": "server_error", "code": item.status}}
