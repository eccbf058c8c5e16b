"""The ChatKit endpoint's requests, over the same rows as the REST API.

A turn (threads.create, threads.add_user_message) is a run whose stream is
translated into ChatKit's events in the order of CHATKIT.md; the JSON
requests answer the protocol's bare objects. What one surface writes the
other reads: a thread made here is listed over REST, a REST message shows
up in ChatKit's history. Writes are read back through a second connection.
"""

import re

import pytest

from conversations import runs
from conversations.models import (
    Conversation,
    Message,
    MessageRole,
    MessageStatus,
    Run,
    RunStatus,
    Thread,
)
from tests.chatkit_client import answer, call, delta_text, frames, types, user_input
from tests.db import fetch_row, fetch_rows

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = "/api/v1/chatkit/sessions"
ISO_WITH_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
TURN = [
    "thread.item.done",
    "stream_options",
    "thread.item.added",
    "thread.item.updated:added",
]
REPLY_END = ["thread.item.updated:done", "thread.item.done"]


@pytest.fixture
def session(owner) -> Conversation:
    return Conversation.objects.create(user=owner, title="Pinned")


def rest_messages(api, thread_id, session) -> list[dict]:
    response = api.get(f"{SESSIONS}/{session.pk}/threads/{thread_id}/messages")
    assert response.status_code == 200
    return response.json()["data"]


def create(api, session, text: str) -> list[dict]:
    return frames(call(api, session.pk, "threads.create", {"input": user_input(text)}))


def test_create_streams_a_new_thread_its_message_and_the_reply(api, session):
    events = create(api, session, "Hello there, ChatKit")

    names = types(events)
    assert names[:5] == ["thread.created", *TURN]
    assert set(names[5:-3]) == {"thread.item.updated:text_delta"}, names
    assert names[-3:] == [*REPLY_END, "thread.updated"]
    thread = events[0]["thread"]
    assert thread["title"] is None
    assert thread["status"] == {"type": "active"}
    assert thread["items"] == {"data": [], "has_more": False, "after": None}
    assert ISO_WITH_ZONE.match(thread["created_at"])
    user_item = events[1]["item"]
    assert user_item == {
        "id": user_item["id"],
        "thread_id": thread["id"],
        "created_at": user_item["created_at"],
        "type": "user_message",
        "content": [{"type": "input_text", "text": "Hello there, ChatKit"}],
        "attachments": [],
        "inference_options": {},
    }
    assert events[2] == {"type": "stream_options", "stream_options": {"allow_cancel": True}}
    added = events[3]["item"]
    assert added["type"] == "assistant_message"
    assert added["content"] == []
    reply_id = added["id"]
    updates = [event for event in events if event["type"] == "thread.item.updated"]
    assert {event["item_id"] for event in updates} == {reply_id}
    assert {event["update"]["content_index"] for event in updates} == {0}
    done = events[-2]["item"]
    text = delta_text(events)
    assert done["id"] == reply_id
    assert done["content"] == [{"type": "output_text", "text": text, "annotations": []}]
    assert events[-3]["update"]["content"]["text"] == text
    assert events[-1]["thread"]["title"] == "Hello there, ChatKit"

    # The rows, committed: the thread in this session, named; the messages; the run.
    stored = fetch_row(Thread, thread["id"])
    assert stored["conversation_id"] == session.pk
    assert stored["title"] == "Hello there, ChatKit"
    reply = fetch_row(Message, reply_id)
    assert reply["content"] == text == "Echo: Hello there, ChatKit"
    assert reply["status"] == MessageStatus.COMPLETED
    assert fetch_row(Message, user_item["id"])["role"] == MessageRole.USER
    [run] = fetch_rows(Run, thread=thread["id"])
    assert run["status"] == RunStatus.COMPLETED


def test_a_thread_made_over_chatkit_is_listed_over_rest(api, session):
    events = create(api, session, "Made over ChatKit")
    thread_id = events[0]["thread"]["id"]

    listed = api.get(f"{SESSIONS}/{session.pk}/threads").json()["data"]
    assert [thread["id"] for thread in listed] == [thread_id]
    assert listed[0]["title"] == "Made over ChatKit"
    contents = [(m["role"], m["content"]) for m in rest_messages(api, thread_id, session)]
    assert contents == [("user", "Made over ChatKit"), ("assistant", "Echo: Made over ChatKit")]


