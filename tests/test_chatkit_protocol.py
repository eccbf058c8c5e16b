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
from conversations.runs import store
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


# Lists ----------------------------------------------------------------------


def threads_of(session, count: int) -> list[Thread]:
    """``count`` threads, oldest first."""
    return [Thread.objects.create(conversation=session, title=f"t{n}") for n in range(count)]


def test_threads_list_pages_newest_first_with_empty_items(api, session, stranger):
    made = threads_of(session, 5)
    Thread.objects.create(conversation=Conversation.objects.create(user=stranger))

    first = answer(call(api, session.pk, "threads.list", {"limit": 2}))
    second = answer(call(api, session.pk, "threads.list", {"limit": 2, "after": first["after"]}))
    last = answer(call(api, session.pk, "threads.list", {"limit": 2, "after": second["after"]}))

    newest_first = [str(thread.pk) for thread in reversed(made)]
    pages = [first, second, last]
    assert [thread["id"] for page in pages for thread in page["data"]] == newest_first
    assert [page["has_more"] for page in pages] == [True, True, False]
    assert first["after"] == newest_first[1]
    assert last["after"] is None
    assert all(
        thread["items"] == {"data": [], "has_more": False, "after": None}
        for page in pages
        for thread in page["data"]
    )


def test_threads_list_defaults_and_ascending_order(api, session):
    made = threads_of(session, 25)

    default = answer(call(api, session.pk, "threads.list", {}))
    ascending = answer(call(api, session.pk, "threads.list", {"order": "asc", "limit": 100}))

    assert len(default["data"]) == 20
    assert default["has_more"] is True
    assert [t["id"] for t in ascending["data"]] == [str(t.pk) for t in made]
    assert ascending["has_more"] is False


