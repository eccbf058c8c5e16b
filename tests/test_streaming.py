"""POST .../runs with ``stream: true`` over real HTTP (live_server): the event stream.

The stream carries the contract's events in order, numbered 1, 2, 3...,
then ``done``; its deltas add up to exactly the reply that is stored. Slow
providers stream piece by piece, a silent one gets ``: ping`` comments, and a
provider that fails midway leaves the text so far as an incomplete reply.
"""

import pytest

from conversations import runs
from conversations.models import Conversation, Message, MessageRole, Run, Thread
from tests.conftest import client_for
from tests.db import fetch_row, fetch_rows
from tests.openai_server import TEST_MODEL, Fail, Reply
from tests.sse import Comment, SSEStream, bearer, delta_text, deltas, runs_path, wait_until

pytest_plugins = ["tests.conftest_openai"]

pytestmark = pytest.mark.django_db(transaction=True)

INPUT = 'Hello streaming world, ünïcødé ✓ and "quotes"\tand more words'
ECHO_REPLY = f"Echo: {INPUT}"
SUCCESS_ORDER_HEAD = ["run.created", "message.created", "run.in_progress"]
SUCCESS_ORDER_TAIL = ["message.completed", "run.completed", "done"]


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def start_stream(live_server, owner, thread, body, headers=None) -> SSEStream:
    return SSEStream(
        live_server.url + runs_path(thread),
        method="POST",
        headers={**bearer(owner), **(headers or {})},
        body=body,
    )


def assert_well_formed(events, *, terminal: str = "run.completed") -> None:
    """Contract order, ids 1..N without gaps, a single terminal event, then done."""
    names = [event.event for event in events]
    body = names[len(SUCCESS_ORDER_HEAD) : -3]
    assert names[: len(SUCCESS_ORDER_HEAD)] == SUCCESS_ORDER_HEAD, names
    assert names[-3:] == ["message.completed", terminal, "done"], names
    assert body, names
    assert set(body) == {"message.delta"}, names
    numbered = events[:-1]
    assert [event.id for event in numbered] == list(range(1, len(numbered) + 1))
    done = events[-1]
    assert done.id is None
    assert done.data == "[DONE]"
    assert done.raw == "[DONE]"


def assert_reply_matches_stream(api, thread, run_id, events) -> Message:
    """The deltas, the API and a second connection all agree on the stored reply."""
    text = delta_text(events)
    [reply] = Message.objects.filter(run_id=run_id, role=MessageRole.ASSISTANT)
    assert reply.content == text
    assert {event.data["message_id"] for event in deltas(events)} == {str(reply.id)}
    committed = fetch_row(Message, reply.id)
    assert committed is not None
    assert committed["content"] == text
    listed = api.get(f"{runs_path(thread).removesuffix('/runs')}/messages", {"run_id": run_id})
    assert listed.status_code == 200
    [api_reply] = [m for m in listed.json()["data"] if m["role"] == "assistant"]
    assert api_reply["id"] == str(reply.id)
    assert api_reply["content"] == text
    return reply


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param({"input": INPUT, "stream": True}, {"Accept": "application/json"}, id="stream"),
        pytest.param({"input": INPUT}, {"Accept": "text/event-stream"}, id="accept"),
    ],
)
def test_stream_sends_the_contract_events_in_order(live_server, owner, thread, body, headers):
    with start_stream(live_server, owner, thread, body, headers) as stream:
        assert stream.status == 200
        assert stream.content_type.startswith("text/event-stream")
        assert stream.response.getheader("Cache-Control") == "no-cache"
        events = stream.read_all()

    assert_well_formed(events)
    by_name = {event.event: event for event in events}
    run = Run.objects.get()
    assert run.status == "completed"
    assert by_name["run.created"].data["id"] == str(run.pk)
    assert by_name["run.in_progress"].data["status"] == "in_progress"
    user_message = by_name["message.created"].data
    assert (user_message["role"], user_message["content"]) == ("user", INPUT)
    assert user_message["id"] == str(run.input_message_id)

    api = client_for(owner)
    reply = assert_reply_matches_stream(api, thread, run.pk, events)
    assert reply.content == ECHO_REPLY
    assert reply.status == "completed"
    completed = by_name["message.completed"].data
    assert (completed["id"], completed["content"]) == (str(reply.id), ECHO_REPLY)
    assert completed["status"] == "completed"
    final = by_name["run.completed"].data
    fetched = api.get(f"{runs_path(thread)}/{run.pk}").json()["data"]
    assert final == fetched
    assert final["output_message"]["id"] == str(reply.id)
    assert fetch_row(Run, run.pk)["status"] == "completed"


