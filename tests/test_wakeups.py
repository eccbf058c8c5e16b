"""Push, not polling: followers of a run wake on a notice stored with its events.

On PostgreSQL every write that stores a run's events sends a notice on
commit; one listener per process wakes the streams that follow the run.
Here polling is made too slow to explain anything (SSE_POLL_MS a minute,
the safety round a minute, no pings), and a client read that waits more
than PROMPT seconds fails, so a follower that gets a piece, a cancel or a
deletion got it from a notice. A piece stored with no
notice at all (a lost one) still arrives, from the safety round: latency,
not data. An idle follower makes no query at all.
"""

import threading
import uuid

import pytest
from django.db import connection
from django.db.models import F

from chatkit.streaming import follow_run_stream
from conversations import runs
from conversations.models import Conversation, EventName, Run, RunEvent, Thread
from conversations.runs.wakeups import listening
from tests.carriers import GatedProvider, carried
from tests.conftest import client_for
from tests.openai_server import Reply
from tests.sse import SSEStream, bearer, runs_path, wait_until

pytest_plugins = ["tests.conftest_openai"]

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="notices are PostgreSQL's LISTEN/NOTIFY; on SQLite followers poll",
    ),
]

# Well within what polling would take here (a minute).
PROMPT = 10.0


@pytest.fixture(autouse=True)
def _polling_too_slow_to_matter(settings):
    settings.SSE_POLL_MS = 60_000
    settings.SSE_SAFETY_POLL_SECONDS = 60.0
    settings.STREAM_FLUSH_MS = 0
    # No pings either: a stream silent for PROMPT seconds fails its read.
    settings.SSE_PING_SECONDS = 60


@pytest.fixture
def listener():
    """This process's listener, connected (the first watch starts it)."""
    watch = runs.run_watch(run_id=uuid.uuid4())
    try:
        wait_until(listening, timeout=PROMPT, what="the listener to connect")
    finally:
        watch.close()


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def started(thread: Thread) -> Run:
    return runs.run_start(thread=thread, input="hello", provider="gated", model="gated-1")


def follow(live_server, owner, thread, run_id) -> SSEStream:
    url = f"{live_server.url}{runs_path(thread)}/{run_id}/events"
    stream = SSEStream(url, headers=bearer(owner), timeout=PROMPT)
    assert stream.status == 200
    stream.read_until(lambda event: event.event == "run.in_progress")
    wait_until(listening, timeout=PROMPT, what="the listener to connect")
    return stream


def test_a_follower_gets_each_piece_on_its_notice(live_server, owner, thread):
    run = started(thread)
    provider = GatedProvider(["Hello ", "there"])
    with carried(run, provider), follow(live_server, owner, thread, run.pk) as follower:
        provider.release()
        first = follower.read_until(lambda e: e.event == "message.delta", deadline=PROMPT)
        provider.release()
        second = follower.read_until(lambda e: e.event == "message.delta", deadline=PROMPT)
        events = follower.read_all(deadline=PROMPT)

    assert [first.data["delta"], second.data["delta"]] == ["Hello ", "there"]
    assert [event.event for event in events][-3:] == ["message.completed", "run.completed", "done"]


def test_a_piece_stored_without_a_notice_comes_with_the_safety_round(
    live_server, owner, thread, settings
):
    settings.SSE_SAFETY_POLL_SECONDS = 0.5
    run = started(thread)
    with follow(live_server, owner, thread, run.pk) as follower:
        # Stored as a writer would, but the notice is lost.
        seq = run.last_event_seq + 1
        data = {"message_id": str(run.reply_message_id), "deltas": ["unannounced"]}
        RunEvent.objects.create(
            run=run, seq=seq, last_seq=seq, event=EventName.MESSAGE_DELTA, data=data
        )
        Run.objects.filter(pk=run.pk).update(last_event_seq=F("last_event_seq") + 1)
        delta = follower.read_until(lambda e: e.event == "message.delta", deadline=PROMPT)
        runs.run_cancel(run_id=run.pk)
        events = follower.read_all(deadline=PROMPT)

    assert (delta.id, delta.data["delta"]) == (seq, "unannounced")
    assert [event.event for event in events][-3:] == ["message.completed", "run.cancelled", "done"]


def test_a_live_stream_hears_a_cancel_while_its_provider_is_silent(
    live_server, owner, thread, openai_settings, listener, monkeypatch, settings
):
    # Without the notice it would look only after a minute of silence, and
    # the provider (gated) would not give up before.
    monkeypatch.setattr("chatkit.streaming.IDLE_CHECK_SECONDS", 60.0)
    settings.LLM_TIMEOUT_SECONDS = 60.0
    gate = threading.Event()
    openai_settings.default = Reply(text="never sent", gate=gate)
    try:
        with SSEStream(
            live_server.url + runs_path(thread),
            method="POST",
            headers=bearer(owner),
            body={"input": "silence", "stream": True},
            timeout=PROMPT,
        ) as stream:
            assert stream.status == 200
            created = stream.read_until(lambda event: event.event == "run.in_progress")
            assert openai_settings.wait_for_requests(1, timeout=PROMPT)
            cancelled = client_for(owner).post(f"{runs_path(thread)}/{created.data['id']}/cancel")
            assert cancelled.status_code == 200
            events = stream.read_all(deadline=PROMPT)
    finally:
        gate.set()

    assert [event.event for event in events][-2:] == ["run.cancelled", "done"]


@pytest.mark.parametrize("parent", ["session", "thread"])
def test_a_follower_hears_of_a_deletion_at_once(live_server, owner, thread, parent):
    run = started(thread)
    provider = GatedProvider(["Hello ", "there"])
    with carried(run, provider), follow(live_server, owner, thread, run.pk) as follower:
        provider.release()
        follower.read_until(lambda e: e.event == "message.delta", deadline=PROMPT)
        url = f"/api/v1/chatkit/sessions/{thread.conversation_id}"
        if parent == "thread":
            url += f"/threads/{thread.pk}"
        assert client_for(owner).delete(url).status_code == 204
        events = follower.read_all(deadline=PROMPT)

    assert [event.event for event in events][-3:] == ["message.completed", "run.cancelled", "done"]
    assert events[-3].data["content"] == "Hello "


def test_an_idle_follower_makes_no_query(thread, settings, listener):
    settings.SSE_POLL_MS = 20
    settings.SSE_PING_SECONDS = 60
    run = started(thread)
    queries: list[str] = []
    chunks: list[bytes] = []
    read_start = threading.Event()

    def count(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    def follow_in_a_thread() -> None:
        try:
            with connection.execute_wrapper(count):
                for chunk in follow_run_stream(run=run, after=0):
                    chunks.append(chunk)
                    if b"run.in_progress" in chunk:
                        read_start.set()
        finally:
            connection.close()

    # A daemon: should it never hear the cancel, it does not hold up the run.
    follower = threading.Thread(target=follow_in_a_thread, daemon=True)
    follower.start()
    try:
        assert read_start.wait(PROMPT)
        # One read gave the start events; then the follower waits for news.
        settled = len(queries)
        # Fifty poll intervals: polling, it would have read some fifty times.
        threading.Event().wait(50 * settings.SSE_POLL_MS / 1000)
        idle = len(queries) - settled
    finally:
        runs.run_cancel(run_id=run.pk)
    follower.join(timeout=PROMPT)

    assert idle == 0, queries[settled:]
    # It heard the cancel.
    assert not follower.is_alive()
    assert b"run.cancelled" in b"".join(chunks)
