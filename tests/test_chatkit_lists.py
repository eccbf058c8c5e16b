"""ChatKit's lists: threads.list and items.list (and threads.get_by_id's first page).

Keyset pages as the reference server's: ``limit`` 1..100 (default 20),
``order`` (default desc), ``after`` the last item of the previous page, and
an ``after`` that is not an item of the list is a 400. Superseded messages
are left out; a reply still being written is the newest item, with the text
stored so far. The query counts are pinned, as for the REST lists.
"""

import pytest

from conversations import runs
from conversations.models import Conversation, Message, MessageRole, Thread
from conversations.runs import store
from tests.chatkit_client import answer, call

# Nothing here streams: each test's transaction is rolled back, which is fast.
pytestmark = pytest.mark.django_db


@pytest.fixture
def session(owner) -> Conversation:
    return Conversation.objects.create(user=owner, title="Pinned")


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
