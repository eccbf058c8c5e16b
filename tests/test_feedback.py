"""Feedback on replies (ChatKit's items.feedback): one per message and user, the last one wins.

Only assistant messages of the request's thread take feedback; any other
id is a 404 and nothing is stored. REST message documents (and a run's
reply) show the reader's feedback, and the admin lists and filters it.
"""

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from accounts.models import User
from conversations import runs
from conversations.models import Conversation, MessageFeedback, Run, Thread
from tests.chatkit_client import answer, call
from tests.conftest import PASSWORD
from tests.db import fetch_rows

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = "/api/v1/chatkit/sessions"


@pytest.fixture
def thread(session) -> Thread:
    return Thread.objects.create(conversation=session, title="Mine")


def finished(thread: Thread, text: str) -> Run:
    return runs.run_launch(thread=thread, input=text, mode=runs.Mode.WAIT).run


def feedback(api, thread: Thread, item_ids: list, kind: str):
    params = {"thread_id": str(thread.pk), "item_ids": [str(i) for i in item_ids], "kind": kind}
    return call(api, thread.conversation_id, "items.feedback", params)


def test_feedback_is_stored_and_the_last_one_wins(api, owner, thread):
    run = finished(thread, "one")
    reply = run.output_message_id

    assert answer(feedback(api, thread, [reply], "positive")) == {}
    assert answer(feedback(api, thread, [reply], "negative")) == {}

    rows = fetch_rows(MessageFeedback, message=reply)
    assert [(row["user_id"], row["kind"], row["thread_id"]) for row in rows] == [
        (owner.pk, "negative", thread.pk)
    ]
    assert rows[0]["updated_at"] >= rows[0]["created_at"]


def test_feedback_on_several_replies_at_once(api, thread):
    replies = [finished(thread, text).output_message_id for text in ("one", "two")]

    answer(feedback(api, thread, replies, "positive"))

    assert sorted(row["message_id"] for row in fetch_rows(MessageFeedback)) == sorted(replies)


def test_ids_that_are_not_replies_of_the_thread_are_404_and_store_nothing(api, session, thread):
    run = finished(thread, "one")
    other = finished(Thread.objects.create(conversation=session), "elsewhere")

    for ids in (
        [run.input_message_id],
        [other.output_message_id],
        [run.output_message_id, run.input_message_id],
        [run.output_message_id, "not-an-id"],
    ):
        error = answer(feedback(api, thread, ids, "positive"), 404)["error"]
        assert error["code"] == "NOT_FOUND"
    assert fetch_rows(MessageFeedback) == []


def test_another_users_thread_is_404(stranger_api, thread):
    run = finished(thread, "one")

    answer(feedback(stranger_api, thread, [run.output_message_id], "positive"), 404)

    assert fetch_rows(MessageFeedback) == []


def test_one_row_per_message_and_user_is_a_database_rule(owner, thread):
    run = finished(thread, "one")
    MessageFeedback.objects.create(
        message_id=run.output_message_id, thread=thread, user=owner, kind="positive"
    )

    with pytest.raises(IntegrityError), transaction.atomic():
        MessageFeedback.objects.create(
            message_id=run.output_message_id, thread=thread, user=owner, kind="negative"
        )


def test_rest_documents_show_the_readers_feedback(api, thread):
    finished(thread, "one")
    second = finished(thread, "two")
    answer(feedback(api, thread, [second.output_message_id], "negative"))
    base = f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}"

    messages = api.get(f"{base}/messages").json()["data"]
    listed_runs = api.get(f"{base}/runs").json()["data"]
    one = api.get(f"{base}/runs/{second.pk}").json()["data"]

    assert [(m["content"], m["feedback"]) for m in messages] == [
        ("one", None),
        ("Echo: one", None),
        ("two", None),
        ("Echo: two", "negative"),
    ]
    assert [r["output_message"]["feedback"] for r in listed_runs] == ["negative", None]
    assert one["output_message"]["feedback"] == "negative"
    assert one["input_message"]["feedback"] is None


def test_deleting_the_thread_deletes_its_feedback(api, thread):
    run = finished(thread, "one")
    answer(feedback(api, thread, [run.output_message_id], "positive"))

    assert (
        answer(call(api, thread.conversation_id, "threads.delete", {"thread_id": str(thread.pk)}))
        == {}
    )

    assert fetch_rows(MessageFeedback) == []
    assert fetch_rows(Thread, pk=thread.pk) == []


@pytest.fixture
def admin_client(db, plain_static) -> Client:
    boss = User.objects.create_superuser(username="boss", password=PASSWORD, email="b@x.test")
    client = Client()
    client.force_login(boss)
    return client


def test_the_admin_lists_feedback_filtered_by_kind(admin_client, api, owner, session):
    good, bad = (Thread.objects.create(conversation=session, title=t) for t in ("good", "bad"))
    liked, disliked = finished(good, "liked"), finished(bad, "disliked")
    answer(feedback(api, good, [liked.output_message_id], "positive"))
    answer(feedback(api, bad, [disliked.output_message_id], "negative"))
    changelist = "/admin/conversations/messagefeedback/"

    everything = admin_client.get(changelist)
    negative = admin_client.get(changelist, {"kind__exact": "negative"})
    thread_page = admin_client.get(f"/admin/conversations/thread/{bad.pk}/change/")

    assert everything.status_code == negative.status_code == thread_page.status_code == 200
    assert "Echo: liked" in everything.content.decode()
    assert "Echo: disliked" in negative.content.decode()
    assert "Echo: liked" not in negative.content.decode()
    assert "negative" in thread_page.content.decode()


def test_feedback_needs_its_session_to_be_the_users(api, stranger):
    theirs = Thread.objects.create(conversation=Conversation.objects.create(user=stranger))
    run = finished(theirs, "theirs")

    params = {
        "thread_id": str(theirs.pk),
        "item_ids": [str(run.output_message_id)],
        "kind": "positive",
    }
    answer(call(api, theirs.conversation_id, "items.feedback", params), 404)

    assert fetch_rows(MessageFeedback) == []
