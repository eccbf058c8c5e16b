"""Retry: a new reply to an earlier user message; what followed it is superseded, not deleted.

Superseded messages and runs stay in the database, leave the provider's
context and the default REST lists (``include_superseded=true`` shows them).
"""

import pytest

from conversations import runs
from conversations.errors import ActiveRunLimitReached, ObjectNotFound, RunInProgress
from conversations.models import (
    Conversation,
    EventName,
    Message,
    MessageRole,
    Run,
    RunStatus,
    Thread,
)
from tests.db import fetch_row, fetch_rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def turn(thread: Thread, text: str) -> Run:
    return runs.run_launch(thread=thread, input=text, mode=runs.Mode.WAIT).run


def user_message(run: Run) -> Message:
    return Message.objects.get(run=run, role=MessageRole.USER)


def path(thread: Thread, what: str) -> str:
    return f"/api/v1/chatkit/sessions/{thread.conversation_id}/threads/{thread.pk}/{what}"


@pytest.fixture
def retried(thread) -> tuple[Run, Run, Run, Run]:
    """Three turns, then a retry of the second: (first, second, third, retry)."""
    first, second, third = turn(thread, "one"), turn(thread, "two"), turn(thread, "three")
    retry = runs.run_launch(thread=thread, mode=runs.Mode.WAIT, retry_of=user_message(second)).run
    return first, second, third, retry


def test_retry_supersedes_what_followed_the_message_and_deletes_nothing(retried):
    first, second, third, retry = retried

    assert fetch_row(Run, retry.pk)["status"] == RunStatus.COMPLETED
    assert fetch_row(Run, retry.pk)["input_message_id"] == user_message(second).pk
    superseded_by = {row["id"]: row["superseded_by_id"] for row in fetch_rows(Run)}
    assert superseded_by == {
        first.pk: None,
        second.pk: retry.pk,
        third.pk: retry.pk,
        retry.pk: None,
    }
    messages = sorted(fetch_rows(Message), key=lambda row: (row["created_at"], row["id"]))
    assert [(row["content"], row["superseded_by_id"]) for row in messages] == [
        ("one", None),
        ("Echo: one", None),
        ("two", None),
        ("Echo: two", retry.pk),
        ("three", retry.pk),
        ("Echo: three", retry.pk),
        ("Echo: two", None),
    ]


def test_superseded_messages_leave_the_providers_context(thread):
    first, second = turn(thread, "one"), turn(thread, "two")

    retry = runs.run_retry(message=user_message(first), provider="echo", model="echo-1")

    assert [(m.role, m.content) for m in runs.run_context(run=retry)] == [("user", "one")]
    assert fetch_row(Run, second.pk)["superseded_by_id"] == retry.pk


def test_a_streamed_retry_starts_at_the_run_not_the_user_message(thread):
    first = turn(thread, "one")

    launch = runs.run_launch(thread=thread, mode="stream", retry_of=user_message(first))

    names = [event.event for event in launch.events]
    assert names[:2] == [EventName.RUN_CREATED, EventName.RUN_IN_PROGRESS]
    assert EventName.MESSAGE_CREATED not in names
    assert names[-1] == EventName.RUN_COMPLETED


def test_a_superseded_message_cannot_be_retried(retried):
    _, _, third, _ = retried

    with pytest.raises(ObjectNotFound):
        runs.run_retry(message=user_message(third), provider="echo", model="echo-1")


def test_a_retry_while_a_run_is_active_is_refused(thread):
    first = turn(thread, "one")
    runs.run_launch(thread=thread, input="two", mode=runs.Mode.BACKGROUND)

    with pytest.raises(RunInProgress):
        runs.run_retry(message=user_message(first), provider="echo", model="echo-1")

    assert Run.objects.filter(thread=thread).count() == 2


def test_lists_hide_superseded_rows_unless_asked(api, retried, thread):
    first, _, third, retry = retried

    messages = api.get(path(thread, "messages")).json()["data"]
    assert [(m["content"], m["superseded"]) for m in messages] == [
        ("one", False),
        ("Echo: one", False),
        ("two", False),
        ("Echo: two", False),
    ]
    runs_listed = api.get(path(thread, "runs")).json()["data"]
    assert [r["id"] for r in runs_listed] == [str(retry.pk), str(first.pk)]

    everything = api.get(path(thread, "messages"), {"include_superseded": "true"}).json()["data"]
    assert [m["superseded"] for m in everything] == [False] * 3 + [True] * 3 + [False]
    all_runs = api.get(path(thread, "runs"), {"include_superseded": "true"}).json()["data"]
    assert len(all_runs) == 4
    # A superseded run stays reachable by its id.
    assert api.get(f"{path(thread, 'runs')}/{third.pk}").status_code == 200


def test_include_superseded_must_be_true_or_false(api, thread):
    response = api.get(path(thread, "messages"), {"include_superseded": "yes"})

    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == ["include_superseded"]


def test_a_retry_counts_against_the_users_active_runs(owner, thread, settings):
    settings.MAX_ACTIVE_RUNS_PER_USER = 1
    first = turn(thread, "one")
    elsewhere = Thread.objects.create(conversation=thread.conversation)
    runs.run_launch(thread=elsewhere, input="busy", mode=runs.Mode.BACKGROUND)

    with pytest.raises(ActiveRunLimitReached):
        runs.run_retry(message=user_message(first), provider="echo", model="echo-1")

    assert fetch_row(Run, first.pk)["superseded_by_id"] is None