def test_slow_openai_stream_arrives_piece_by_piece(live_server, owner, thread, openai_settings):
    text = "Twenty small pieces of a slow reply, streamed one by one to the client."
    openai_settings.queue(
        Reply(text=text, chunks=20, chunk_delay=0.02, prompt_tokens=7, completion_tokens=20)
    )

    with start_stream(live_server, owner, thread, {"input": "go slowly", "stream": True}) as s:
        assert s.status == 200
        events = s.read_all()

    assert_well_formed(events)
    assert len(deltas(events)) == 20
    assert all(event.data["delta"] for event in deltas(events))
    run = Run.objects.get()
    reply = assert_reply_matches_stream(client_for(owner), thread, run.pk, events)
    assert reply.content == text
    assert (run.status, run.model, run.total_tokens) == ("completed", TEST_MODEL, 27)
    assert events[-2].data["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 20,
        "total_tokens": 27,
    }


def test_slow_echo_stream_gives_one_delta_per_word(live_server, owner, thread, settings):
    settings.ECHO_DELAY_MS = 20
    words = "one two three four five six seven eight nine ten eleven twelve"

    with start_stream(live_server, owner, thread, {"input": words, "stream": True}) as s:
        events = s.read_all()

    assert_well_formed(events)
    assert [event.data["delta"].strip() for event in deltas(events)] == ["Echo:", *words.split()]
    run = Run.objects.get()
    reply = assert_reply_matches_stream(client_for(owner), thread, run.pk, events)
    assert reply.content == f"Echo: {words}"


def test_provider_failure_midway_keeps_the_text_as_incomplete(
    live_server, owner, thread, openai_settings
):
    # Six pieces of three characters; the connection breaks after the third.
    text = "".join(f"w{i}-" for i in range(6))
    openai_settings.queue(Reply(text=text, chunks=6, chunk_delay=0.01, cut_after=3))

    with start_stream(live_server, owner, thread, {"input": "hi", "stream": True}) as s:
        assert s.status == 200
        events = s.read_all()

    assert_well_formed(events, terminal="run.failed")
    assert [event.data["delta"] for event in deltas(events)] == ["w0-", "w1-", "w2-"]
    run = Run.objects.get()
    assert run.status == "failed"
    assert run.error_code == "PROVIDER_ERROR"
    failed = events[-2].data
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "PROVIDER_ERROR"
    completed = events[-3].data
    assert (completed["status"], completed["content"]) == ("incomplete", "w0-w1-w2-")
    api = client_for(owner)
    reply = assert_reply_matches_stream(api, thread, run.pk, events)
    assert reply.status == "incomplete"
    assert fetch_row(Message, reply.id)["status"] == "incomplete"
    # The thread is free again.
    again = api.post(runs_path(thread), {"input": "again"}, format="json")
    assert again.status_code == 201, again.json()
    assert again.json()["data"]["status"] == "completed"


def test_provider_failure_before_any_text_fails_without_a_reply(
    live_server, owner, thread, openai_settings
):
    openai_settings.queue(Fail(500))

    with start_stream(live_server, owner, thread, {"input": "hi", "stream": True}) as s:
        events = s.read_all()

    assert [event.event for event in events] == [*SUCCESS_ORDER_HEAD, "run.failed", "done"]
    assert [event.id for event in events[:-1]] == [1, 2, 3, 4]
    assert events[-2].data["error"]["code"] == "PROVIDER_ERROR"
    assert events[-2].data["output_message"] is None
    assert not fetch_rows(Message, role="assistant")


