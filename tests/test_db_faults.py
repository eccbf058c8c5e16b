"""Database faults on a real PostgreSQL server: killed connections and an outage.

Every backend connected to the test database is terminated from a separate
superuser connection: the next requests succeed (the pool's health check
replaces dead connections), and nothing is ever a 500. Then the server is
stopped: the API answers 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After``,
``/readyz`` is 503 and ``/healthz`` 200; once it is started again the same
requests succeed without restarting anything.

Killing connections touches only the test database. Stopping the server
disturbs everything else that uses the cluster, so that test is opt-in: it
is skipped unless ``DB_FAULT_TESTS=1`` (CI sets it); its fixture starts the
cluster again whatever happens. ``-m "not db_faults"`` deselects them all.
PostgreSQL only.
"""

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
import pytest
from django.conf import settings
from django.db import connection

from conversations import runs
from conversations.models import Conversation, Message, Run, Thread
from conversations.runs.store import NOTICE_CHANNEL
from conversations.runs.wakeups import listening
from tests.carriers import GatedProvider, carried
from tests.db import count_rows, fetch_row, fetch_rows
from tests.openai_server import Reply
from tests.sse import SSEStream, bearer, wait_until

pytest_plugins = ["tests.conftest_openai"]


_VENDOR = connection.vendor
_HOST = settings.DATABASES["default"].get("HOST") or "127.0.0.1"
_PORT = str(settings.DATABASES["default"].get("PORT") or 5432)
_CLUSTERS = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []

pytestmark = [
    pytest.mark.db_faults,
    pytest.mark.skipif(
        _VENDOR != "postgresql",
        reason="database faults need PostgreSQL (pg_terminate_backend, a server to stop); "
        "SQLite has no server and no connections to kill",
    ),
    pytest.mark.django_db(transaction=True),
]

SESSIONS = "/api/v1/chatkit/sessions"
READY_TIMEOUT = 60.0


# The server ----------------------------------------------------------------


def _superuser_connection() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        dbname="postgres",
        user=db["USER"] or "postgres",
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        autocommit=True,
        connect_timeout=5,
    )


def terminate_backends_on_test_database() -> int:
    """``pg_terminate_backend`` every other connection to the test database; how many."""
    with _superuser_connection() as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [connection.settings_dict["NAME"]],
        ).fetchone()
    return row[0]


def backends_on_test_database() -> int:
    with _superuser_connection() as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
            [connection.settings_dict["NAME"]],
        ).fetchone()
    return row[0]


