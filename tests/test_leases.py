"""Leases: a run whose carrier died ends as ``expired`` within the heartbeat window.

A real worker subprocess is killed with SIGKILL in the middle of a slow run;
it beat for the run every RUN_HEARTBEAT_SECONDS while it lived, and once
the heartbeat is older than RUN_HEARTBEAT_WINDOW_SECONDS, ``reap_runs`` (or
the next worker, at its start) expires the run, long before
RUN_TIMEOUT_SECONDS, keeping the text streamed so far as an incomplete
reply, and the thread takes new runs again.
"""

import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from conversations import runs
from conversations.models import Conversation, Message, Run, RunEvent, Thread
from conversations.providers import get_provider
from tests.db import fetch_row, fetch_rows
from tests.sse import delta_text, runs_path, streamed_events, wait_until, worker_process

LONG_INPUT = " ".join(f"w{i}" for i in range(40))
FULL_REPLY = f"Echo: {LONG_INPUT}"
BEAT = 0.5
WINDOW = 2.0
# Far beyond every wait below: only the heartbeat window can end these runs.
TIMEOUT = 300
SHORT_WINDOW = {
    "RUN_HEARTBEAT_SECONDS": str(BEAT),
    "RUN_HEARTBEAT_WINDOW_SECONDS": str(WINDOW),
    "RUN_TIMEOUT_SECONDS": str(TIMEOUT),
}


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


@pytest.fixture
def short_window(settings):
    settings.RUN_HEARTBEAT_SECONDS = BEAT
    settings.RUN_HEARTBEAT_WINDOW_SECONDS = WINDOW
    settings.RUN_TIMEOUT_SECONDS = TIMEOUT


def stored_text(run_id) -> str:
    batches = RunEvent.objects.filter(run_id=run_id, event="message.delta").order_by("seq")
    return "".join("".join(data["deltas"]) for data in batches.values_list("data", flat=True))


def kill_worker_mid_run(api, thread) -> tuple[str, str, float]:
    """A background run that a worker is streaming when it gets SIGKILL.

    (run id, text so far, monotonic time of the kill).
    """
    with worker_process(ECHO_DELAY_MS="100", **SHORT_WINDOW) as worker:
        worker.wait_ready()
        response = api.post(
            runs_path(thread), {"input": LONG_INPUT, "background": True}, format="json"
        )
        assert response.status_code == 202
        run_id = response.json()["data"]["id"]
        worker.wait_for(
            lambda: len(fetch_rows(RunEvent, run=run_id, event="message.delta")) >= 2,
            timeout=30,
            what="the worker to stream",
        )
        worker.kill()
        killed_at = time.monotonic()
    row = fetch_row(Run, run_id)
    assert row["status"] == "in_progress", (row, worker.output())
    text = stored_text(run_id)
    assert text
    assert len(text) < len(FULL_REPLY)
    return run_id, text, killed_at


def assert_expired_keeping(api, thread, run_id, text) -> None:
    run = Run.objects.get(pk=run_id)
    assert run.status == "expired"
    assert run.error_code == "RUN_EXPIRED"
    assert run.completed_at is not None
    [reply] = Message.objects.filter(run=run, role="assistant")
    assert run.output_message_id == reply.id
    assert (reply.content, reply.status) == (text, "incomplete")
    data = api.get(f"{runs_path(thread)}/{run_id}").json()["data"]
    assert data["status"] == "expired"
    assert data["error"]["code"] == "RUN_EXPIRED"
    assert data["output_message"]["content"] == text
    events = streamed_events(api.get(f"{runs_path(thread)}/{run_id}/events"))
    names = [event.event for event in events]
    assert names[-3:] == ["message.completed", "run.expired", "done"]
    assert [event.id for event in events[:-1]] == list(range(1, len(events)))
    assert delta_text(events) == text
    assert events[-2].data == data
    # The thread takes a new run.
    again = api.post(runs_path(thread), {"input": "after the crash"}, format="json")
    assert again.status_code == 201, again.json()
    assert again.json()["data"]["status"] == "completed"


@pytest.mark.django_db(transaction=True)
def test_reaper_expires_the_run_of_a_killed_worker_within_the_window(api, thread, short_window):
    run_id, text, killed_at = kill_worker_mid_run(api, thread)

    def reaped():
        call_command("reap_runs", stdout=StringIO())
        return fetch_row(Run, run_id)["status"] != "in_progress"

    # The window plus slack for a loaded machine; RUN_TIMEOUT_SECONDS is 300.
    wait_until(reaped, timeout=WINDOW + 15, interval=0.2, what="reap_runs to expire the run")

    assert time.monotonic() - killed_at < WINDOW + 15
    assert_expired_keeping(api, thread, run_id, text)


