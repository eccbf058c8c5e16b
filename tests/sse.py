"""Helpers for tests of streamed, background and long runs.

``SSEStream`` is a small server-sent events client over a real HTTP
connection (``http.client``): it reads the stream line by line as it arrives,
so a test can act in the middle of a run (cancel, disconnect, resume). Every
read has a socket timeout and every wait a deadline, so nothing hangs.

``wait_until`` polls a condition with a deadline; ``worker_process`` starts
``manage.py worker`` as a real subprocess on the test database and the test
process's own task queue, and always stops it.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from rest_framework_simplejwt.tokens import RefreshToken

from tests.task_queue import worker_queue_env

SESSIONS = "/api/v1/chatkit/sessions"
# Per socket read; a stream that stays silent longer is a failure, not a hang.
READ_TIMEOUT = 15.0
PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: ``id`` (None when absent), name and data (JSON-decoded)."""

    id: int | None
    event: str
    data: Any
    raw: str


@dataclass(frozen=True)
class Comment:
    """A comment line (``: ping``), kept so tests can see where it arrived."""

    text: str


def bearer(user) -> dict[str, str]:
    return {"Authorization": f"Bearer {RefreshToken.for_user(user).access_token}"}


def runs_path(thread) -> str:
    return f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}/runs"


class SSEReader:
    """Parses server-sent events from a ``readline`` that returns bytes (b"" at the end)."""

    def __init__(self, readline: Callable[[], bytes]) -> None:
        self._raw_readline = readline
        # Everything read so far, events and comments, in order of arrival.
        self.items: list[SSEEvent | Comment] = []
        self.finished = False

    def _readline(self) -> str | None:
        line = self._raw_readline()
        if not line:
            return None
        return line.decode("utf-8").rstrip("\r\n")

    def next_item(self) -> SSEEvent | Comment | None:
        """The next event or comment; None at the end of the body."""
        fields: dict[str, list[str]] = {}
        while True:
            line = self._readline()
            if line is None:
                self.finished = True
                if fields:
                    raise AssertionError(f"stream ended inside an event: {fields}")
                return None
            if line == "":
                if not fields:
                    continue
                return self._remember(self._dispatch(fields))
            if line.startswith(":"):
                if fields:
                    raise AssertionError(f"comment inside an event: {line!r}")
                return self._remember(Comment(line[1:].strip()))
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)

    def _remember(self, item: SSEEvent | Comment) -> SSEEvent | Comment:
        self.items.append(item)
        return item

    @staticmethod
    def _dispatch(fields: dict[str, list[str]]) -> SSEEvent:
        unknown = set(fields) - {"id", "event", "data"}
        assert not unknown, f"unexpected SSE fields {unknown}"
        assert all(len(values) == 1 for values in fields.values()), fields
        raw = fields.get("data", [""])[0]
        name = fields.get("event", ["message"])[0]
        data = raw if raw == "[DONE]" else json.loads(raw)
        event_id = int(fields["id"][0]) if "id" in fields else None
        return SSEEvent(id=event_id, event=name, data=data, raw=raw)

    def next_event(self) -> SSEEvent | None:
        """The next event, skipping comments; None at the end."""
        while True:
            item = self.next_item()
            if item is None or isinstance(item, SSEEvent):
                return item

    def read_until(self, predicate: Callable[[SSEEvent], bool], deadline: float = 30.0) -> SSEEvent:
        """Read until an event matches ``predicate``; fail at the end or past ``deadline`` s."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            event = self.next_event()
            if event is None:
                raise AssertionError(f"stream ended before the expected event: {self.names()}")
            if predicate(event):
                return event
        raise AssertionError(f"no expected event within {deadline}s: {self.names()}")

    def read_all(self, deadline: float = 30.0) -> list[SSEEvent]:
        """Read to the end of the body (bounded); return every event read so far."""
        end = time.monotonic() + deadline
        while not self.finished:
            if time.monotonic() > end:
                raise AssertionError(f"stream did not end within {deadline}s: {self.names()}")
            self.next_item()
        return self.events()

    def events(self) -> list[SSEEvent]:
        return [item for item in self.items if isinstance(item, SSEEvent)]

    def names(self) -> list[str]:
        return [event.event for event in self.events()]


class SSEStream(SSEReader):
    """An HTTP request whose response is read as server-sent events, incrementally."""

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: Any = None,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        all_headers = {"Accept": "text/event-stream", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=payload, headers=all_headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.content_type = self.response.getheader("Content-Type", "")
        super().__init__(self.response.readline)

    def __enter__(self) -> "SSEStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the connection (as a client that goes away would)."""
        self.response.close()
        self.conn.close()

    def json(self) -> Any:
        """The body of a non-stream answer (an error, for example)."""
        return json.loads(self.response.read())


def deltas(events: list[SSEEvent]) -> list[SSEEvent]:
    return [event for event in events if event.event == "message.delta"]


def delta_text(events: list[SSEEvent]) -> str:
    return "".join(event.data["delta"] for event in deltas(events))


def parse_body(body: bytes) -> list[SSEEvent | Comment]:
    """Parse a whole event-stream body (from the test client) into events and comments."""
    lines = iter(body.splitlines(keepends=True))
    reader = SSEReader(lambda: next(lines, b""))
    while reader.next_item() is not None:
        pass
    return reader.items


def streamed_events(response) -> list[SSEEvent]:
    """Events of a streaming response from Django's test client, read to its end."""
    body = b"".join(response.streaming_content)
    return [item for item in parse_body(body) if isinstance(item, SSEEvent)]


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


# The worker subprocess ------------------------------------------------------


def _database_url() -> str:
    """A URL for the database this test process uses now (the test database)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    if connection.vendor == "postgresql":
        auth = db["USER"] or ""
        if db["PASSWORD"]:
            auth += f":{db['PASSWORD']}"
        host = db["HOST"] or "127.0.0.1"
        port = f":{db['PORT']}" if db["PORT"] else ""
        return f"postgres://{auth}@{host}{port}/{db['NAME']}"
    raise NotImplementedError(connection.vendor)


def worker_env(**extra: str) -> dict[str, str]:
    """Environment for a worker on the test database and this process's task queue."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=_database_url(),
        SECRET_KEY=settings.SECRET_KEY,
        LLM_PROVIDER="echo",
        LLM_MODEL="",
        ECHO_DELAY_MS="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("TASKS_SQLITE_PATH", None)
    env.update(worker_queue_env(env["DATABASE_URL"]))
    env.update(extra)
    return env


class Worker:
    """A running ``manage.py worker``; ``output()`` is what it printed so far."""

    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(
        self, condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05
    ) -> Any:
        """``wait_until``, with what the worker printed in the failure message."""
        try:
            return wait_until(condition, timeout=timeout, interval=interval, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker output:\n{self.output()}") from None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker has swept stale runs and is about to take tasks."""
        self.wait_for(
            lambda: "Worker:" in self.output() or self.process.poll() is not None,
            timeout=timeout,
            what="the worker to start",
        )
        assert self.process.poll() is None, self.output()

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as a crash or an OOM kill."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def worker_process(threads: int = 4, **env: str) -> Iterator[Worker]:
    """Run ``manage.py worker`` for the block; stop (or kill) it whatever happens."""
    with tempfile.TemporaryDirectory(prefix="worker-") as tmp:
        log_path = Path(tmp) / "worker.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "worker", "--threads", str(threads)],
                cwd=PROJECT_DIR,
                env=worker_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(process, log_path)
        try:
            yield worker
        finally:
            worker.stop()
