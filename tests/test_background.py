"""Background runs: 202 queued, handed to the task queue on commit, carried out by a worker.

The worker is the real ``manage.py worker`` in a subprocess, on the test
database and the same task queue this process enqueues into.
"""

import threading

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from huey.contrib.djhuey import HUEY

from conversations import runs
from conversations.models import Conversation, Message, Run, RunEvent, Thread
from conversations.tasks import enqueue_run, execute_run
from tests.db import fetch_row, fetch_rows
from tests.sse import (
    SSEStream,
    bearer,
    delta_text,
    runs_path,
    streamed_events,
    worker_process,
)

ACTIVE = ("queued", "in_progress")


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def start_queued(thread, text: str = "in the background", on_commit=None) -> Run:
    return runs.run_start(
        thread=thread, input=text, provider="echo", model="echo-1", queued=True, on_commit=on_commit
    )


def wait_for_end(run_id, worker, timeout: float = 30.0) -> dict:
    def ended():
        row = fetch_row(Run, run_id)
        return row if row["status"] not in ACTIVE else None

    return worker.wait_for(ended, timeout=timeout, what=f"run {run_id} to end")


@pytest.mark.django_db(transaction=True)
def test_background_run_is_queued_then_carried_out_by_a_worker(live_server, owner, api, thread):
    text = " ".join(f"later{i}" for i in range(12))
    response = api.post(runs_path(thread), {"input": text, "background": True}, format="json")

    assert response.status_code == 202, response.json()
    queued = response.json()["data"]
    assert queued["status"] == "queued"
    assert queued["output_message"] is None
    assert queued["started_at"] is None
    assert queued["completed_at"] is None
    assert fetch_row(Run, queued["id"])["status"] == "queued"

    # A client follows the run's events live while the worker carries it out.
    events_url = f"{runs_path(thread)}/{queued['id']}/events"
    with SSEStream(live_server.url + events_url, headers=bearer(owner)) as follower:
        follower.read_until(lambda event: event.event == "message.created")
        with worker_process(ECHO_DELAY_MS="30") as worker:
            followed = follower.read_all()
            row = wait_for_end(queued["id"], worker)
            log = worker.output()

    assert "Traceback" not in log, log
    assert row["status"] == "completed", row
    assert row["error_code"] == ""
    reply = fetch_row(Message, row["output_message_id"])
    assert reply["content"] == f"Echo: {text}"
    assert reply["status"] == "completed"
    assert reply["role"] == "assistant"
    assert [m["id"] for m in fetch_rows(Message, run=queued["id"], role="assistant")] == [
        reply["id"]
    ]
    done = api.get(f"{runs_path(thread)}/{queued['id']}").json()["data"]
    assert done["status"] == "completed"
    assert done["started_at"] is not None
    assert done["output_message"]["content"] == reply["content"]
    for events in (followed, streamed_events(api.get(events_url))):
        names = [event.event for event in events]
        assert names[:3] == ["run.created", "message.created", "run.in_progress"]
        assert names[-3:] == ["message.completed", "run.completed", "done"]
        assert set(names[3:-3]) == {"message.delta"}
        assert [event.id for event in events[:-1]] == list(range(1, len(events)))
        assert delta_text(events) == reply["content"]
        assert events[-2].data == done
    # The thread takes the next run.
    again = api.post(runs_path(thread), {"input": "next"}, format="json")
    assert again.status_code == 201


@pytest.mark.django_db(transaction=True)
def test_hand_over_happens_after_commit_with_the_run_visible(thread):
    seen = []

    def hand_over(run: Run) -> None:
        # What another process (the worker) would see at this moment.
        seen.append(
            {
                "in_atomic_block": connection.in_atomic_block,
                "run": fetch_row(Run, run.pk),
                "events": len(fetch_rows(RunEvent, run=run.pk)),
                "input": fetch_row(Message, run.input_message_id),
            }
        )

    run = start_queued(thread, on_commit=hand_over)

    [state] = seen
    assert state["in_atomic_block"] is False
    assert state["run"]["status"] == "queued"
    assert state["events"] == 2
    assert state["input"]["content"] == "in the background"
    assert run.status == "queued"


@pytest.mark.django_db(transaction=True)
def test_run_start_refuses_to_run_inside_a_callers_transaction(thread):
    # run_start commits on its own (a durable block): inside somebody else's
    # transaction the worker could be handed a run that is not committed yet,
    # or is rolled back, so it refuses before storing or handing over anything.
    called = []

    with pytest.raises(RuntimeError), transaction.atomic():
        start_queued(thread, on_commit=called.append)

    assert called == []
    assert not fetch_rows(Run)
    assert not fetch_rows(Message)


@pytest.mark.django_db
def test_on_commit_callback_waits_for_the_commit(thread, django_capture_on_commit_callbacks):
    called = []

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = start_queued(thread, on_commit=called.append)
        assert called == []

    assert called == []
    assert len(callbacks) == 1
    callbacks[0]()
    assert called == [run]


@pytest.mark.django_db
def test_background_post_enqueues_only_on_commit(api, thread, django_capture_on_commit_callbacks):
    before = HUEY.pending_count()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post(
            runs_path(thread), {"input": "later", "background": True}, format="json"
        )
        assert response.status_code == 202
        assert HUEY.pending_count() == before

    assert len(callbacks) == 1
    assert HUEY.pending_count() == before + 1


@pytest.mark.django_db
def test_enqueue_run_puts_the_task_on_the_queue(thread):
    run = start_queued(thread)
    before = HUEY.pending_count()

    enqueue_run(run)

    assert HUEY.pending_count() == before + 1


@pytest.mark.django_db
def test_redelivered_task_carries_the_run_out_once(thread):
    run = start_queued(thread, "deliver me twice")

    execute_run.call(run_id=str(run.pk))
    execute_run.call(run_id=str(run.pk))

    run.refresh_from_db()
    assert run.status == "completed"
    [reply] = Message.objects.filter(run=run, role="assistant")
    assert reply.content == "Echo: deliver me twice"
    names = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("event", flat=True))
    assert names.count("run.in_progress") == 1
    assert names.count("run.completed") == 1
    assert names.count("message.completed") == 1
    assert runs.run_claim(run_id=run.pk) is None


@pytest.mark.django_db
def test_a_misconfigured_provider_leaves_the_run_queued_not_claimed(thread, settings):
    run = start_queued(thread, "no provider")
    settings.LLM_PROVIDER = "no-such-provider"

    with pytest.raises(ImproperlyConfigured):
        execute_run.call(run_id=str(run.pk))

    run.refresh_from_db()
    assert run.status == "queued"
    assert run.started_at is None


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_at_once_carry_the_run_out_once(thread, settings):
    settings.ECHO_DELAY_MS = 5
    run = start_queued(thread, "two workers got the same task")
    barrier = threading.Barrier(2)
    errors = []

    def deliver() -> None:
        try:
            barrier.wait(timeout=10)
            execute_run.call(run_id=str(run.pk))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=deliver) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    assert not any(worker.is_alive() for worker in workers)
    assert errors == []
    row = fetch_row(Run, run.pk)
    assert row["status"] == "completed"
    [reply] = fetch_rows(Message, run=run.pk, role="assistant")
    assert reply["content"] == "Echo: two workers got the same task"
    assert [e["event"] for e in fetch_rows(RunEvent, run=run.pk)].count("run.in_progress") == 1
