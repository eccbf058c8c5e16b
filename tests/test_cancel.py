"""POST .../runs/{id}/cancel: queued runs never start, running ones stop and keep their text.

An in-progress run is cancelled from another request while it streams
(live, in this process's server) or while a real worker subprocess carries
it out: the reply keeps exactly the text of the deltas stored so far, as an
incomplete message, and the stream ends with message.completed, run.cancelled
and done.
"""

import threading

import pytest

from conversations import runs
from conversations.models import Conversation, Message, Run, RunEvent, Thread
from conversations.tasks import execute_run
from tests.conftest import client_for
from tests.db import fetch_row, fetch_rows
from tests.openai_server import Reply
from tests.sse import (
    SSEStream,
    bearer,
    delta_text,
    deltas,
    runs_path,
    streamed_events,
    wait_until,
    worker_process,
)

pytest_plugins = ["tests.conftest_openai"]

LONG_INPUT = " ".join(f"w{i}" for i in range(40))


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def cancel_url(thread, run_id) -> str:
    return f"{runs_path(thread)}/{run_id}/cancel"


def post_background(api, thread, text: str = "later") -> dict:
    response = api.post(runs_path(thread), {"input": text, "background": True}, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["data"]


def event_names(run_id) -> list[str]:
    return [event.event for event in runs.run_events_after(run_id=run_id, seq=0)]


@pytest.mark.django_db
def test_cancel_a_queued_run_and_it_never_starts(api, thread):
    queued = post_background(api, thread)

    response = api.post(cancel_url(thread, queued["id"]))

    assert response.status_code == 200, response.json()
    cancelled = response.json()["data"]
    assert cancelled["status"] == "cancelled"
    assert cancelled["id"] == queued["id"]
    assert cancelled["output_message"] is None
    assert cancelled["started_at"] is None
    assert cancelled["completed_at"] is not None
    assert cancelled["error"] is None
    assert runs.run_claim(run_id=queued["id"]) is None
    # A delivery of its task that arrives now does nothing.
    execute_run.call(run_id=queued["id"])
    run = Run.objects.get(pk=queued["id"])
    assert run.status == "cancelled"
    assert run.started_at is None
    assert not Message.objects.filter(run=run, role="assistant").exists()
    assert event_names(run.pk) == ["run.created", "message.created", "run.cancelled"]
    replayed = streamed_events(api.get(f"{runs_path(thread)}/{run.pk}/events"))
    assert [event.event for event in replayed] == [
        "run.created",
        "message.created",
        "run.cancelled",
        "done",
    ]
    assert replayed[2].data == cancelled
    assert api.get(f"{runs_path(thread)}/{run.pk}").json()["data"] == cancelled
    # The thread is free.
    assert api.post(runs_path(thread), {"input": "next"}, format="json").status_code == 201


@pytest.mark.django_db
def test_cancel_a_completed_run_is_409_and_changes_nothing(api, thread):
    done = api.post(runs_path(thread), {"input": "quick"}, format="json").json()["data"]
    events_before = event_names(done["id"])

    response = api.post(cancel_url(thread, done["id"]))

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "RUN_NOT_ACTIVE"
    assert api.get(f"{runs_path(thread)}/{done['id']}").json()["data"] == done
    assert event_names(done["id"]) == events_before


@pytest.mark.django_db
def test_cancel_twice_is_409_the_second_time(api, thread):
    queued = post_background(api, thread)
    assert api.post(cancel_url(thread, queued["id"])).status_code == 200

    again = api.post(cancel_url(thread, queued["id"]))

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "RUN_NOT_ACTIVE"
    assert event_names(queued["id"]).count("run.cancelled") == 1


@pytest.mark.django_db
def test_cancel_another_users_run_is_404_and_leaves_it_alone(api, stranger_api, thread):
    queued = post_background(api, thread)

    response = stranger_api.post(cancel_url(thread, queued["id"]))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert Run.objects.get(pk=queued["id"]).status == "queued"
    missing = api.post(cancel_url(thread, "7b0f5f3e-0000-4000-8000-000000000000"))
    assert missing.status_code == 404


def assert_cancelled_with_the_streamed_text(run_id, cancel_response, events) -> Message:
    """The reply holds exactly the streamed deltas, as incomplete; the run is cancelled."""
    text = delta_text(events)
    run = Run.objects.get(pk=run_id)
    assert run.status == "cancelled"
    assert run.error_code == ""
    [reply] = Message.objects.filter(run=run, role="assistant")
    assert run.output_message_id == reply.id
    assert reply.status == "incomplete"
    assert reply.content == text
    assert 0 < len(text) < len(f"Echo: {LONG_INPUT}")
    assert f"Echo: {LONG_INPUT}".startswith(text)
    committed = fetch_row(Message, reply.id)
    assert (committed["content"], committed["status"]) == (text, "incomplete")
    assert {event.data["message_id"] for event in deltas(events)} == {str(reply.id)}
    data = cancel_response.json()["data"]
    assert data["status"] == "cancelled"
    assert data["output_message"]["content"] == text
    assert data["output_message"]["status"] == "incomplete"
    return reply


@pytest.mark.django_db(transaction=True)
def test_cancel_a_streaming_run_ends_its_stream(live_server, owner, thread, settings):
    settings.ECHO_DELAY_MS = 100
    api = client_for(owner)

    with SSEStream(
        live_server.url + runs_path(thread),
        method="POST",
        headers=bearer(owner),
        body={"input": LONG_INPUT, "stream": True},
    ) as stream:
        for _ in range(2):
            stream.read_until(lambda event: event.event == "message.delta")
        run_id = Run.objects.get().pk
        response = api.post(cancel_url(thread, run_id))
        assert response.status_code == 200, response.json()
        events = stream.read_all()

    names = [event.event for event in events]
    assert names[-3:] == ["message.completed", "run.cancelled", "done"]
    assert "run.completed" not in names
    assert [event.id for event in events[:-1]] == list(range(1, len(events)))
    assert events[-2].data == response.json()["data"]
    assert events[-3].data["status"] == "incomplete"
    reply = assert_cancelled_with_the_streamed_text(run_id, response, events)
    assert events[-3].data["content"] == reply.content
    # Nothing was stored after the cancel: its events are the last ones.
    assert event_names(run_id)[-2:] == ["message.completed", "run.cancelled"]
    assert api.post(runs_path(thread), {"input": "next"}, format="json").status_code == 201


@pytest.mark.django_db(transaction=True)
def test_cancel_a_run_in_a_worker_stops_the_worker(api, thread):
    queued = post_background(api, thread, LONG_INPUT)

    with worker_process(ECHO_DELAY_MS="100") as worker:

        def streaming():
            return fetch_rows(RunEvent, run=queued["id"], event="message.delta")

        worker.wait_for(streaming, timeout=30, what="the worker to stream")
        response = api.post(cancel_url(thread, queued["id"]))
        assert response.status_code == 200, response.json()
        # The worker drops the provider at its next batch of pieces.
        worker.wait_for(
            lambda: "was ended elsewhere" in worker.output(),
            timeout=20,
            what="the worker to notice the cancel",
        )
        log = worker.output()

    assert "Traceback" not in log, log
    events = streamed_events(api.get(f"{runs_path(thread)}/{queued['id']}/events"))
    names = [event.event for event in events]
    assert names[:3] == ["run.created", "message.created", "run.in_progress"]
    assert names[-3:] == ["message.completed", "run.cancelled", "done"]
    assert set(names[3:-3]) == {"message.delta"}
    assert [event.id for event in events[:-1]] == list(range(1, len(events)))
    assert_cancelled_with_the_streamed_text(queued["id"], response, events)


@pytest.mark.django_db(transaction=True)
def test_cancel_while_the_provider_is_silent_ends_the_stream(
    live_server, owner, thread, settings, openai_settings
):
    # A provider that thinks for a long time before its first token: the
    # cancelled run is over, so its stream must end now, not whenever the
    # provider speaks again (or times out).
    settings.SSE_PING_SECONDS = 1
    settings.LLM_TIMEOUT_SECONDS = 30
    speak = threading.Event()
    openai_settings.queue(Reply(text="too late", gate=speak))
    api = client_for(owner)
    executor = None
    try:
        with SSEStream(
            live_server.url + runs_path(thread),
            method="POST",
            headers=bearer(owner),
            body={"input": "think hard", "stream": True},
        ) as stream:
            stream.read_until(lambda event: event.event == "run.in_progress")
            run_id = Run.objects.get().pk
            executor = next(t for t in threading.enumerate() if t.name == f"run-{run_id}")
            wait_until(lambda: openai_settings.requests, timeout=10, what="the provider call")
            response = api.post(cancel_url(thread, run_id))
            assert response.status_code == 200, response.json()
            events = stream.read_all(deadline=6)
    finally:
        speak.set()
        if executor is not None:
            executor.join(timeout=10)

    assert [event.event for event in events] == [
        "run.created",
        "message.created",
        "run.in_progress",
        "run.cancelled",
        "done",
    ]
    assert events[-2].data == response.json()["data"]
    run = Run.objects.get(pk=run_id)
    assert run.status == "cancelled"
    assert not Message.objects.filter(run=run, role="assistant").exists()