def pg_is_ready() -> bool:
    result = subprocess.run(
        ["pg_isready", "-h", _HOST, "-p", _PORT, "-t", "2"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return result.returncode == 0


class Cluster:
    """``pg_ctlcluster`` for the local cluster; ``start()`` waits until it accepts connections."""

    def __init__(self) -> None:
        self.version = _CLUSTERS[-1]

    def _ctl(self, action: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, "main", action, *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop(self) -> None:
        result = self._ctl("stop", "-m", "fast")
        assert result.returncode == 0, result.stdout + result.stderr
        wait_until(lambda: not pg_is_ready(), timeout=30, what="PostgreSQL to stop")

    def start(self) -> None:
        if not pg_is_ready():
            result = self._ctl("start")
            # "already running" is fine: readiness below is what counts.
            if result.returncode != 0 and "already running" not in result.stderr:
                raise AssertionError(result.stdout + result.stderr)
        wait_until(pg_is_ready, timeout=READY_TIMEOUT, interval=0.1, what="PostgreSQL to start")


class PoolWait:
    """How long a request waits for a pooled connection (DB_CONNECT_TIMEOUT_SECONDS x 2).

    ``short()`` makes it a second during the outage, so that the server stays
    down for seconds, not for the default wait of every request; ``normal()``
    puts the configured wait back before the server's return is tested.
    """

    SHORT = 1.0

    def __init__(self) -> None:
        self.configured = None

    @staticmethod
    def _pool():
        # Looked up each time: tests may replace the pool. None with DB_POOL=0,
        # where a refused connection fails at once anyway.
        return connection.pool

    def short(self) -> None:
        pool = self._pool()
        if pool is not None:
            self.configured = pool.timeout
            pool.timeout = self.SHORT

    def normal(self) -> None:
        pool = self._pool()
        if pool is not None and self.configured is not None:
            pool.timeout = self.configured


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """The local PostgreSQL cluster, running again after the test whatever happened."""
    if os.environ.get("DB_FAULT_TESTS") != "1":
        pytest.skip("stops the local PostgreSQL server: opt in with DB_FAULT_TESTS=1")
    if not _CLUSTERS or shutil.which("pg_ctlcluster") is None:
        pytest.skip("needs a local PostgreSQL cluster managed by pg_ctlcluster")
    if _HOST not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"the test database is not on this machine ({_HOST})")
    control = Cluster()
    assert pg_is_ready(), "PostgreSQL must be running before the test"
    try:
        yield control
    finally:
        control.start()


@pytest.fixture
def pool_wait() -> Iterator[PoolWait]:
    control = PoolWait()
    try:
        yield control
    finally:
        control.normal()


@pytest.fixture(autouse=True)
def _no_connection_kept_by_the_test() -> Iterator[None]:
    """The test's own thread holds no connection that a kill would leave dead."""
    connection.close()
    yield
    connection.close()


@pytest.fixture
def http(live_server, owner) -> Iterator[httpx2.Client]:
    """Real HTTP to the live server: each request closes its connection, as in production."""
    with httpx2.Client(
        base_url=live_server.url, headers=bearer(owner), timeout=30, trust_env=False
    ) as client:
        yield client


# Helpers -------------------------------------------------------------------

GROWN_POOL = 8


def fresh_pool() -> None:
    """Start from a new pool (min_size idle connections), whatever earlier tests left."""
    connection.close()
    connection.close_pool()


def grow_pool(size: int) -> None:
    """Leave ``size`` idle connections in the pool, as concurrent requests would."""
    fresh_pool()
    pool = connection.pool
    if pool is None:
        pytest.skip("needs the connection pool (DB_POOL=1)")
    pool.open()
    taken = [pool.getconn() for _ in range(size)]
    for conn in taken:
        pool.putconn(conn)
    wait_until(lambda: pool.get_stats().get("pool_available", 0) >= size, timeout=10)


def assert_no_500(responses: list) -> None:
    """Nothing but the outage's own 503s is a server error."""
    failures = [
        (r.status_code, r.content[:200])
        for r in responses
        if r.status_code >= 500 and r.status_code != 503
    ]
    assert not failures, failures


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert response.headers["Content-Type"].startswith("application/json")
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) > 0
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    text = response.text.lower()
    for leak in ("psycopg", "connection refused", "5432", "traceback", "pool", "server"):
        assert leak not in text, leak


# Killed connections ------------------------------------------------------


def test_requests_succeed_after_every_backend_is_terminated(http, owner):
    fresh_pool()
    seen = []
    session = http.post(SESSIONS, json={"title": "Before"})
    seen.append(session)
    seen.append(http.get(SESSIONS))
    assert [r.status_code for r in seen] == [201, 200]
    session_id = session.json()["data"]["id"]

    # Twice: reads first, then writes first.
    for round_, order in enumerate([("list", "create", "patch"), ("create", "patch", "list")]):
        assert terminate_backends_on_test_database() >= 1, "the pool keeps connections open"
        calls = {
            "list": lambda: http.get(SESSIONS),
            "create": lambda r=round_: http.post(SESSIONS, json={"title": f"After {r}"}),
            "patch": lambda r=round_: http.patch(
                f"{SESSIONS}/{session_id}", json={"title": f"P{r}"}
            ),
        }
        for name in order:
            response = calls[name]()
            seen.append(response)
            assert response.status_code in (200, 201), (round_, name, response.content)
        ready = http.get("/readyz")
        seen.append(ready)
        assert ready.status_code == 200, ready.content

    assert_no_500(seen)
    assert count_rows(Conversation, user=owner.pk) == 3
    assert fetch_row(Conversation, session_id)["title"] == "P1"


def test_a_run_survives_its_connections_being_terminated_while_the_provider_talks(
    live_server, owner, openai_settings
):
    fresh_pool()
    gate = threading.Event()
    reply = "Still stored after the kill."
    openai_settings.default = Reply(text=reply, chunks=3, gate=gate)
    thread = Thread.objects.create(conversation=Conversation.objects.create(user=owner))
    connection.close()
    path = f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}/runs"

    with SSEStream(
        live_server.url + path, method="POST", headers=bearer(owner), body={"input": "hello"}
    ) as stream:
        assert stream.status == 200
        try:
            stream.read_until(lambda e: e.event == "run.in_progress", deadline=10)
            assert openai_settings.wait_for_requests(1, timeout=10)
            assert terminate_backends_on_test_database() >= 1
        finally:
            gate.set()
        events = stream.read_all(deadline=20)

    names = [e.event for e in events]
    assert names[-3:] == ["message.completed", "run.completed", "done"], names
    run_id = events[0].data["id"]
    assert fetch_row(Run, run_id)["status"] == "completed"
    assert count_rows(Message, thread=thread.pk, content=reply) == 1


