"""GET .../runs/{id}/events: replay of stored events, resume after Last-Event-ID, follow live.

Deltas are stored in batches (one row for several pieces) but replayed one
id per piece, so a client can resume from any id, even inside a batch, and
gets every event exactly once.
"""

from types import SimpleNamespace

import pytest

from conversations import runs
from conversations.models import Conversation, Message, Run, RunEvent, Thread
from conversations.providers import get_provider
from conversations.runs import execute
from tests.conftest import client_for
from tests.sse import (
    Comment,
    SSEStream,
    bearer,
    delta_text,
    deltas,
    runs_path,
    streamed_events,
    wait_until,
)

WORDS = " ".join(f"word{i}" for i in range(12))


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def events_url(thread, run_id) -> str:
    return f"{runs_path(thread)}/{run_id}/events"


def finished_run(api, thread, text: str = WORDS) -> dict:
    response = api.post(runs_path(thread), {"input": text}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["data"]


def streamed_run(thread, text: str = WORDS) -> dict:
    """A run carried out with streaming, in this process, as a streaming POST would."""
    provider = get_provider()
    run = runs.run_start(thread=thread, input=text, provider=provider.name, model=provider.model)
    events = list(runs.run_execute(run=run, provider=provider, stream=True))
    assert events[-1].event == "run.completed"
    return events[-1].data


def replay(api, thread, run_id, **headers):
    response = api.get(events_url(thread, run_id), **headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    return streamed_events(response)


def summary(events) -> list[tuple]:
    return [(event.id, event.event, event.raw) for event in events]


@pytest.mark.django_db
def test_replay_of_a_finished_run_is_every_event_then_done(api, thread):
    run = finished_run(api, thread)

    events = replay(api, thread, run["id"])

    names = [event.event for event in events]
    assert names[:3] == ["run.created", "message.created", "run.in_progress"]
    assert names[-3:] == ["message.completed", "run.completed", "done"]
    assert set(names[3:-3]) == {"message.delta"}
    assert [event.id for event in events[:-1]] == list(range(1, len(events)))
    assert events[-1].id is None
    assert events[-1].raw == "[DONE]"
    reply = Message.objects.get(pk=run["output_message"]["id"])
    assert delta_text(events) == reply.content == f"Echo: {WORDS}"
    assert {event.data["message_id"] for event in deltas(events)} == {str(reply.id)}
    assert events[-2].data == api.get(f"{runs_path(thread)}/{run['id']}").json()["data"]


@pytest.mark.django_db
def test_last_event_id_resumes_right_after_it(api, thread, settings, monkeypatch):
    # One batch for the first piece, one for all the rest: resuming inside a
    # batch must still give one event per id, none twice, none missing. The
    # flush clock stands still, so no tick can begin while the run streams.
    settings.STREAM_FLUSH_MS = 600_000
    monkeypatch.setattr(execute, "time", SimpleNamespace(monotonic=lambda: 1234.5))
    run = streamed_run(thread)
    full = replay(api, thread, run["id"])
    last_id = full[-2].id
    batches = RunEvent.objects.filter(run_id=run["id"], event="message.delta").count()
    assert batches == 2
    assert len(deltas(full)) == 13

    for after in range(last_id + 1):
        by_header = replay(api, thread, run["id"], HTTP_LAST_EVENT_ID=str(after))
        assert summary(by_header) == summary(full[after:]), after
    by_query = api.get(f"{events_url(thread, run['id'])}?last_event_id=5")
    assert summary(streamed_events(by_query)) == summary(full[5:])


@pytest.mark.django_db
def test_header_wins_over_query(api, thread):
    # A browser's EventSource reconnects to the same URL with the newer id in
    # the header: the header must win over an id in the URL.
    run = finished_run(api, thread)
    full = replay(api, thread, run["id"])

    response = api.get(f"{events_url(thread, run['id'])}?last_event_id=1", HTTP_LAST_EVENT_ID="4")

    assert summary(streamed_events(response)) == summary(full[4:])


@pytest.mark.django_db
def test_replay_after_the_end_is_just_done(api, thread):
    run = finished_run(api, thread)
    last_id = replay(api, thread, run["id"])[-2].id

    for after in (last_id, last_id + 100):
        events = replay(api, thread, run["id"], HTTP_LAST_EVENT_ID=str(after))
        assert summary(events) == [(None, "done", "[DONE]")]


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "", " 3", "٣", "0x10"])
def test_bad_last_event_id_is_400(api, thread, bad):
    run = finished_run(api, thread)

    by_header = api.get(events_url(thread, run["id"]), HTTP_LAST_EVENT_ID=bad)
    by_query = api.get(events_url(thread, run["id"]), {"last_event_id": bad})

    for response in (by_header, by_query):
        assert response.status_code == 400
        assert response["Content-Type"].startswith("application/json")
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"


