"""Runs nobody carries on end as ``expired``; nothing lands on them afterwards.

In progress: its heartbeat is older than the window (its carrier died).
Queued: it waited longer than RUN_TIMEOUT_SECONDS for a worker.
"""

from collections.abc import Iterator
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from conversations import runs
from conversations.llm import ChatMessage, Completion, Delta
from conversations.models import Conversation, Message, Run, Thread
from tests.db import fetch_row

TIMEOUT = 60
WINDOW = 15


@pytest.fixture(autouse=True)
def run_timeout(settings):
    settings.RUN_TIMEOUT_SECONDS = TIMEOUT
    settings.RUN_HEARTBEAT_WINDOW_SECONDS = WINDOW


def new_thread(session: Conversation) -> Thread:
    return Thread.objects.create(conversation=session)


def start(thread: Thread, *, age_seconds: float = 0, queued: bool = False) -> Run:
    """An active run whose last sign of life was ``age_seconds`` ago."""
    run = runs.run_start(
        thread=thread, input="Are you there?", provider="echo", model="echo-1", queued=queued
    )
    if age_seconds:
        heartbeat = timezone.now() - timedelta(seconds=age_seconds)
        Run.objects.filter(pk=run.pk).update(heartbeat_at=heartbeat)
        run.heartbeat_at = heartbeat
    return run


def runs_url(thread: Thread) -> str:
    return f"/api/v1/chatkit/sessions/{thread.conversation_id}/threads/{thread.pk}/runs"


def assert_expired(run: Run) -> None:
    run.refresh_from_db()
    assert run.status == Run.Status.EXPIRED
    assert run.error_code == "RUN_EXPIRED"
    assert run.error_message
    assert run.completed_at is not None
    assert run.completed_at >= run.created_at


def reap() -> str:
    out = StringIO()
    call_command("reap_runs", stdout=out)
    return out.getvalue()


def test_reap_runs_command_expires_a_stale_in_progress_run(session):
    stale = start(new_thread(session), age_seconds=WINDOW + 5)

    output = reap()

    assert_expired(stale)
    assert "1 run" in output


@pytest.mark.django_db(transaction=True)
def test_reap_runs_command_commits_the_expiry(session):
    stale = start(new_thread(session), age_seconds=TIMEOUT + 5)

    reap()

    row = fetch_row(Run, stale.pk)
    assert row["status"] == "expired"
    assert row["error_code"] == "RUN_EXPIRED"
    assert row["completed_at"] is not None


def test_reap_runs_command_expires_a_stale_queued_run(session):
    stale = start(new_thread(session), age_seconds=TIMEOUT + 5, queued=True)

    reap()

    assert_expired(stale)


def test_a_queued_run_waits_for_a_worker_past_the_window(session):
    # Waiting in the queue is not death: nobody beats for a queued run.
    waiting = start(new_thread(session), age_seconds=TIMEOUT - 5, queued=True)

    reap()

    waiting.refresh_from_db()
    assert waiting.status == Run.Status.QUEUED


def test_reap_runs_command_leaves_fresh_runs_alone(session):
    stale = start(new_thread(session), age_seconds=WINDOW + 5)
    recent = start(new_thread(session), age_seconds=WINDOW - 5)
    fresh = start(new_thread(session))
    heartbeats = {run.pk: run.heartbeat_at for run in (recent, fresh)}

    reap()

    assert_expired(stale)
    for run in (recent, fresh):
        run.refresh_from_db()
        assert run.status == Run.Status.IN_PROGRESS
        assert run.error_code == ""
        assert run.completed_at is None
        assert run.heartbeat_at == heartbeats[run.pk]


def test_reap_runs_command_leaves_ended_runs_alone(api, session):
    thread = new_thread(session)
    done = api.post(runs_url(thread), {"input": "Hi"}, format="json").json()["data"]
    Run.objects.filter(pk=done["id"]).update(
        heartbeat_at=timezone.now() - timedelta(seconds=TIMEOUT * 10)
    )

    reap()

    run = Run.objects.get(pk=done["id"])
    assert run.status == Run.Status.COMPLETED
    assert run.error_code == ""


def test_runs_expire_stale_returns_how_many_it_expired(session):
    stale = [start(new_thread(session), age_seconds=TIMEOUT + 1) for _ in range(2)]
    fresh = start(new_thread(session))

    assert runs.runs_expire_stale() == 2
    assert runs.runs_expire_stale() == 0

    for run in stale:
        assert_expired(run)
    fresh.refresh_from_db()
    assert fresh.status == Run.Status.IN_PROGRESS


def test_expired_run_shows_its_error_over_the_api(api, session):
    thread = new_thread(session)
    stale = start(thread, age_seconds=TIMEOUT + 5)
    runs.runs_expire_stale()

    response = api.get(f"{runs_url(thread)}/{stale.pk}")

    assert response.status_code == 200
    run = response.json()["data"]
    assert run["status"] == "expired"
    assert run["error"]["code"] == "RUN_EXPIRED"
    assert run["output_message"] is None
    assert run["completed_at"] is not None


def test_post_on_a_thread_whose_active_run_is_stale_succeeds(api, session):
    thread = new_thread(session)
    stale = start(thread, age_seconds=TIMEOUT + 5)

    response = api.post(runs_url(thread), {"input": "Hello again"}, format="json")

    assert response.status_code == 201
    assert response.json()["data"]["status"] == "completed"
    assert response.json()["data"]["output_message"]["content"] == "Echo: Hello again"
    assert_expired(stale)
    assert Run.objects.filter(thread=thread).count() == 2


def test_post_on_a_thread_whose_active_run_is_fresh_is_still_409(api, session):
    thread = new_thread(session)
    recent = start(thread, age_seconds=WINDOW - 5)

    response = api.post(runs_url(thread), {"input": "Hello again"}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["details"]["active_run_id"] == str(recent.pk)
    recent.refresh_from_db()
    assert recent.status == Run.Status.IN_PROGRESS


class ExpiringProvider:
    """Answers, but only after the reaper has expired the run it answers for."""

    name = "expiring"
    model = "expiring-1"

    def __init__(self, run: Run):
        self.run = run

    def _expire(self) -> None:
        Run.objects.filter(pk=self.run.pk).update(
            heartbeat_at=timezone.now() - timedelta(seconds=TIMEOUT + 5)
        )
        assert runs.runs_expire_stale() == 1

    def complete(self, messages: list[ChatMessage]) -> Completion:
        self._expire()
        return Completion(text="Too late")

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
        yield Delta("Too ")
        self._expire()
        yield Delta("late")
        yield Completion(text="Too late")


def execute(run: Run, provider, *, stream: bool) -> None:
    for _event in runs.run_execute(run=run, provider=provider, stream=stream):
        pass


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_reply_to_a_run_expired_meanwhile_is_not_stored(session, settings, stream):
    settings.STREAM_FLUSH_MS = 0
    thread = new_thread(session)
    run = start(thread)

    execute(run, ExpiringProvider(run), stream=stream)

    assert_expired(run)
    assert not Message.objects.filter(
        thread=thread, role="assistant", status=Message.Status.COMPLETED
    ).exists()
    assert not Message.objects.filter(thread=thread, content__contains="late").exists()
    assert run.output_message_id is None or (
        Message.objects.get(pk=run.output_message_id).status == Message.Status.INCOMPLETE
    )
