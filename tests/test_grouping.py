"""Calls carried out together: ``Grouped``, and the stream batches it stores.

Many streams store small batches of pieces; one thread per process stores
whatever batches are ready in one statement. Each caller still gets its own
result (its run's sequence numbers, or None for a run that was ended), and a
batch the database refuses fails alone.
"""

import threading
import time
from types import SimpleNamespace

import pytest
from django.db import DataError, connection
from django.utils import timezone

from conversations import runs
from conversations.grouping import Grouped
from conversations.models import Conversation, Run, RunEvent, RunStatus, Thread
from conversations.providers.echo import EchoProvider
from conversations.runs import execute, store
from tests.db import fetch_row, fetch_rows


def call_at_once(grouped: Grouped, items: list) -> list:
    """Call ``grouped`` with every item from a thread of its own; results (or exceptions)."""
    results: list = [None] * len(items)

    def call(index: int) -> None:
        try:
            results[index] = grouped(items[index])
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class Recorder:
    """A ``carry_out`` that records its groups; the first group waits until released."""

    def __init__(self, result=lambda item: item * 10):
        self.groups: list[list] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.result = result

    def __call__(self, items: list) -> list:
        if not self.groups:
            self.entered.set()
            self.release.wait(10)
        self.groups.append(list(items))
        return [self.result(item) for item in items]


def test_calls_waiting_meanwhile_are_carried_out_together():
    recorder = Recorder()
    grouped = Grouped("test", recorder)
    first = threading.Thread(target=grouped, args=(1,))
    first.start()
    assert recorder.entered.wait(10)
    # The first call is being carried out alone; these pile up behind it.
    results: list = []
    others = threading.Thread(target=lambda: results.extend(call_at_once(grouped, [2, 3, 4, 5])))
    others.start()
    while len(grouped._waiting) < 4:
        time.sleep(0.001)
    recorder.release.set()
    first.join()
    others.join()

    assert sorted(results) == [20, 30, 40, 50]
    assert len(recorder.groups) == 2
    assert recorder.groups[0] == [1]
    assert sorted(recorder.groups[1]) == [2, 3, 4, 5]


def test_each_caller_gets_its_own_result_or_exception():
    def result(item):
        return ValueError(f"bad {item}") if item % 2 else item

    grouped = Grouped("test", Recorder(result))
    grouped._carry_out.release.set()

    results = call_at_once(grouped, list(range(8)))

    assert [r for r in results if not isinstance(r, Exception)] == [0, 2, 4, 6]
    assert [str(r) for r in results if isinstance(r, Exception)] == [
        "bad 1",
        "bad 3",
        "bad 5",
        "bad 7",
    ]