@pytest.mark.django_db(transaction=True)
def test_next_worker_expires_the_run_of_a_killed_one(api, thread, short_window):
    run_id, text, _ = kill_worker_mid_run(api, thread)

    def window_passed():
        heartbeat = fetch_row(Run, run_id)["heartbeat_at"]
        return timezone.now() - heartbeat > timedelta(seconds=WINDOW + 0.5)

    wait_until(window_passed, timeout=20, what="the heartbeat window to pass")
    with worker_process(**SHORT_WINDOW) as worker:
        worker.wait_for(
            lambda: fetch_row(Run, run_id)["status"] != "in_progress",
            timeout=30,
            what="the new worker to expire the run",
        )
        assert "Expired 1 stale run(s)" in worker.output()

    assert_expired_keeping(api, thread, run_id, text)


def abandoned_run(thread, settings) -> Run:
    """An in-progress run with stored deltas whose executor went away."""
    settings.STREAM_FLUSH_MS = 0
    provider = get_provider()
    run = runs.run_start(thread=thread, input=LONG_INPUT, provider="echo", model=provider.model)
    execution = runs.run_execute(run=run, provider=provider, stream=True)
    seen = [next(execution), next(execution)]
    assert [event.event for event in seen] == ["message.delta", "message.delta"]
    # The process dies here: nothing more is stored for this run.
    del execution
    run.refresh_from_db()
    assert run.status == "in_progress"
    return run


def age(run: Run, seconds: float) -> None:
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


@pytest.mark.django_db
def test_a_new_run_expires_the_stale_one_that_holds_the_thread(api, thread, settings):
    settings.RUN_TIMEOUT_SECONDS = 60
    stale = abandoned_run(thread, settings)
    text = stored_text(stale.pk)
    assert text == "Echo: w0 "

    blocked = api.post(runs_path(thread), {"input": "too early"}, format="json")
    assert blocked.status_code == 409
    assert blocked.json()["error"]["details"]["active_run_id"] == str(stale.pk)

    age(stale, 61)
    response = api.post(runs_path(thread), {"input": "after the lease"}, format="json")

    assert response.status_code == 201, response.json()
    stale.refresh_from_db()
    assert stale.status == "expired"
    assert stale.error_code == "RUN_EXPIRED"
    reply = Message.objects.get(pk=stale.output_message_id)
    assert (reply.content, reply.status) == (text, "incomplete")


@pytest.mark.django_db
def test_in_progress_runs_expire_after_the_window_queued_ones_after_the_timeout(
    api, thread, owner, settings
):
    settings.RUN_HEARTBEAT_WINDOW_SECONDS = 15
    settings.RUN_TIMEOUT_SECONDS = 60
    running = abandoned_run(thread, settings)
    other = Thread.objects.create(conversation=thread.conversation)
    queued = api.post(runs_path(other), {"input": "q", "background": True}, format="json")
    queued_id = queued.json()["data"]["id"]
    third = Thread.objects.create(conversation=thread.conversation)
    finished = api.post(runs_path(third), {"input": "done"}, format="json").json()["data"]
    now = timezone.now()
    Run.objects.update(heartbeat_at=now)

    assert runs.runs_expire_stale(now=now + timedelta(seconds=14)) == 0
    # The in-progress run's carrier stopped beating: expired after the window.
    assert runs.runs_expire_stale(now=now + timedelta(seconds=16)) == 1
    # Waiting for a worker is not death: the queued run has RUN_TIMEOUT_SECONDS.
    assert runs.runs_expire_stale(now=now + timedelta(seconds=59)) == 0
    assert runs.runs_expire_stale(now=now + timedelta(seconds=61)) == 1

    statuses = dict(Run.objects.values_list("id", "status"))
    assert statuses[running.pk] == "expired"
    assert statuses[Run.objects.get(pk=queued_id).pk] == "expired"
    assert statuses[Run.objects.get(pk=finished["id"]).pk] == "completed"
    queued_run = Run.objects.get(pk=queued_id)
    assert queued_run.error_code == "RUN_EXPIRED"
    assert queued_run.output_message is None
    assert runs.runs_expire_stale(now=now + timedelta(seconds=600)) == 0


@pytest.mark.django_db(transaction=True)
def test_running_worker_expires_stale_runs_periodically(api, thread, settings, short_window):
    with worker_process(**SHORT_WINDOW) as worker:
        worker.wait_ready()
        # Left behind after the worker's start-up sweep, by a process that died.
        stale = abandoned_run(thread, settings)
        text = stored_text(stale.pk)
        age(stale, 3600)

        def expired():
            return fetch_row(Run, stale.pk)["status"] == "expired"

        worker.wait_for(expired, timeout=30, interval=0.2, what="the worker's periodic sweep")

    assert_expired_keeping(api, thread, stale.pk, text)
