"""Claiming a queued run for a worker: once, by one delivery, committed before it runs."""

import threading

import pytest
from django.db import connection

from conversations import runs
from conversations.models import Conversation, Run, RunEvent, RunStatus, Thread
from conversations.runs import store
from tests.db import fetch_row, fetch_rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queued(owner) -> Run:
    thread = Thread.objects.create(conversation=Conversation.objects.create(user=owner))
    return runs.run_start(
        thread=thread, input="hello", provider="echo", model="echo-1", queued=True
    )


def in_progress_events(run_id) -> list[dict]:
    return [row for row in fetch_rows(RunEvent, run=run_id) if row["event"] == "run.in_progress"]


def test_claim_commits_the_run_in_progress_with_its_event(queued, django_assert_num_queries):
    claimed = runs.run_claim(run_id=queued.pk)

    assert claimed.status == RunStatus.IN_PROGRESS
    row = fetch_row(Run, queued.pk)
    assert row["status"] == RunStatus.IN_PROGRESS
    assert row["started_at"] is not None
    assert row["last_event_seq"] == queued.last_event_seq + 1
    [event] = in_progress_events(queued.pk)
    assert event["seq"] == queued.last_event_seq + 1
    assert event["data"]["status"] == "in_progress"
    assert event["data"]["input_message"]["content"] == "hello"
    # What the executor reads next is loaded already.
    with django_assert_num_queries(0):
        assert claimed.thread.pk == queued.thread_id
        assert claimed.input_message.content == "hello"


def test_a_second_delivery_gets_nothing(queued):
    assert runs.run_claim(run_id=queued.pk) is not None

    assert runs.run_claim(run_id=queued.pk) is None
    assert len(in_progress_events(queued.pk)) == 1


def test_deliveries_at_once_claim_it_once(queued):
    results = []
    barrier = threading.Barrier(4)

    def deliver():
        barrier.wait()
        try:
            results.append(runs.run_claim(run_id=queued.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(result is not None for result in results) == 1
    assert len(in_progress_events(queued.pk)) == 1
    assert fetch_row(Run, queued.pk)["last_event_seq"] == queued.last_event_seq + 1


def meanwhile(monkeypatch, change) -> None:
    """Run ``change(run_id)`` on another connection between the claim's read and its write.

    Once: the claim may then lock the run and prepare its claim again.
    """
    if connection.vendor != "postgresql":
        pytest.skip("SQLite claims under its write lock: nothing comes between")
    move = store.move_if_unchanged
    changes = [change]

    def change_first(run, *args, **kwargs):
        def on_another_connection():
            try:
                changes.pop()(run.pk)
            finally:
                connection.close()

        if changes:
            other = threading.Thread(target=on_another_connection)
            other.start()
            other.join()
        return move(run, *args, **kwargs)

    monkeypatch.setattr(store, "move_if_unchanged", change_first)


def test_a_run_cancelled_between_read_and_claim_stays_cancelled(queued, monkeypatch):
    meanwhile(monkeypatch, lambda run_id: runs.run_cancel(run_id=run_id))

    assert runs.run_claim(run_id=queued.pk) is None
    assert fetch_row(Run, queued.pk)["status"] == RunStatus.CANCELLED
    assert in_progress_events(queued.pk) == []


def test_a_queued_run_whose_events_moved_meanwhile_is_claimed_after_them(queued, monkeypatch):
    # Not something the code does to a queued run; the statement's guard must
    # hold all the same, and the run is then locked and looked at.
    moved = queued.last_event_seq + 3
    meanwhile(
        monkeypatch, lambda run_id: Run.objects.filter(pk=run_id).update(last_event_seq=moved)
    )

    assert runs.run_claim(run_id=queued.pk) is not None
    assert [event["seq"] for event in in_progress_events(queued.pk)] == [moved + 1]
    assert fetch_row(Run, queued.pk)["last_event_seq"] == moved + 1


def test_a_cancelled_run_is_not_claimed(queued):
    runs.run_cancel(run_id=queued.pk)

    assert runs.run_claim(run_id=queued.pk) is None
    assert in_progress_events(queued.pk) == []
    assert fetch_row(Run, queued.pk)["status"] == RunStatus.CANCELLED