def listener_backends() -> set[int]:
    """Backends of the test database that listen for run notices (the listeners)."""
    with _superuser_connection() as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query = %s",
            [connection.settings_dict["NAME"], f"LISTEN {NOTICE_CHANNEL}"],
        ).fetchall()
    return {pid for (pid,) in rows}


def test_a_follower_wakes_on_notices_again_once_the_listener_is_terminated(
    live_server, owner, settings
):
    # Polling too slow to explain anything; a read silent for 10 s fails.
    settings.SSE_POLL_MS = 60_000
    settings.SSE_SAFETY_POLL_SECONDS = 60.0
    settings.SSE_PING_SECONDS = 60
    settings.STREAM_FLUSH_MS = 0
    thread = Thread.objects.create(conversation=Conversation.objects.create(user=owner))
    run = runs.run_start(thread=thread, input="hello", provider="gated", model="gated-1")
    provider = GatedProvider(["Before ", "after"])
    url = f"{live_server.url}{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}/runs"
    with (
        carried(run, provider),
        SSEStream(f"{url}/{run.pk}/events", headers=bearer(owner), timeout=10) as follower,
    ):
        follower.read_until(lambda event: event.event == "run.in_progress")
        wait_until(listening, timeout=10, what="the listener to connect")
        provider.release()
        follower.read_until(lambda event: event.event == "message.delta")
        killed = listener_backends()
        with _superuser_connection() as admin:
            for pid in killed:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])

        wait_until(
            lambda: listening() and listener_backends() - killed,
            timeout=30,
            what="the listener to connect again",
        )
        provider.release()
        second = follower.read_until(lambda event: event.event == "message.delta")
        events = follower.read_all()

    assert killed
    assert second.data["delta"] == "after"
    assert [event.event for event in events][-3:] == ["message.completed", "run.completed", "done"]


def test_requests_succeed_after_a_grown_pool_loses_every_connection(http, owner):
    """A pool that grew under load holds many idle connections; a failover or a
    restart kills them all at once, and the next request must still be served."""
    grow_pool(GROWN_POOL)
    assert backends_on_test_database() >= GROWN_POOL

    assert terminate_backends_on_test_database() >= GROWN_POOL

    listed = http.get(SESSIONS)
    created = http.post(SESSIONS, json={"title": "After the failover"})
    assert listed.status_code == 200, listed.content
    assert created.status_code == 201, created.content
    assert count_rows(Conversation, user=owner.pk) == 1


# The server stopped ----------------------------------------------------------


def test_outage_is_503_then_the_same_requests_succeed_once_the_server_is_back(
    http, owner, cluster, pool_wait
):
    fresh_pool()
    seen = []
    assert http.get(SESSIONS).status_code == 200
    assert backends_on_test_database() >= 1

    pool_wait.short()
    cluster.stop()
    try:
        listed = http.get(SESSIONS)
        created = http.post(SESSIONS, json={"title": "During the outage"})
        ready = http.get("/readyz")
        healthy = http.get("/healthz")
    finally:
        cluster.start()
        pool_wait.normal()
    seen.extend([listed, created, ready, healthy])

    assert_unavailable(listed)
    assert_unavailable(created)
    assert ready.status_code == 503, ready.content
    assert ready.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(ready.headers["Retry-After"]) > 0
    assert healthy.status_code == 200, healthy.content
    assert healthy.json() == {"success": True, "data": {"status": "ok"}}

    # Back: the same requests succeed, in this same process, with no restart.
    after_listed = http.get(SESSIONS)
    after_created = http.post(SESSIONS, json={"title": "After the outage"})
    after_ready = http.get("/readyz")
    seen.extend([after_listed, after_created, after_ready])
    assert after_listed.status_code == 200, after_listed.content
    assert after_created.status_code == 201, after_created.content
    assert after_ready.status_code == 200, after_ready.content
    assert_no_500(seen)
    rows = fetch_rows(Conversation, user=owner.pk)
    assert [row["title"] for row in rows] == ["After the outage"]
