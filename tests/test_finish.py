"""The executor's last step: the reply and the final state, stored once, by whoever ends the run.

On PostgreSQL the end is one statement that holds only if the run is still in
progress as the executor left it; otherwise the run is locked and looked at.
"""

import pytest
from django.db import connection

from conversations import runs
from conversations.models import Conversation, Message, Run, RunEvent, RunStatus, Thread
from tests.db import fetch_row, fetch_rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run(owner) -> Run:
    thread = Thread.objects.create(conversation=Conversation.objects.create(user=owner))
    return runs.run_start(thread=thread, input="hello", provider="echo", model="echo-1")


def committed_events(run_id) -> list[tuple[int, int, str]]:
    rows = sorted(fetch_rows(RunEvent, run=run_id), key=lambda row: row["seq"])
    return [(row["seq"], row["last_seq"], row["event"]) for row in rows]


def test_end_stores_reply_events_and_state_together(run):
    started_seq = run.last_event_seq

    events = runs.run_finish(
        run=run, pending=["Echo: ", "hello"], status="completed", text="Echo: hello"
    )

    assert [event.event for event in events] == [
        "message.delta",
        "message.delta",
        "message.completed",
        "run.completed",
    ]
    row = fetch_row(Run, run.pk)
    assert row["status"] == RunStatus.COMPLETED
    assert row["last_event_seq"] == started_seq + 4
    assert row["output_message_id"] == run.reply_message_id
    reply = fetch_row(Message, run.reply_message_id)
    assert (reply["content"], reply["status"], reply["role"]) == (
        "Echo: hello",
        "completed",
        "assistant",
    )
    assert committed_events(run.pk)[-3:] == [
        (started_seq + 1, started_seq + 2, "message.delta"),
        (started_seq + 3, started_seq + 3, "message.completed"),
        (started_seq + 4, started_seq + 4, "run.completed"),
    ]


def test_a_run_cancelled_first_keeps_the_cancel_and_gets_no_reply(run):
    runs.run_cancel(run_id=run.pk)
    cancelled = committed_events(run.pk)

    events = runs.run_finish(run=run, pending=["late"], status="completed", text="late reply")

    assert events is None
    assert fetch_row(Run, run.pk)["status"] == RunStatus.CANCELLED
    assert fetch_row(Message, run.reply_message_id) is None
    assert committed_events(run.pk) == cancelled
    # The executor's own view is as it left it, so it can read what the
    # canceller stored after its last batch.
    after = runs.run_events_after(run_id=run.pk, seq=run.last_event_seq)
    assert [event.event for event in after] == ["run.cancelled"]


def test_events_stored_meanwhile_make_it_look_under_the_lock_and_end_after_them(run):
    # Not something the code does while a run is in progress; the guard must
    # still hold rather than store two events with one number.
    stored_seq = run.last_event_seq
    Run.objects.filter(pk=run.pk).update(last_event_seq=stored_seq + 5)

    events = runs.run_finish(run=run, pending=[], status="completed", text="Echo: hello")

    assert [event.seq for event in events] == [stored_seq + 6, stored_seq + 7]
    row = fetch_row(Run, run.pk)
    assert (row["status"], row["last_event_seq"]) == (RunStatus.COMPLETED, stored_seq + 7)
    assert fetch_row(Message, run.reply_message_id)["content"] == "Echo: hello"


def test_the_end_is_one_statement_on_postgresql(run, django_assert_num_queries):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite locks the run and writes statement by statement")
    with django_assert_num_queries(1):
        runs.run_finish(run=run, pending=["x"], status="completed", text="x")
    assert fetch_row(Run, run.pk)["status"] == RunStatus.COMPLETED