@pytest.mark.django_db
def test_events_of_another_users_run_are_404(api, stranger_api, thread):
    run = finished_run(api, thread)

    response = stranger_api.get(events_url(thread, run["id"]))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    missing = api.get(events_url(thread, "7b0f5f3e-0000-4000-8000-000000000000"))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.django_db(transaction=True)
def test_reconnect_during_a_slow_run_gets_every_event_once(live_server, owner, thread, settings):
    settings.ECHO_DELAY_MS = 40
    settings.STREAM_FLUSH_MS = 50
    headers = bearer(owner)
    url = live_server.url + runs_path(thread)

    with SSEStream(url, method="POST", headers=headers, body={"input": WORDS, "stream": True}) as s:
        assert s.status == 200
        for _ in range(3):
            s.read_until(lambda event: event.event == "message.delta")
        first = s.events()
    # Dropped after three deltas; the run goes on without the client.
    run = Run.objects.get()
    last_seen = first[-1].id

    with SSEStream(
        live_server.url + events_url(thread, run.pk),
        headers={**headers, "Last-Event-ID": str(last_seen)},
    ) as again:
        assert again.status == 200
        assert again.content_type.startswith("text/event-stream")
        second = again.read_all()

    assert second[0].id == last_seen + 1
    assert second[-1].event == "done"
    assert second[-2].event == "run.completed"
    ids = [event.id for event in first + second[:-1]]
    assert ids == list(range(1, len(ids) + 1))
    run.refresh_from_db()
    assert run.status == "completed"
    reply = Message.objects.get(pk=run.output_message_id)
    assert delta_text(first + second) == reply.content == f"Echo: {WORDS}"
    # The live events and the stored ones are the same events.
    stored = runs.run_events_after(run_id=run.pk, seq=0)
    assert [(e.seq, e.event, e.data) for e in stored] == [
        (event.id, event.event, event.data) for event in first + second[:-1]
    ]


@pytest.mark.django_db(transaction=True)
def test_following_a_queued_run_pings_then_sees_it_end(live_server, owner, thread, settings):
    settings.SSE_PING_SECONDS = 1
    settings.SSE_POLL_MS = 50
    api = client_for(owner)
    # No worker runs here, so the run stays queued until it is cancelled.
    queued = api.post(runs_path(thread), {"input": "wait", "background": True}, format="json")
    assert queued.status_code == 202
    run_id = queued.json()["data"]["id"]

    with SSEStream(live_server.url + events_url(thread, run_id), headers=bearer(owner)) as s:
        assert s.status == 200
        s.read_until(lambda event: event.event == "message.created")
        wait_until(lambda: isinstance(s.next_item(), Comment), timeout=10, what="a ping")
        cancelled = api.post(f"{runs_path(thread)}/{run_id}/cancel")
        assert cancelled.status_code == 200
        events = s.read_all()

    assert [event.event for event in events] == [
        "run.created",
        "message.created",
        "run.cancelled",
        "done",
    ]
    assert [event.id for event in events[:-1]] == [1, 2, 3]
    assert events[2].data == cancelled.json()["data"]
    assert [item.text for item in s.items if isinstance(item, Comment)][:1] == ["ping"]


@pytest.mark.django_db
def test_follower_gets_the_end_of_a_run_that_ends_between_two_polls(
    api, thread, settings, monkeypatch
):
    # The run ends right after the follower's read of new events found none,
    # before it checks whether the run is still active: the follower must
    # still send the final events, not just done. The wrapper only times the
    # cancel; the real function does the reading.
    settings.SSE_POLL_MS = 10
    queued = api.post(runs_path(thread), {"input": "x", "background": True}, format="json")
    run_id = queued.json()["data"]["id"]
    read_events = runs.run_events_after
    cancelled = []

    def read_then_cancel(*, run_id, seq):
        events = read_events(run_id=run_id, seq=seq)
        if not events and not cancelled:
            cancelled.append(runs.run_cancel(run_id=run_id))
        return events

    monkeypatch.setattr(runs, "run_events_after", read_then_cancel)

    events = replay(api, thread, run_id, HTTP_LAST_EVENT_ID="2")

    assert cancelled
    assert [(event.id, event.event) for event in events] == [(3, "run.cancelled"), (None, "done")]
