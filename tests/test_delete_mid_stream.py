"""Deleting a session or a thread while one of its runs streams.

The run's rows go with its parent, but every stream of it still ends as the
contract says: exactly one end event, then ``done``. The run was stopped by
its owner, so the end is ``run.cancelled``, after a ``message.completed``
holding the text streamed so far (as an incomplete message), both made by
the stream from what it had sent. This holds for the stream of the POST that
started the run and for ``GET .../events`` followers, resumed ones included.
"""

import pytest

from conversations.models import Conversation, Message, Run, RunEvent, Thread
from tests.conftest import client_for
from tests.db import fetch_row
from tests.sse import SSEStream, bearer, delta_text, deltas, runs_path, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LONG_INPUT = " ".join(f"w{i}" for i in range(60))
SESSIONS = "/api/v1/chatkit/sessions"


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


@pytest.fixture(autouse=True)
def _slow_echo(settings):
    # Some 6 s of reply: the deletion comes long before its end, even under load.
    settings.ECHO_DELAY_MS = 100
    settings.STREAM_FLUSH_MS = 50
    settings.SSE_POLL_MS = 50


def delete_parent(owner, thread, parent: str) -> None:
    url = f"{SESSIONS}/{thread.conversation_id}"
    if parent == "thread":
        url += f"/threads/{thread.pk}"
    response = client_for(owner).delete(url)
    assert response.status_code == 204, response.content
    model = Conversation if parent == "session" else Thread
    pk = thread.conversation_id if parent == "session" else thread.pk
    assert fetch_row(model, pk) is None


def start_stream(live_server, owner, thread, text: str = LONG_INPUT) -> SSEStream:
    stream = SSEStream(
        live_server.url + runs_path(thread),
        method="POST",
        headers=bearer(owner),
        body={"input": text, "stream": True},
    )
    assert stream.status == 200
    return stream


def follow(live_server, owner, thread, run_id, after: int | None = None) -> SSEStream:
    headers = bearer(owner)
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    stream = SSEStream(f"{live_server.url}{runs_path(thread)}/{run_id}/events", headers=headers)
    assert stream.status == 200
    return stream


def assert_cancelled_end(events, *, text: str, first_id: int = 1) -> None:
    """One end event, run.cancelled, after the text so far; ids without gaps; then done."""
    names = [event.event for event in events]
    assert names[-3:] == ["message.completed", "run.cancelled", "done"], names
    ends = [name for name in names if name.startswith("run.") and name not in ("run.created",)]
    assert ends.count("run.cancelled") == 1
    assert not {"run.completed", "run.failed", "run.expired"} & set(names)
    numbered = events[:-1]
    assert [event.id for event in numbered] == list(range(first_id, first_id + len(numbered)))
    completed, cancelled = events[-3].data, events[-2].data
    assert completed["role"] == "assistant"
    assert completed["status"] == "incomplete"
    assert completed["content"] == text
    assert {event.data["message_id"] for event in deltas(events)} <= {completed["id"]}
    assert cancelled["status"] == "cancelled"
    assert cancelled["output_message"] == completed
    assert cancelled["completed_at"] is not None
    assert cancelled["error"] is None


@pytest.mark.parametrize("parent", ["session", "thread"])
def test_post_stream_ends_with_run_cancelled_when_its_parent_is_deleted(
    live_server, owner, thread, parent
):
    with start_stream(live_server, owner, thread) as stream:
        for _ in range(2):
            stream.read_until(lambda event: event.event == "message.delta")
        run_id = Run.objects.get().pk

        delete_parent(owner, thread, parent)
        events = stream.read_all()

    assert_cancelled_end(events, text=delta_text(events))
    assert events[-2].data["id"] == str(run_id)
    assert delta_text(events).startswith("Echo: w0")
    assert fetch_row(Run, run_id) is None
    assert not RunEvent.objects.filter(run_id=run_id).exists()
    assert not Message.objects.exists()


@pytest.mark.parametrize("parent", ["session", "thread"])
def test_events_follower_ends_with_run_cancelled_when_the_parent_is_deleted(
    live_server, owner, thread, parent
):
    with start_stream(live_server, owner, thread) as live:
        live.read_until(lambda event: event.event == "message.delta")
        run_id = Run.objects.get().pk
        with follow(live_server, owner, thread, run_id) as follower:
            for _ in range(2):
                follower.read_until(lambda event: event.event == "message.delta")

            delete_parent(owner, thread, parent)
            followed = follower.read_all()
        live_events = live.read_all()

    assert_cancelled_end(followed, text=delta_text(followed))
    assert_cancelled_end(live_events, text=delta_text(live_events))
    # Both streams made the same end: each from what it had sent.
    assert followed[-3].data["id"] == live_events[-3].data["id"]
    assert followed[-2].data["id"] == live_events[-2].data["id"] == str(run_id)


def test_resumed_follower_ends_with_the_whole_text_so_far(live_server, owner, thread):
    with start_stream(live_server, owner, thread) as live:
        for _ in range(3):
            live.read_until(lambda event: event.event == "message.delta")
        seen = live.events()
        run_id = Run.objects.get().pk
        with follow(live_server, owner, thread, run_id, after=seen[-1].id) as follower:
            follower.read_until(lambda event: event.event == "message.delta")

            delete_parent(owner, thread, "session")
            followed = follower.read_all()
        live.read_all()

    # The client put the text together from both connections.
    assert_cancelled_end(followed, text=delta_text(seen + followed), first_id=seen[-1].id + 1)


def test_follower_of_a_queued_run_ends_with_run_cancelled_when_deleted(live_server, owner, thread):
    api = client_for(owner)
    response = api.post(runs_path(thread), {"input": "later", "background": True}, format="json")
    assert response.status_code == 202
    queued = response.json()["data"]

    with follow(live_server, owner, thread, queued["id"]) as follower:
        follower.read_until(lambda event: event.event == "message.created")
        delete_parent(owner, thread, "thread")
        events = follower.read_all()

    names = [event.event for event in events]
    assert names == ["run.created", "message.created", "run.cancelled", "done"]
    assert events[-2].data["status"] == "cancelled"
    assert events[-2].data["output_message"] is None
    assert events[-2].data["started_at"] is None


def test_stream_of_a_run_whose_parent_survives_is_unchanged(live_server, owner, thread):
    other = Thread.objects.create(conversation=thread.conversation)

    with start_stream(live_server, owner, thread, "a short one") as stream:
        stream.read_until(lambda event: event.event == "message.delta")
        response = client_for(owner).delete(
            f"{SESSIONS}/{thread.conversation_id}/threads/{other.pk}"
        )
        assert response.status_code == 204
        events = stream.read_all()

    names = [event.event for event in events]
    assert names[-3:] == ["message.completed", "run.completed", "done"]
    wait_until(lambda: fetch_row(Run, events[-2].data["id"])["status"] == "completed")