def test_silent_provider_gets_pings_until_it_speaks(
    live_server, owner, thread, openai_settings, settings
):
    settings.SSE_PING_SECONDS = 1
    openai_settings.queue(Reply(text="finally some words", chunks=3, delay=2.5))

    with start_stream(live_server, owner, thread, {"input": "hi", "stream": True}) as s:
        s.read_until(lambda event: event.event == "message.delta")
        events = s.read_all()
        items = s.items

    assert_well_formed(events)
    names = [getattr(item, "event", None) for item in items]
    first_delta = names.index("message.delta")
    in_progress = names.index("run.in_progress")
    pings = [i for i, item in enumerate(items) if isinstance(item, Comment)]
    assert pings, items
    assert all(item.text == "ping" for item in items if isinstance(item, Comment))
    assert any(in_progress < i < first_delta for i in pings), items
    assert delta_text(events) == "finally some words"


def test_client_that_goes_away_leaves_a_run_that_completes(live_server, owner, thread, settings):
    settings.ECHO_DELAY_MS = 30
    words = " ".join(f"piece{i}" for i in range(15))

    with start_stream(live_server, owner, thread, {"input": words, "stream": True}) as s:
        first = s.read_until(lambda event: event.event == "message.delta")
    # The connection is closed after the first delta; the run goes on.
    assert first.data["delta"] == "Echo: "
    run_id = Run.objects.get().pk

    def ended():
        row = fetch_row(Run, run_id)
        return row if row["status"] not in ("queued", "in_progress") else None

    row = wait_until(ended, timeout=20, what="the run to end")
    assert row["status"] == "completed"
    reply = fetch_row(Message, row["output_message_id"])
    assert reply["content"] == f"Echo: {words}"
    assert reply["status"] == "completed"
    assert reply["id"] == Run.objects.get(pk=run_id).reply_message_id
    # Its stored events are whole: the client can come back and read them all.
    stored = [event.event for event in runs.run_events_after(run_id=run_id, seq=0)]
    assert stored[-2:] == ["message.completed", "run.completed"]


def test_stream_that_cannot_start_is_a_json_error(live_server, owner, thread, stranger):
    api = client_for(owner)
    active = api.post(runs_path(thread), {"input": "first", "background": True}, format="json")
    assert active.status_code == 202
    active_id = active.json()["data"]["id"]
    cases = [
        (owner, {"input": "second", "stream": True}, 409, "RUN_IN_PROGRESS"),
        (owner, {"input": "", "stream": True}, 400, "VALIDATION_ERROR"),
        (stranger, {"input": "not yours", "stream": True}, 404, "NOT_FOUND"),
    ]

    for user, body, status, code in cases:
        with start_stream(live_server, user, thread, body) as s:
            assert s.status == status, body
            assert s.content_type.startswith("application/json")
            error = s.json()["error"]
        assert error["code"] == code
        if status == 409:
            assert error["details"]["active_run_id"] == active_id

    assert Run.objects.count() == 1
    assert Message.objects.count() == 1


def test_stream_repeated_with_its_idempotency_key_replays_the_same_events(
    live_server, owner, thread
):
    body = {"input": INPUT, "stream": True}
    key = {"Idempotency-Key": "stream-once-7d1c"}

    with start_stream(live_server, owner, thread, body, key) as first:
        assert first.status == 200
        assert first.response.getheader("Idempotent-Replayed") is None
        original = first.read_all()
    with start_stream(live_server, owner, thread, body, key) as again:
        assert again.status == 200
        assert again.content_type.startswith("text/event-stream")
        assert again.response.getheader("Idempotent-Replayed") == "true"
        replayed = again.read_all()

    assert_well_formed(original)
    assert [(e.id, e.event, e.data) for e in replayed] == [
        (e.id, e.event, e.data) for e in original
    ]
    assert Run.objects.count() == 1
    assert Message.objects.filter(role=MessageRole.ASSISTANT).count() == 1
