"""ChatKit turns as streams: stop, disconnect, cancel from REST, failure, retry.

Over real HTTP against gunicorn (the production server, which closes a
response whose client went away) with a slow echo provider: a client that
drops its turn's stream (ChatKit's stop button) cancels the run, and the
text so far stays as an incomplete reply; with ``metadata.on_disconnect:
continue`` the run goes on to its end. A REST cancel ends a ChatKit stream
with the reply done. With the OpenAI-compatible test server (through
Django's test client): a provider failing mid-reply gives an ``error``
event after the partial reply, and a retry supersedes what followed the
user message, in ChatKit's history and in the provider's context alike.
"""

from collections.abc import Iterator

import pytest

from conversations.models import Conversation, Message, MessageStatus, Run, RunStatus, Thread
from tests.chatkit_client import (
    ChatKitStream,
    answer,
    call,
    delta_text,
    frames,
    request_body,
    types,
    user_input,
)
from tests.db import fetch_row, fetch_rows
from tests.gunicorn_server import GunicornServer, gunicorn_process
from tests.openai_server import Fail, Reply
from tests.sse import wait_until

pytest_plugins = ["tests.conftest_openai"]

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = "/api/v1/chatkit/sessions"
# Some 6 s of reply at 100 ms a word: a test acts long before its end, even under load.
LONG_INPUT = " ".join(f"w{i}" for i in range(60))
LONG_REPLY = f"Echo: {LONG_INPUT}"


@pytest.fixture(scope="module")
def slow_server(django_db_setup) -> Iterator[GunicornServer]:
    """gunicorn with a slow echo provider, for the module."""
    with gunicorn_process(ECHO_DELAY_MS="100", STREAM_FLUSH_MS="50") as server:
        yield server


@pytest.fixture
def session(owner) -> Conversation:
    return Conversation.objects.create(user=owner, title="Pinned")


def open_turn(server, owner, session, text: str = LONG_INPUT, **extra) -> ChatKitStream:
    body = request_body("threads.create", {"input": user_input(text)}, **extra)
    stream = ChatKitStream(f"http://127.0.0.1:{server.port}", owner, session.pk, body)
    assert stream.status == 200
    assert stream.content_type.startswith("text/event-stream")
    return stream


def read_deltas(stream: ChatKitStream, count: int) -> str:
    """Read until ``count`` text deltas came; their text."""
    seen: list[str] = []

    def is_enough(event) -> bool:
        update = event.data.get("update", {})
        if update.get("type") == "assistant_message.content_part.text_delta":
            seen.append(update["delta"])
        return len(seen) >= count

    stream.read_until(is_enough)
    return "".join(seen)


def the_run(thread_id: str) -> dict:
    [run] = fetch_rows(Run, thread=thread_id)
    return run


def test_dropping_the_stream_cancels_the_run_and_keeps_the_text_so_far(
    slow_server, owner, session, api
):
    stream = open_turn(slow_server, owner, session)
    created = stream.next_event().data
    thread_id = created["thread"]["id"]
    received = read_deltas(stream, 3)
    reply_id = next(
        event.data["item"]["id"]
        for event in stream.events()
        if event.data["type"] == "thread.item.added"
    )

    stream.close()

    run = wait_until(
        lambda: (run := the_run(thread_id))["status"] != RunStatus.IN_PROGRESS and run,
        timeout=20,
        what="the run to end",
    )
    assert run["status"] == RunStatus.CANCELLED
    reply = fetch_row(Message, reply_id)
    assert reply["status"] == MessageStatus.INCOMPLETE
    assert reply["content"].startswith(received)
    assert LONG_REPLY.startswith(reply["content"])
    assert len(reply["content"]) < len(LONG_REPLY)
    # ChatKit's history shows that text as the reply.
    items = answer(call(api, session.pk, "items.list", {"thread_id": thread_id}))
    assert items["data"][0]["id"] == reply_id
    assert items["data"][0]["content"][0]["text"] == reply["content"]


def test_on_disconnect_continue_lets_the_run_finish(slow_server, owner, session):
    text = " ".join(LONG_INPUT.split()[:20])
    stream = open_turn(slow_server, owner, session, text, metadata={"on_disconnect": "continue"})
    thread_id = stream.next_event().data["thread"]["id"]
    read_deltas(stream, 2)

    stream.close()

    run = wait_until(
        lambda: (run := the_run(thread_id))["status"] != RunStatus.IN_PROGRESS and run,
        timeout=30,
        what="the run to end",
    )
    assert run["status"] == RunStatus.COMPLETED
    reply = fetch_row(Message, run["output_message_id"])
    assert (reply["content"], reply["status"]) == (f"Echo: {text}", MessageStatus.COMPLETED)


