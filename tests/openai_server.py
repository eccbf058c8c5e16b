"""A local server speaking the OpenAI chat-completions protocol, for tests.

``POST /v1/chat/completions`` answers with plain JSON, or with server-sent
events (``data: {chunk}`` lines, then ``data: [DONE]``) when the request says
``"stream": true``. What it answers is scripted per test: ``queue()`` the
actions (``Reply``, ``Fail``, ``Raw``) in the order the requests will arrive;
once the script is empty, ``default`` answers. Every request body is recorded
in ``requests`` (and its headers in ``headers``) so tests can assert what the
client sent.

It runs in a background thread on 127.0.0.1 with an ephemeral port, so the
real ``openai`` SDK talks to it over real HTTP.
"""

import json
import sys
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

COMPLETIONS_PATH = "/v1/chat/completions"
# Distinctive, so a test can tell that the key never reaches a response body.
TEST_API_KEY = "sk-test-0penai-key-do-not-leak-7f3a"
TEST_MODEL = "gpt-fake-1"


class Action(Protocol):
    def serve(self, handler: "_Handler", body: dict[str, Any]) -> None: ...


def _pieces(text: str, count: int) -> list[str]:
    """``text`` split into ``count`` non-empty pieces (fewer if it is shorter)."""
    count = max(1, min(count, len(text)))
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


@dataclass
class Reply:
    """A successful completion, streamed when the request asks for it.

    ``text=None`` sends ``"content": null``; ``empty_choices`` sends
    ``"choices": []``. ``delay`` waits before the response starts (longer than
    the client's timeout makes it time out); ``gate``, when given, is waited
    for first. Streams come in ``chunks`` pieces with ``chunk_delay`` between
    them; ``cut_after`` closes the connection after that many pieces, in the
    middle of the chunked body and without ``[DONE]``. With ``cut_cleanly``
    the body is ended properly instead (as a proxy, or a server closing an
    HTTP/1.0 connection, would end it): only the missing finish reason and
    ``[DONE]`` tell that the reply is cut short.
    """

    text: str | None = "Hello from the fake server."
    chunks: int = 1
    chunk_delay: float = 0.0
    finish_reason: str = "stop"
    prompt_tokens: int = 11
    completion_tokens: int = 5
    delay: float = 0.0
    gate: threading.Event | None = None
    empty_choices: bool = False
    cut_after: int | None = None
    cut_cleanly: bool = False

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def serve(self, handler: "_Handler", body: dict[str, Any]) -> None:
        if self.gate is not None:
            handler.fake.wait(self.gate)
        if self.delay:
            handler.fake.sleep(self.delay)
        if body.get("stream"):
            self._stream(handler, body)
        else:
            handler.send_json(200, self._completion(body))

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        choices = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": self.text},
                "finish_reason": self.finish_reason,
                "logprobs": None,
            }
        ]
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_770_000_000,
            "model": body.get("model", ""),
            "choices": [] if self.empty_choices else choices,
            "usage": self.usage(),
        }

    def _chunk(self, body: dict[str, Any], choices: list, usage=None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_770_000_000,
            "model": body.get("model", ""),
            "choices": choices,
            "usage": usage,
        }

    def _stream(self, handler: "_Handler", body: dict[str, Any]) -> None:
        handler.start_stream()
        pieces = [] if self.empty_choices or not self.text else _pieces(self.text, self.chunks)
        for index, piece in enumerate(pieces):
            if self.cut_after is not None and index == self.cut_after:
                handler.cut(cleanly=self.cut_cleanly)
                return
            if index and self.chunk_delay:
                handler.fake.sleep(self.chunk_delay)
            delta = {"content": piece} if index else {"role": "assistant", "content": piece}
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            handler.send_event(self._chunk(body, [choice]))
        if self.cut_after is not None:
            handler.cut(cleanly=self.cut_cleanly)
            return
        if not self.empty_choices:
            last = {"index": 0, "delta": {}, "finish_reason": self.finish_reason}
            handler.send_event(self._chunk(body, [last]))
        if (body.get("stream_options") or {}).get("include_usage"):
            handler.send_event(self._chunk(body, [], usage=self.usage()))
        handler.send_event("[DONE]")
        handler.end_stream()


@dataclass
class Fail:
    """An HTTP error with an OpenAI-style error body."""

    status: int
    message: str = "The fake server refused the request."

    def serve(self, handler: "_Handler", body: dict[str, Any]) -> None:
        error = {"message": self.message, "type": "fake_error", "param": None, "code": None}
        handler.send_json(self.status, {"error": error})


@dataclass
class Raw:
    """Exactly these bytes as the response body (for example, malformed JSON)."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"

    def serve(self, handler: "_Handler", body: dict[str, Any]) -> None:
        handler.send_bytes(self.status, self.body, self.content_type)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1, so streams are chunked and a cut stream is a protocol error,
    # as it would be from a real server.
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    @property
    def fake(self) -> "FakeOpenAIServer":
        return self.server.fake

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != COMPLETIONS_PATH:
            Fail(404, f"Unknown path {self.path}").serve(self, {})
            return
        body = json.loads(raw)
        action = self.fake.next_action(body, dict(self.headers))
        try:
            action.serve(self, body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout); nothing left to answer.
            self.close_connection = True

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json")

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_event(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        event = f"data: {data}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def cut(self, *, cleanly: bool = False) -> None:
        """Close the connection, in the middle of the chunked body unless ``cleanly``."""
        if cleanly:
            self.end_stream()
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: "FakeOpenAIServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops a kept-alive connection is not the server's error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeOpenAIServer:
    """The scriptable server; ``start()`` it, ``stop()`` it (the fixture does both)."""

    def __init__(self) -> None:
        self.default: Action = Reply()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._script: deque[Action] = deque()
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` should be."""
        return f"{self.url}/v1"

    def queue(self, *actions: Action) -> None:
        with self._lock:
            self._script.extend(actions)

    def next_action(self, body: dict[str, Any], headers: dict[str, str]) -> Action:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self._lock.notify_all()
            return self._script.popleft() if self._script else self.default

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``count`` requests have arrived; False if they did not in time."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.requests) >= count, timeout)

    def sleep(self, seconds: float) -> None:
        # Cut short by stop(), so a test never waits for a reply nobody reads.
        self._stopping.wait(seconds)

    def wait(self, event: threading.Event, timeout: float = 30.0) -> None:
        """Wait for ``event``; give up when the server stops or after ``timeout``."""
        for _ in range(int(timeout / 0.01)):
            if event.wait(0.01) or self._stopping.is_set():
                return

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
