"""A small OpenAI-compatible chat-completions server for tests: loopback only, scripted, every request recorded.

    with FakeOpenAI([Status(503), Answer("Hello.")]) as server:
        llm = OpenAICompatLLM(ServerConfig(server.url, "base"))

Each POST /v1/chat/completions takes the next script item:

    Answer     rendered as one chat.completion body, or as SSE chunks (chunked transfer encoding, text and
               tool-call arguments cut into pieces, usage last, then [DONE]) when the request says stream: true
    Status     an error status with its headers and body
    Stall      sleeps, then answers (a client with a shorter timeout has given up by then)
    Cut        streams the first chunks of an answer, then drops the connection mid-body
    a callable (request body) -> Answer

An exhausted script answers HTTP 400 "script exhausted", so the test fails at that request, once. GET /v1/models
lists `models`. The server runs in a daemon thread; leaving the `with` block (or `close()`) stops it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    content: str | None = None
    calls: tuple[tuple[str, str], ...] = ()  # (function name, arguments exactly as sent: a JSON string)
    usage: tuple[int, int] | None = (7, 3)
    finish_reason: str | None = None  # None: "tool_calls" with calls, else "stop"
    piece_chars: int = 4  # streamed text and arguments are cut into pieces this long


@dataclass(frozen=True)
class Status:
    code: int
    body: str = '{"error": {"message": "the server is busy"}}'
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Stall:
    seconds: float
    then: Answer


@dataclass(frozen=True)
class Cut:
    answer: Answer
    after_chunks: int


Item = Answer | Status | Stall | Cut | Callable[[dict[str, Any]], Answer]


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOpenAI:
    def __init__(self, script: Iterable[Item] = (), models: tuple[str, ...] = ("base",)) -> None:
        self.script: deque[Item] = deque(script)
        self.models = models
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    def next_item(self, seen: Seen) -> Item | None:
        with self._lock:
            self.requests.append(seen)
            return self.script.popleft() if self.script else None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completion(answer: Answer, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.calls:
        message["tool_calls"] = [{"id": f"call_srv_{n}", "type": "function",
                                  "function": {"name": name, "arguments": args}}
                                 for n, (name, args) in enumerate(answer.calls)]
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                            "choices": [{"index": 0, "message": message, "finish_reason": _reason(answer)}]}
    if answer.usage:
        body["usage"] = {"prompt_tokens": answer.usage[0], "completion_tokens": answer.usage[1]}
    return body


def chunks(answer: Answer, model: str, usage: bool) -> list[dict[str, Any]]:
    """The chat.completion.chunk objects of a streamed answer."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in _pieces(answer.content or "", answer.piece_chars)]
    for n, (name, args) in enumerate(answer.calls):
        out.append(chunk({"tool_calls": [{"index": n, "id": f"call_srv_{n}", "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": n, "function": {"arguments": piece}}]})
                for piece in _pieces(args, answer.piece_chars)]
    out.append(chunk({}, _reason(answer)))
    if usage and answer.usage:
        out.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [],
                    "usage": {"prompt_tokens": answer.usage[0], "completion_tokens": answer.usage[1]}})
    return out


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _reason(answer: Answer) -> str:
    return answer.finish_reason or ("tool_calls" if answer.calls else "stop")


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            fake.next_item(Seen(self.path, dict(self.headers), {}))
            self._send(200, json.dumps({"object": "list", "data": [{"id": m} for m in fake.models]}))

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            item = fake.next_item(Seen(self.path, dict(self.headers), body))
            try:
                self._answer(item, body)
            except OSError:  # the client gave up (a Stall test): nothing to answer
                self.close_connection = True

        def _answer(self, item: Item | None, body: dict[str, Any]) -> None:
            if item is None:
                self._send(400, '{"error": {"message": "fake server: script exhausted"}}')
            elif isinstance(item, Status):
                self._send(item.code, item.body, item.headers)
            elif isinstance(item, Stall):
                time.sleep(item.seconds)
                self._answer(item.then, body)
            elif isinstance(item, Cut):
                self._stream(item.answer, body, stop_after=item.after_chunks)
            elif isinstance(item, Answer) and body.get("stream"):
                self._stream(item, body)
            elif isinstance(item, Answer):
                self._send(200, json.dumps(completion(item, str(body.get("model")))))
            else:
                self._answer(item(body), body)

        def _send(self, code: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def _stream(self, answer: Answer, body: dict[str, Any], stop_after: int | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = [json.dumps(c) for c in chunks(answer, str(body.get("model")), usage)] + ["[DONE]"]
            for n, event in enumerate(events):
                if stop_after is not None and n == stop_after:
                    self.close_connection = True
                    return  # no terminating chunk: the client sees the body end early
                data = f"data: {event}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

    return Handler
