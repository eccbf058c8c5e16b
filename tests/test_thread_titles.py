"""A thread still holding the default title is named by its first run, whichever surface.

As a session is: from the user's words, in the run's first transaction. A
REST run names it as a ChatKit turn does; a thread with a title of its own
keeps it, and later runs rename nothing. A ChatKit turn that named its
thread says so last, with ``thread.updated``.
"""

import pytest

from conversations import runs
from conversations.models import DEFAULT_THREAD_TITLE, Conversation, Thread
from tests.chatkit_client import answer, call, frames, types, user_input
from tests.db import fetch_row

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = "/api/v1/chatkit/sessions"


@pytest.fixture
def thread(session) -> Thread:
    return Thread.objects.create(conversation=session)


def post_run(api, thread: Thread, body: dict):
    url = f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}/runs"
    return api.post(url, body, format="json")


def test_a_rest_run_names_an_untitled_thread_and_its_session(api, thread):
    assert thread.title == DEFAULT_THREAD_TITLE

    response = post_run(api, thread, {"input": "  Plan the   trip\nto Lisbon  "})

    assert response.status_code == 201
    assert fetch_row(Thread, thread.pk)["title"] == "Plan the trip to Lisbon"
    assert fetch_row(Conversation, thread.conversation_id)["title"] == "Plan the trip to Lisbon"
    listed = api.get(f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}").json()["data"]
    assert listed["title"] == "Plan the trip to Lisbon"


def test_a_background_run_names_the_thread_too(api, thread, settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.dummy.DummyBackend"}}

    response = post_run(api, thread, {"input": "Later please", "background": True})

    assert response.status_code == 202
    assert fetch_row(Thread, thread.pk)["title"] == "Later please"


def test_only_the_first_run_names_it(api, thread):
    post_run(api, thread, {"input": "first words"})
    post_run(api, thread, {"input": "second words"})

    assert fetch_row(Thread, thread.pk)["title"] == "first words"


def test_a_thread_with_its_own_title_keeps_it(api, session):
    titled = Thread.objects.create(conversation=session, title="My plans")

    post_run(api, titled, {"input": "something else"})

    assert fetch_row(Thread, titled.pk)["title"] == "My plans"


def test_a_long_first_message_gives_a_short_title(thread):
    words = " ".join(["word"] * 40)

    runs.run_launch(thread=thread, input=words, mode=runs.Mode.WAIT)

    title = fetch_row(Thread, thread.pk)["title"]
    assert title.endswith("…")
    assert len(title) <= 61
    assert words.startswith(title[:-1])


def test_a_chatkit_turn_that_names_the_thread_ends_with_thread_updated(api, session, thread):
    params = {"thread_id": str(thread.pk), "input": user_input("Name me please")}

    events = frames(call(api, session.pk, "threads.add_user_message", params))

    assert types(events)[-1] == "thread.updated"
    named = events[-1]["thread"]
    assert (named["id"], named["title"]) == (str(thread.pk), "Name me please")
    assert named["items"] == {"data": [], "has_more": False, "after": None}
    assert fetch_row(Thread, thread.pk)["title"] == "Name me please"


def test_a_chatkit_turn_on_a_named_thread_sends_no_thread_updated(api, session):
    titled = Thread.objects.create(conversation=session, title="Named")
    params = {"thread_id": str(titled.pk), "input": user_input("hello")}

    events = frames(call(api, session.pk, "threads.add_user_message", params))

    assert "thread.updated" not in types(events)
    assert types(events)[-1] == "thread.item.done"


def test_threads_update_renames_and_a_run_then_keeps_the_name(api, session, thread):
    renamed = answer(
        call(api, session.pk, "threads.update", {"thread_id": str(thread.pk), "title": " Chosen "})
    )

    assert renamed["title"] == "Chosen"
    assert renamed["items"]["data"] == []
    post_run(api, thread, {"input": "would have named it"})
    assert fetch_row(Thread, thread.pk)["title"] == "Chosen"