def test_a_failed_group_fails_its_callers_and_the_next_call_is_served():
    calls = []
    let_go = []

    def carry_out(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return [f"stored {item}" for item in items]

    grouped = Grouped("test", carry_out, idle=lambda: let_go.append(len(calls)))

    with pytest.raises(RuntimeError, match="database went away"):
        grouped("a")
    assert grouped("b") == "stored b"
    # It let go before the first group, after the failure, and once idle again.
    assert let_go[:2] == [0, 1]


def test_a_wrong_number_of_results_is_an_error_not_a_hang():
    grouped = Grouped("test", lambda items: [])

    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        grouped("x")


def test_failing_to_let_go_is_logged_and_serving_goes_on(caplog):
    def idle():
        raise OSError("pool closed")

    grouped = Grouped("test-idle", lambda items: items, idle=idle)

    assert grouped("x") == "x"
    assert grouped("y") == "y"
    assert "test-idle could not let go of its resources" in caplog.text


# Stream batches -------------------------------------------------------------


def start_runs(owner, count: int) -> list[Run]:
    session = Conversation.objects.create(user=owner)
    threads = [Thread.objects.create(conversation=session) for _ in range(count)]
    return [
        runs.run_start(thread=thread, input="hello", provider="echo", model="echo-1")
        for thread in threads
    ]


def batch(run: Run, *pieces: str) -> store.DeltaBatch:
    return store.DeltaBatch(run.pk, str(run.reply_message_id), list(pieces))


def stored_pieces(run: Run) -> list[tuple[int, int, list[str]]]:
    rows = sorted(fetch_rows(RunEvent, run=run.pk, event="message.delta"), key=lambda r: r["seq"])
    return [(row["seq"], row["last_seq"], row["data"]["deltas"]) for row in rows]


@pytest.mark.django_db(transaction=True)
def test_batches_of_many_runs_stored_at_once_are_committed_each_in_its_place(owner, settings):
    # Twelve runs of one user at once: more than the per-user cap allows.
    settings.MAX_ACTIVE_RUNS_PER_USER = 12
    started = start_runs(owner, 12)
    before = timezone.now()
    first_seq = {run.pk: run.last_event_seq + 1 for run in started}

    results = call_at_once(execute.delta_writer, [batch(run, "a", "b", "c") for run in started])
    results += call_at_once(execute.delta_writer, [batch(run, "d") for run in started])

    for index, run in enumerate(started):
        seq = first_seq[run.pk]
        assert results[index] == seq + 2
        assert results[len(started) + index] == seq + 3
        assert stored_pieces(run) == [(seq, seq + 2, ["a", "b", "c"]), (seq + 3, seq + 3, ["d"])]
        row = fetch_row(Run, run.pk)
        assert row["last_event_seq"] == seq + 3
        assert row["heartbeat_at"] >= before


@pytest.mark.django_db(transaction=True)
def test_a_run_ended_meanwhile_gets_none_and_nothing_is_stored(owner):
    ended, going_on = start_runs(owner, 2)
    runs.run_cancel(run_id=ended.pk)
    last_seq = fetch_row(Run, ended.pk)["last_event_seq"]

    results = execute.write_delta_group([batch(ended, "late"), batch(going_on, "on time")])

    assert results == [None, going_on.last_event_seq + 1]
    assert stored_pieces(ended) == []
    assert fetch_row(Run, ended.pk)["last_event_seq"] == last_seq
    assert fetch_row(Run, ended.pk)["status"] == RunStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_a_batch_the_database_refuses_fails_alone(owner):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores NUL inside JSON text; PostgreSQL's jsonb refuses it")
    first, refused, last = start_runs(owner, 3)

    results = execute.write_delta_group(
        [batch(first, "fine"), batch(refused, "bad \x00 piece"), batch(last, "fine too")]
    )

    assert results[0] == first.last_event_seq + 1
    assert isinstance(results[1], DataError)
    assert results[2] == last.last_event_seq + 1
    assert [pieces for _, _, pieces in stored_pieces(first)] == [["fine"]]
    assert stored_pieces(refused) == []
    assert fetch_row(Run, refused.pk)["last_event_seq"] == refused.last_event_seq
    assert [pieces for _, _, pieces in stored_pieces(last)] == [["fine too"]]


def test_streams_flush_on_one_clock():
    """Batches are cut when a tick of a shared clock begins, so streams flush together."""
    assert execute.flush_due(0.0, 1000.0, 0.2)
    assert not execute.flush_due(1.01, 1.19, 0.2)
    assert execute.flush_due(1.19, 1.21, 0.2)
    assert execute.flush_due(1.5, 1.5, 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("clock", [0.0, 0.5, 599.9, 1234.5])
def test_a_streams_first_piece_is_stored_at_once_whatever_the_clock_reads(
    owner, settings, monkeypatch, clock
):
    # The flush clock stands still at ``clock``; below 600 it is inside its
    # first tick, as on a host that started less than a tick ago. The first
    # piece is stored (and sent) at once all the same, the rest with the end.
    settings.STREAM_FLUSH_MS = 600_000
    monkeypatch.setattr(execute, "time", SimpleNamespace(monotonic=lambda: clock))
    (run,) = start_runs(owner, 1)

    events = list(runs.run_execute(run=run, provider=EchoProvider(), stream=True))

    assert events[-1].event == "run.completed"
    assert [pieces for _, _, pieces in stored_pieces(run)] == [["Echo: "], ["hello"]]
