"""A real gunicorn on the test database, and a raw HTTP/1.1 client for it.

Some behaviour only the production server shows: how it hands a chunked
request body to the application, and how it frames responses on a
keep-alive connection. ``gunicorn_server`` (module-scoped: a boot costs
seconds) runs ``gunicorn -c gunicorn.conf.py`` as a subprocess on the test
database, with the settings of ``tests/sse.py``'s worker. ``RawConnection``
writes exact bytes and parses each response by its own framing, so a
response that carries more or fewer bytes than it announces shows up in the
next one. Every read has a timeout and every wait a deadline.
"""

import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.sse import PROJECT_DIR, wait_until, worker_env

READ_TIMEOUT = 15.0
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    # Header names as sent, lowercased, in order (to see repeats).
    names: list[str] = field(default_factory=list)


class RawConnection:
    """One TCP connection: send bytes as given, read responses one at a time."""

    def __init__(self, port: int, timeout: float = READ_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = bytearray()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed; unparsed: {bytes(self.buffer[:200])!r}")
        self.buffer += data

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        taken = bytes(self.buffer[:count])
        del self.buffer[:count]
        return taken

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        return self._take(end + 2)[:-2]

    def read_response(self, *, head: bool = False) -> RawResponse:
        """The next response; with ``head`` it has no body, whatever it announces."""
        status_line = self._line().decode("latin-1")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        names = []
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            names.append(name.strip().lower())
            headers[name.strip().lower()] = value.strip()
        response = RawResponse(int(status), headers, b"", names)
        if head or response.status in (204, 304) or response.status < 200:
            return response
        if headers.get("transfer-encoding", "").lower() == "chunked":
            response.body = self._chunked_body()
        elif "content-length" in headers:
            response.body = self._take(int(headers["content-length"]))
        else:
            raise AssertionError(f"a response without framing: {status_line} {headers}")
        return response

    def _chunked_body(self) -> bytes:
        body = b""
        while size := int(self._line().split(b";")[0], 16):
            body += self._take(size)
            assert self._take(2) == b"\r\n"
        while self._line():  # trailers, up to the empty line
            pass
        return body

    def pending(self, wait: float = 0.5) -> bytes:
        """Bytes the server sent past the responses read so far, within ``wait`` s."""
        self.sock.settimeout(wait)
        try:
            self._fill()
        except (TimeoutError, AssertionError):
            pass
        finally:
            self.sock.settimeout(READ_TIMEOUT)
        return bytes(self.buffer)


def request(
    method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> bytes:
    """The bytes of an HTTP/1.1 request; a body gets a Content-Length unless headers frame it."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    all_headers = dict(headers or {})
    if body is not None and "Transfer-Encoding" not in all_headers:
        all_headers["Content-Length"] = str(len(body))
    lines += [f"{name}: {value}" for name, value in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(body: bytes, size: int = 1000) -> bytes:
    """``body`` in chunked transfer coding, in chunks of ``size`` bytes."""
    pieces = [body[start : start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


class GunicornServer:
    """A running gunicorn; ``log()`` is what it printed so far."""

    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.port = 0

    def log(self, since: int = 0) -> str:
        """What it printed, from character ``since`` (a ``len(log())`` taken earlier)."""
        return self.log_path.read_text(errors="replace")[since:]

    def connect(self) -> RawConnection:
        return RawConnection(self.port)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.log()}")
            return _LISTENING.search(self.log())

        self.port = int(wait_until(listening, timeout=timeout, what="gunicorn to listen")[1])

        def healthy():
            try:
                with self.connect() as conn:
                    conn.send(request("GET", "/healthz", headers={"Connection": "close"}))
                    return conn.read_response().status == 200
            except OSError:
                return False

        wait_until(healthy, timeout=timeout, what="gunicorn's worker to answer")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def gunicorn_process(**env: str) -> Iterator[GunicornServer]:
    """``gunicorn -c gunicorn.conf.py`` on a free port for the block; always stopped."""
    with tempfile.TemporaryDirectory(prefix="gunicorn-") as tmp:
        log_path = Path(tmp) / "gunicorn.log"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--bind",
            "127.0.0.1:0",
            # The default control socket is one path per user: parallel runs collide.
            "--no-control-socket",
            "--graceful-timeout",
            "5",
            "chatbot_project.wsgi",
        ]
        settings = {"WEB_CONCURRENCY": "1", "WEB_THREADS": "8", **env}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=PROJECT_DIR,
                env=worker_env(**settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = GunicornServer(process, log_path)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()