def test_an_after_that_is_not_in_the_list_is_400(api, session, stranger):
    threads_of(session, 2)
    theirs = Thread.objects.create(conversation=Conversation.objects.create(user=stranger))

    for after in (str(theirs.pk), "not-an-id"):
        response = call(api, session.pk, "threads.list", {"after": after})
        error = answer(response, 400)["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert "params.after" in error["details"]


def finished_turns(thread: Thread, count: int) -> list[Message]:
    for n in range(count):
        runs.run_launch(thread=thread, input=f"turn {n}", mode=runs.Mode.WAIT)
    return list(Message.objects.filter(thread=thread).order_by("created_at", "id"))


def test_items_list_pages_newest_first_by_default(api, session):
    thread = Thread.objects.create(conversation=session)
    messages = finished_turns(thread, 3)
    newest_first = [str(m.pk) for m in reversed(messages)]
    params = {"thread_id": str(thread.pk), "limit": 4}

    first = answer(call(api, session.pk, "items.list", params))
    second = answer(call(api, session.pk, "items.list", {**params, "after": first["after"]}))

    assert [item["id"] for item in first["data"] + second["data"]] == newest_first
    assert (first["has_more"], first["after"]) == (True, newest_first[3])
    assert (second["has_more"], second["after"]) == (False, None)
    oldest = second["data"][-1]
    assert oldest["type"] == "user_message"
    assert oldest["content"] == [{"type": "input_text", "text": "turn 0"}]


def test_items_list_ascending(api, session):
    thread = Thread.objects.create(conversation=session)
    messages = finished_turns(thread, 2)

    page = answer(
        call(api, session.pk, "items.list", {"thread_id": str(thread.pk), "order": "asc"})
    )

    assert [item["id"] for item in page["data"]] == [str(m.pk) for m in messages]


def test_items_list_shows_a_reply_being_written_with_the_text_so_far(api, session):
    thread = Thread.objects.create(conversation=session)
    [question, answer_row] = finished_turns(thread, 1)
    # A run in progress elsewhere (a background or REST run) that stored two pieces.
    run = runs.run_start(thread=thread, input="still going", provider="echo", model="echo-1")
    store.write_delta_batches([store.DeltaBatch(run.pk, str(run.reply_message_id), ["So ", "far"])])
    question_now = Message.objects.get(run=run, role=MessageRole.USER)
    reply_id = str(run.reply_message_id)
    params = {"thread_id": str(thread.pk)}

    newest = answer(call(api, session.pk, "items.list", params))
    oldest = answer(call(api, session.pk, "items.list", {**params, "order": "asc", "limit": 3}))
    rest = answer(
        call(
            api,
            session.pk,
            "items.list",
            {**params, "order": "asc", "limit": 3, "after": oldest["after"]},
        )
    )
    after_reply = answer(
        call(api, session.pk, "items.list", {**params, "limit": 1, "after": reply_id})
    )

    writing = newest["data"][0]
    assert writing == {
        "id": reply_id,
        "thread_id": str(thread.pk),
        "created_at": writing["created_at"],
        "type": "assistant_message",
        "content": [{"type": "output_text", "text": "So far", "annotations": []}],
    }
    expected = [str(question.pk), str(answer_row.pk), str(question_now.pk), reply_id]
    assert [item["id"] for item in newest["data"]] == expected[::-1]
    assert [item["id"] for item in oldest["data"]] == expected[:3]
    assert oldest["has_more"] is True
    assert [item["id"] for item in rest["data"]] == [reply_id]
    assert rest["has_more"] is False
    assert [item["id"] for item in after_reply["data"]] == [str(question_now.pk)]
    assert after_reply["has_more"] is True


def test_items_list_hides_superseded_messages(api, session):
    thread = Thread.objects.create(conversation=session)
    finished_turns(thread, 2)
    first_question = Message.objects.filter(thread=thread).order_by("created_at", "id").first()
    runs.run_launch(thread=thread, mode=runs.Mode.WAIT, retry_of=first_question)

    page = answer(
        call(api, session.pk, "items.list", {"thread_id": str(thread.pk), "order": "asc"})
    )

    visible = list(Message.objects.filter(thread=thread, superseded_by=None))
    assert len(visible) == 2
    assert [item["id"] for item in page["data"]] == [str(first_question.pk), str(visible[1].pk)]


# Query counts (the cold cost: the token's user is looked up) -----------------


@pytest.mark.parametrize("limit", [1, 20, 100])
def test_threads_list_queries_do_not_grow_with_the_page(
    api, session, cold_auth_cache, django_assert_num_queries, limit
):
    threads_of(session, 25)

    # 1. SELECT the user named by the access token
    # 2. SELECT the session, among the user's sessions
    # 3. SELECT the page of its threads
    with django_assert_num_queries(3):
        page = answer(call(api, session.pk, "threads.list", {"limit": limit}))

    assert len(page["data"]) == min(limit, 25)


def test_threads_list_after_a_cursor_adds_no_query(
    api, session, cold_auth_cache, django_assert_num_queries
):
    threads_of(session, 5)
    first = answer(call(api, session.pk, "threads.list", {"limit": 2}))

    # user, session, the page (the cursor's position a subquery)
    with django_assert_num_queries(3):
        page = answer(call(api, session.pk, "threads.list", {"after": first["after"]}))

    assert len(page["data"]) == 3


@pytest.mark.parametrize("limit", [1, 6, 100])
def test_items_list_queries_do_not_grow_with_the_page(
    api, session, cold_auth_cache, django_assert_num_queries, limit
):
    thread = Thread.objects.create(conversation=session)
    finished_turns(thread, 3)

    # 1. SELECT the user named by the access token
    # 2. SELECT the thread joined to its session, the URL's and the user's
    # 3. SELECT the thread's run in progress (none)
    # 4. SELECT the page of its messages
    with django_assert_num_queries(4):
        page = answer(
            call(api, session.pk, "items.list", {"thread_id": str(thread.pk), "limit": limit})
        )

    assert len(page["data"]) == min(limit, 6)


def test_items_list_with_a_reply_being_written_adds_its_text(
    api, session, cold_auth_cache, django_assert_num_queries
):
    thread = Thread.objects.create(conversation=session)
    finished_turns(thread, 3)
    runs.run_start(thread=thread, input="going", provider="echo", model="echo-1")

    # The four above, and 5. SELECT the pieces the run in progress stored
    with django_assert_num_queries(5):
        page = answer(call(api, session.pk, "items.list", {"thread_id": str(thread.pk)}))

    assert len(page["data"]) == 8


def test_get_by_id_queries(api, session, cold_auth_cache, django_assert_num_queries):
    thread = Thread.objects.create(conversation=session)
    finished_turns(thread, 12)

    # user, thread JOIN session, the run in progress (none), the first 20 messages
    with django_assert_num_queries(4):
        fetched = answer(call(api, session.pk, "threads.get_by_id", {"thread_id": str(thread.pk)}))

    assert len(fetched["items"]["data"]) == 20
