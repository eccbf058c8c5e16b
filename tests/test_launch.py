"""``run_launch``: the one call every surface makes to start a run, in each mode.

Each mode's events are the ones stored, in order, and the run is committed
(read back through a second connection) before the launch returns.
"""

import pytest
from django.db import IntegrityError, transaction

from conversations import runs, tasks
from conversations.errors import RunInProgress
from conversations.models import (
    Conversation,
    EventName,
    MessageRole,
    Run,
    RunEvent,
    RunStatus,
    Thread,
)
from tests.db import fetch_row, fetch_rows

pytestmark = pytest.mark.django_db(transaction=True)

START = [EventName.RUN_CREATED, EventName.MESSAGE_CREATED, EventName.RUN_IN_PROGRESS]


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def stored_events(run: Run) -> list[runs.Event]:
    return runs.run_events_after(run_id=run.pk, seq=0)


def test_wait_returns_every_event_to_the_end_already_stored(thread):
    launch = runs.run_launch(thread=thread, input="hello", mode=runs.Mode.WAIT)

    events = list(launch.events)
    assert [event.event for event in events] == [
        *START,
        EventName.MESSAGE_DELTA,
        EventName.MESSAGE_COMPLETED,
        EventName.RUN_COMPLETED,
    ]
    assert events == stored_events(launch.run)
    assert fetch_row(Run, launch.run.pk)["status"] == RunStatus.COMPLETED


def test_stream_carries_out_the_run_as_its_events_are_read(thread):
    launch = runs.run_launch(thread=thread, input="hello", mode="stream")

    assert fetch_row(Run, launch.run.pk)["status"] == RunStatus.IN_PROGRESS
    events = list(launch.events)
    assert [event.event for event in events[:3]] == START
    assert events[-1].event == EventName.RUN_COMPLETED
    assert "".join(e.data["delta"] for e in events if e.event == EventName.MESSAGE_DELTA) == (
        "Echo: hello"
    )
    assert events == stored_events(launch.run)


def test_background_queues_the_run_and_hands_it_over_on_commit(thread, monkeypatch):
    handed_over = []
    monkeypatch.setattr(tasks, "enqueue_run", lambda run: handed_over.append(run.pk))

    launch = runs.run_launch(thread=thread, input="hello", mode=runs.Mode.BACKGROUND)

    assert list(launch.events) == []
    assert handed_over == [launch.run.pk]
    assert fetch_row(Run, launch.run.pk)["status"] == RunStatus.QUEUED
    stored = [row["event"] for row in fetch_rows(RunEvent, run=launch.run.pk)]
    assert sorted(stored) == sorted([EventName.RUN_CREATED, EventName.MESSAGE_CREATED])
    message = launch.run.input_message
    assert (message.role, message.content) == (MessageRole.USER, "hello")


def test_a_launch_refused_stores_nothing(thread):
    runs.run_launch(thread=thread, input="first", mode=runs.Mode.BACKGROUND)

    with pytest.raises(RunInProgress):
        runs.run_launch(thread=thread, input="second", mode=runs.Mode.WAIT)

    assert Run.objects.filter(thread=thread).count() == 1


def test_an_event_name_outside_the_enum_is_refused_by_the_database(thread):
    run = runs.run_launch(thread=thread, input="hello", mode=runs.Mode.WAIT).run

    with pytest.raises(IntegrityError), transaction.atomic():
        RunEvent.objects.create(run=run, seq=99, last_seq=99, event="run.exploded", data={})