def test_add_user_message_streams_a_turn_on_the_thread(api, session):
    thread_id = create(api, session, "first")[0]["thread"]["id"]

    events = frames(
        call(
            api,
            session.pk,
            "threads.add_user_message",
            {"thread_id": thread_id, "input": user_input("second")},
        )
    )

    names = types(events)
    # Not a new thread, and already named: no thread.created, no thread.updated.
    assert names[:4] == TURN
    assert names[-2:] == REPLY_END
    assert delta_text(events) == "Echo: second"
    contents = [m["content"] for m in rest_messages(api, thread_id, session)]
    assert contents == ["first", "Echo: first", "second", "Echo: second"]


def test_a_rest_message_shows_in_chatkit_history(api, session):
    thread = Thread.objects.create(conversation=session)
    response = api.post(
        f"{SESSIONS}/{session.pk}/threads/{thread.pk}/runs", {"input": "over REST"}, format="json"
    )
    assert response.status_code == 201

    fetched = answer(call(api, session.pk, "threads.get_by_id", {"thread_id": str(thread.pk)}))

    assert fetched["title"] == "over REST"
    texts = [item["content"][0]["text"] for item in fetched["items"]["data"]]
    assert texts == ["over REST", "Echo: over REST"]
    assert [item["type"] for item in fetched["items"]["data"]] == [
        "user_message",
        "assistant_message",
    ]


def test_get_by_id_is_the_thread_with_its_first_items_oldest_first(api, session):
    thread = Thread.objects.create(conversation=session, title="Mine", metadata={"k": "v"})
    for n in range(11):
        runs.run_launch(thread=thread, input=f"turn {n}", mode=runs.Mode.WAIT)
    messages = list(Message.objects.filter(thread=thread).order_by("created_at", "id"))

    fetched = answer(call(api, session.pk, "threads.get_by_id", {"thread_id": str(thread.pk)}))

    assert {key: fetched[key] for key in ("id", "title", "status", "metadata")} == {
        "id": str(thread.pk),
        "title": "Mine",
        "status": {"type": "active"},
        "metadata": {"k": "v"},
    }
    items = fetched["items"]
    assert [item["id"] for item in items["data"]] == [str(m.pk) for m in messages[:20]]
    assert items["has_more"] is True
    assert items["after"] == str(messages[19].pk)
    assert all(ISO_WITH_ZONE.match(item["created_at"]) for item in items["data"])


def test_update_renames_the_thread(api, session):
    thread = Thread.objects.create(conversation=session, title="Old", metadata={"a": "b"})

    renamed = answer(
        call(api, session.pk, "threads.update", {"thread_id": str(thread.pk), "title": "New"})
    )

    assert renamed == {
        "id": str(thread.pk),
        "title": "New",
        "created_at": renamed["created_at"],
        "status": {"type": "active"},
        "metadata": {"a": "b"},
        "items": {"data": [], "has_more": False, "after": None},
    }
    assert fetch_row(Thread, thread.pk)["title"] == "New"


def test_delete_removes_the_thread_with_its_messages_and_runs(api, session):
    thread = Thread.objects.create(conversation=session)
    finished = runs.run_launch(thread=thread, input="hello", mode=runs.Mode.WAIT).run
    kept = Thread.objects.create(conversation=session)

    deleted = answer(call(api, session.pk, "threads.delete", {"thread_id": str(thread.pk)}))

    assert deleted == {}
    assert fetch_row(Thread, thread.pk) is None
    assert fetch_rows(Message, thread=thread.pk) == []
    assert fetch_row(Run, finished.pk) is None
    assert fetch_row(Thread, kept.pk) is not None
    assert api.get(f"{SESSIONS}/{session.pk}/threads/{thread.pk}").status_code == 404
    again = call(api, session.pk, "threads.delete", {"thread_id": str(thread.pk)})
    assert answer(again, 404)["error"]["code"] == "NOT_FOUND"


def test_the_input_is_the_text_parts_and_tags_joined_after_the_quotation(api, session):
    content = [
        {"type": "input_text", "text": "Ask "},
        {"type": "input_tag", "id": "u1", "text": "@Ada", "data": {"k": 1}, "interactive": True},
        {"type": "input_text", "text": " about this"},
    ]
    params = {
        "input": {
            "content": content,
            "attachments": [],
            "quoted_text": "first line\n\nthird line",
            "inference_options": {"model": "ignored", "tool_choice": {"id": "t"}},
        }
    }

    events = frames(call(api, session.pk, "threads.create", params))

    stored = "> first line\n>\n> third line\n\nAsk @Ada about this"
    user_item = events[1]["item"]
    assert user_item["content"] == [{"type": "input_text", "text": stored}]
    assert fetch_row(Message, user_item["id"])["content"] == stored
    assert delta_text(events) == f"Echo: {stored}"


def test_other_methods_are_405(api, session):
    response = api.get(f"{SESSIONS}/{session.pk}/chatkit")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
