"""The carrier heartbeat: a dead carrier is noticed in seconds, a slow provider is given its time.

Whatever carries a run (a live stream's thread, a worker's task, a waited-for
run) beats for it every RUN_HEARTBEAT_SECONDS, whatever the provider does.
A gunicorn worker killed with SIGKILL while it streams leaves a run that a
follower, in the worker gunicorn starts next, sees expire within the window
with no reaper anywhere; a provider silent for longer than the window, but
within its own timeout, keeps its run alive while a reaper runs all along;
a carrier stuck without progress for RUN_TIMEOUT_SECONDS stops beating.
"""

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import runs
from conversations.llm import ChatMessage, Completion, Delta, FinishReason
from conversations.models import Conversation, Run, Thread
from conversations.runs.heartbeat import runs_beat
from tests.db import fetch_row
from tests.gunicorn_server import gunicorn_process
from tests.openai_server import Reply
from tests.sse import SSEStream, bearer, runs_path, wait_until

pytest_plugins = ["tests.conftest_openai"]

pytestmark = pytest.mark.django_db(transaction=True)

LONG_INPUT = " ".join(f"w{i}" for i in range(60))
# Slack for a loaded machine (two cores shared with other test runs) on top
# of the window; RUN_TIMEOUT_SECONDS stays 300, far beyond every wait here.
SLACK = 15.0


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def gunicorn_workers(master_pid: int) -> list[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_killed_web_process_leaves_a_run_its_follower_sees_expire_within_the_window(
    owner, thread
):
    window = 2.0
    env = {
        "RUN_HEARTBEAT_SECONDS": "0.5",
        "RUN_HEARTBEAT_WINDOW_SECONDS": str(window),
        "RUN_TIMEOUT_SECONDS": "300",
        "SSE_SAFETY_POLL_SECONDS": "0.5",
        "SSE_POLL_MS": "100",
        # Some 12 s of reply: the kill comes long before its end.
        "ECHO_DELAY_MS": "200",
    }
    url = runs_path(thread)
    with gunicorn_process(**env) as server:
        base = f"http://127.0.0.1:{server.port}"
        [carrier] = gunicorn_workers(server.process.pid)
        stream = SSEStream(
            base + url, method="POST", headers=bearer(owner), body={"input": LONG_INPUT}
        )
        with stream:
            assert stream.status == 200
            for _ in range(2):
                stream.read_until(lambda event: event.event == "message.delta")
            run_id = stream.events()[0].data["id"]
            os.kill(carrier, signal.SIGKILL)
            killed_at = time.monotonic()
        assert fetch_row(Run, run_id)["status"] == "in_progress"

        # gunicorn starts another worker; nothing else runs: no worker, no reaper.
        wait_until(
            lambda: set(gunicorn_workers(server.process.pid)) - {carrier},
            timeout=30,
            what="gunicorn to start another worker",
        )
        server.wait_ready()
        with SSEStream(f"{base}{url}/{run_id}/events", headers=bearer(owner)) as follower:
            assert follower.status == 200
            events = follower.read_all(deadline=window + SLACK)
        seen_at = time.monotonic()

    names = [event.event for event in events]
    assert names[-3:] == ["message.completed", "run.expired", "done"], names
    assert events[-2].data["error"]["code"] == "RUN_EXPIRED"
    assert fetch_row(Run, run_id)["status"] == "expired"
    assert seen_at - killed_at < window + SLACK


def test_a_provider_silent_past_the_window_keeps_its_run(
    live_server, owner, thread, openai_settings, settings
):
    settings.RUN_HEARTBEAT_SECONDS = 0.2
    settings.RUN_HEARTBEAT_WINDOW_SECONDS = 1.5
    settings.RUN_TIMEOUT_SECONDS = 300
    settings.LLM_TIMEOUT_SECONDS = 15.0
    silence = 4.0
    openai_settings.default = Reply(text="Worth the wait.", chunks=3, delay=silence)
    expired = []
    stop = threading.Event()

    def reap_all_along() -> None:
        # As a worker's maintenance would, only far more often.
        while not stop.wait(0.1):
            expired.append(runs.runs_expire_stale())
        connection.close()

    reaper = threading.Thread(target=reap_all_along)
    reaper.start()
    try:
        with SSEStream(
            live_server.url + runs_path(thread),
            method="POST",
            headers=bearer(owner),
            body={"input": "take your time", "stream": True},
        ) as stream:
            assert stream.status == 200
            stream.read_until(lambda event: event.event == "run.in_progress")
            asked_at = time.monotonic()
            stream.read_until(lambda event: event.event == "message.delta", deadline=30)
            first_delta_after = time.monotonic() - asked_at
            events = stream.read_all()
    finally:
        stop.set()
        reaper.join(timeout=30)

    names = [event.event for event in events]
    assert names[-3:] == ["message.completed", "run.completed", "done"], names
    assert first_delta_after > settings.RUN_HEARTBEAT_WINDOW_SECONDS
    assert len(expired) > 10
    assert sum(expired) == 0


class StuckProvider:
    """Never answers until ``gate`` is set: a carrier stuck, its process alive."""

    name = "stuck"
    model = "stuck-1"

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def complete(self, messages: list[ChatMessage]) -> Completion:
        raise NotImplementedError

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
        self.gate.wait(60)
        yield Delta("Too late")
        yield Completion(text="Too late", finish_reason=FinishReason.STOP)


def test_a_carrier_without_progress_for_the_timeout_stops_beating(thread, settings):
    settings.RUN_HEARTBEAT_SECONDS = 0.25
    settings.RUN_HEARTBEAT_WINDOW_SECONDS = 2.5
    settings.RUN_TIMEOUT_SECONDS = 4
    run = runs.run_start(thread=thread, input="hello?", provider="stuck", model="stuck-1")
    gate = threading.Event()

    def carry() -> None:
        for _event in runs.run_execute(run=run, provider=StuckProvider(gate), stream=True):
            pass
        connection.close()

    carrier = threading.Thread(target=carry)
    started = time.monotonic()
    carrier.start()
    try:

        def reaped() -> bool:
            runs.runs_expire_stale()
            return fetch_row(Run, run.pk)["status"] == "expired"

        wait_until(reaped, timeout=4 + 2.5 + SLACK, interval=0.2, what="the stuck run to expire")
        expired_after = time.monotonic() - started
        # Its process lived all along: only the missing progress ended it.
        assert carrier.is_alive()
        assert expired_after >= settings.RUN_TIMEOUT_SECONDS
    finally:
        gate.set()
        carrier.join(timeout=30)


def aged_runs(thread: Thread, count: int) -> list[Run]:
    made = []
    for _ in range(count):
        other = Thread.objects.create(conversation=thread.conversation)
        run = runs.run_start(thread=other, input="hi", provider="echo", model="echo-1")
        made.append(run)
    Run.objects.update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    return made


def test_one_beat_renews_every_carried_run_in_one_statement(thread):
    carried = aged_runs(thread, 3)
    before = timezone.now()

    with CaptureQueriesContext(connection) as queries:
        renewed = runs_beat(run_ids=[run.pk for run in carried])

    assert renewed == 3
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1
    for run in carried:
        assert fetch_row(Run, run.pk)["heartbeat_at"] >= before


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks: SQLite locks the whole database"
)
def test_a_beat_skips_a_run_whose_row_is_locked_rather_than_wait(thread):
    locked, free = aged_runs(thread, 2)
    db = connection.settings_dict
    with psycopg.connect(
        dbname=db["NAME"],
        user=db["USER"] or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
    ) as holder:
        # As the delta writer or a cancel holds it while storing.
        holder.execute("SELECT 1 FROM conversations_run WHERE id = %s FOR UPDATE", [locked.pk])
        started = time.monotonic()
        renewed = runs_beat(run_ids=[locked.pk, free.pk])
        waited = time.monotonic() - started
        holder.rollback()

    assert renewed == 1
    # Far below the lock timeout (5 s) it would have waited for.
    assert waited < 2
    assert fetch_row(Run, free.pk)["heartbeat_at"] > fetch_row(Run, locked.pk)["heartbeat_at"]