def test_a_rest_cancel_ends_the_chatkit_stream_with_the_reply_done(
    slow_server, owner, session, api
):
    with open_turn(slow_server, owner, session) as stream:
        thread_id = stream.next_event().data["thread"]["id"]
        read_deltas(stream, 2)
        run = the_run(thread_id)

        cancelled = api.post(f"{SESSIONS}/{session.pk}/threads/{thread_id}/runs/{run['id']}/cancel")
        assert cancelled.status_code == 200
        events = [event.data for event in stream.read_all()]

    names = types(events)
    assert names[-3:] == ["thread.item.updated:done", "thread.item.done", "thread.updated"]
    assert "error" not in names
    reply = fetch_row(Message, cancelled.json()["data"]["output_message"]["id"])
    assert reply["status"] == MessageStatus.INCOMPLETE
    done = events[-2]["item"]
    assert done["id"] == str(reply["id"])
    assert done["content"][0]["text"] == reply["content"] == delta_text(events)
    assert fetch_row(Run, run["id"])["status"] == RunStatus.CANCELLED


def test_a_completed_stream_over_gunicorn_matches_the_stored_reply(slow_server, owner, session):
    body = request_body("threads.create", {"input": user_input("short one")})
    with ChatKitStream(f"http://127.0.0.1:{slow_server.port}", owner, session.pk, body) as stream:
        events = [event.data for event in stream.read_all()]

    done = events[-2]["item"]
    assert delta_text(events) == "Echo: short one" == fetch_row(Message, done["id"])["content"]


def test_deleting_the_thread_ends_its_stream_with_the_reply_done(slow_server, owner, session, api):
    with open_turn(slow_server, owner, session) as stream:
        thread_id = stream.next_event().data["thread"]["id"]
        read_deltas(stream, 2)

        deleted = call(api, session.pk, "threads.delete", {"thread_id": thread_id})
        assert answer(deleted) == {}
        events = [event.data for event in stream.read_all()]

    names = types(events)
    # The run went with its thread: no error, and no thread.updated for a thread that is gone.
    assert names[-2:] == ["thread.item.updated:done", "thread.item.done"]
    assert events[-1]["item"]["content"][0]["text"] == delta_text(events)
    assert fetch_row(Thread, thread_id) is None


# With the OpenAI-compatible test server, through Django's test client ----------


def test_a_provider_failing_mid_reply_gives_an_error_event_after_the_partial_reply(
    api, session, openai_settings
):
    text = "Six pieces of a reply that the provider cuts after three."
    openai_settings.queue(Reply(text=text, chunks=6, cut_after=3))

    events = frames(call(api, session.pk, "threads.create", {"input": user_input("go")}))

    names = types(events)
    assert names[-4:] == [
        "thread.item.updated:done",
        "thread.item.done",
        "error",
        "thread.updated",
    ]
    assert events[-2] == {"type": "error", "code": "stream.error", "allow_retry": True}
    partial = delta_text(events)
    assert partial
    assert text.startswith(partial)
    assert partial != text
    run = the_run(events[0]["thread"]["id"])
    assert run["status"] == RunStatus.FAILED
    reply = fetch_row(Message, run["output_message_id"])
    assert (reply["content"], reply["status"]) == (partial, MessageStatus.INCOMPLETE)


def test_a_provider_refusing_at_once_removes_the_empty_reply(api, session, openai_settings):
    openai_settings.queue(Fail(500))

    events = frames(call(api, session.pk, "threads.create", {"input": user_input("go")}))

    names = types(events)
    reply_id = events[3]["item"]["id"]
    assert names[-3:] == ["thread.item.removed", "error", "thread.updated"]
    assert events[-3]["item_id"] == reply_id
    assert not Message.objects.filter(pk=reply_id).exists()


def turn(api, session, thread_id: str | None, text: str) -> list[dict]:
    if thread_id is None:
        return frames(call(api, session.pk, "threads.create", {"input": user_input(text)}))
    params = {"thread_id": thread_id, "input": user_input(text)}
    return frames(call(api, session.pk, "threads.add_user_message", params))


def test_retry_supersedes_what_followed_in_history_and_in_the_providers_context(
    api, session, openai_settings
):
    openai_settings.queue(Reply(text="A1"), Reply(text="A2"), Reply(text="A3"), Reply(text="B2"))
    thread_id = turn(api, session, None, "Q1")[0]["thread"]["id"]
    second = turn(api, session, thread_id, "Q2")
    turn(api, session, thread_id, "Q3")
    question = second[0]["item"]["id"]

    events = frames(
        call(
            api,
            session.pk,
            "threads.retry_after_item",
            {"thread_id": thread_id, "item_id": question},
        )
    )

    # The user item is not sent again: the stream starts at stream_options.
    assert types(events)[:3] == [
        "stream_options",
        "thread.item.added",
        "thread.item.updated:added",
    ]
    assert delta_text(events) == "B2"
    context = [(m["role"], m["content"]) for m in openai_settings.requests[-1]["messages"]]
    assert context == [("user", "Q1"), ("assistant", "A1"), ("user", "Q2")]
    items = answer(call(api, session.pk, "items.list", {"thread_id": thread_id, "order": "asc"}))
    texts = [item["content"][0]["text"] for item in items["data"]]
    assert texts == ["Q1", "A1", "Q2", "B2"]
    assert items["data"][2]["id"] == question
    # Nothing was deleted: the superseded rows are kept, marked.
    superseded = fetch_rows(Message, thread=thread_id)
    assert sorted(row["content"] for row in superseded if row["superseded_by_id"]) == [
        "A2",
        "A3",
        "Q3",
    ]
    assert Thread.objects.filter(pk=thread_id).exists()
