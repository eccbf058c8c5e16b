"""How a reply ends decides how its run ends, in every mode a run is carried out.

Through the real API, with the real ``openai`` SDK talking HTTP to the local
server (tests/openai_server.py): waiting for the reply (a plain answer),
streaming it (server-sent events, over real HTTP) and in the background (the
worker's task, called in this process).

- ``stop`` (or a tool call): the run completes with a complete reply.
- ``length`` or ``content_filter``: the run completes, the reply is
  incomplete, and ``incomplete_details.reason`` says why.
- No finish reason at all (a stream closed early, without an error): the run
  fails with ``PROVIDER_BAD_RESPONSE``; the text so far is kept, incomplete.
"""

import logging
from dataclasses import dataclass

import pytest

from chatkit import providers, views
from chatkit.providers.echo import EchoProvider
from chatkit.tasks import execute_run
from conversations.llm import (
    ChatMessage,
    Completion,
    FinishReason,
    ProviderBadResponse,
)
from conversations.models import Conversation, Message, Run, Thread
from tests.conftest import client_for
from tests.db import fetch_row, fetch_rows
from tests.openai_server import Reply, _pieces
from tests.sse import SSEEvent, SSEStream, bearer, delta_text, runs_path, streamed_events

pytest_plugins = ["tests.conftest_openai"]

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "one two three four five six"
# What arrives of TEXT in four pieces before a cut after the second.
HALF = "".join(_pieces(TEXT, 4)[:2])
HEAD = ["run.created", "message.created", "run.in_progress"]
MODES = ["wait", "stream", "background"]
STREAMED_MODES = ["stream", "background"]
# In the text of the exceptions below; it must never reach a client.
SECRET = "internal-detail-5d2a at /srv/app/secret.py"


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


@pytest.fixture
def handed_over(monkeypatch) -> list[str]:
    """Background runs the API hands to the task queue; the tests carry them out."""
    runs_handed_over: list[str] = []
    monkeypatch.setattr(views, "enqueue_run", lambda run: runs_handed_over.append(str(run.pk)))
    return runs_handed_over


@pytest.fixture
def errors_logged(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR)
    return caplog


@dataclass
class Outcome:
    run: dict  # as GET .../runs/{id} has it
    events: list[SSEEvent]  # as the client got them, or replayed from the start
    bodies: str  # everything the client was sent


def carry_out(mode: str, request, owner, thread: Thread, handed_over: list[str]) -> Outcome:
    """Start a run in ``mode`` and wait for its end; what the client saw of it."""
    api = client_for(owner)
    body = {"input": "Tell me"}
    bodies = []
    if mode == "stream":
        live_server = request.getfixturevalue("live_server")
        with SSEStream(
            live_server.url + runs_path(thread),
            method="POST",
            headers=bearer(owner),
            body={**body, "stream": True},
        ) as stream:
            assert stream.status == 200
            events = stream.read_all()
        run_id = events[0].data["id"]
        bodies.extend(event.raw for event in events)
    elif mode == "wait":
        response = api.post(runs_path(thread), body, format="json")
        assert response.status_code == 201, response.content
        run_id = response.json()["data"]["id"]
        bodies.append(response.content.decode())
    else:
        response = api.post(runs_path(thread), {**body, "background": True}, format="json")
        assert response.status_code == 202, response.content
        run_id = response.json()["data"]["id"]
        assert handed_over == [run_id]
        execute_run.call(run_id=run_id)
    url = f"{runs_path(thread)}/{run_id}"
    got = api.get(url)
    run = got.json()["data"]
    bodies.append(got.content.decode())
    if mode != "stream":
        events = streamed_events(api.get(f"{url}/events"))
        bodies.extend(event.raw for event in events)
    if mode == "wait":
        assert response.json()["data"] == run
    return Outcome(run=run, events=events, bodies="\n".join(bodies))


def assert_events_tell_the_end(outcome: Outcome, terminal: str) -> None:
    """The contract's order, ids without gaps, one end event, then done; deltas add up."""
    events, run = outcome.events, outcome.run
    names = [event.event for event in events]
    tail = [terminal, "done"]
    if run["output_message"] is not None:
        tail.insert(0, "message.completed")
    assert names[:3] == HEAD, names
    assert names[-len(tail) :] == tail, names
    assert set(names[3 : -len(tail)]) <= {"message.delta"}, names
    assert [event.id for event in events[:-1]] == list(range(1, len(events)))
    assert events[-1].raw == "[DONE]"
    assert events[-2].data == run
    if run["output_message"] is not None:
        assert events[-3].data == run["output_message"]
    assert delta_text(events) == (run["output_message"] or {}).get("content", "")


def assert_stored(run: dict, *, status: str, error_code: str, reason: str) -> None:
    """What a second connection reads: the run's end and its reply agree with the API."""
    row = fetch_row(Run, run["id"])
    assert (row["status"], row["error_code"], row["incomplete_reason"]) == (
        status,
        error_code,
        reason,
    )
    replies = fetch_rows(Message, run=run["id"], role="assistant")
    if run["output_message"] is None:
        assert replies == []
        return
    [reply] = replies
    assert (reply["content"], reply["status"]) == (
        run["output_message"]["content"],
        run["output_message"]["status"],
    )


def logged_failures(caplog, run_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and run_id in r.getMessage()]


# The finish reason, through the API.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("finish_reason", ["stop", "tool_calls"])
def test_a_finished_reply_completes_the_run(
    request, owner, thread, openai_settings, handed_over, mode, finish_reason
):
    openai_settings.queue(Reply(text=TEXT, chunks=3, finish_reason=finish_reason))

    outcome = carry_out(mode, request, owner, thread, handed_over)

    run = outcome.run
    assert run["status"] == "completed"
    assert run["error"] is None
    assert run["incomplete_details"] is None
    assert (run["output_message"]["content"], run["output_message"]["status"]) == (
        TEXT,
        "completed",
    )
    assert_events_tell_the_end(outcome, "run.completed")
    assert_stored(run, status="completed", error_code="", reason="")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("finish_reason", ["length", "content_filter"])
def test_a_reply_the_provider_stopped_early_completes_the_run_as_incomplete(
    request, owner, thread, openai_settings, handed_over, mode, finish_reason
):
    openai_settings.queue(
        Reply(text=TEXT, chunks=3, finish_reason=finish_reason, completion_tokens=6)
    )

    outcome = carry_out(mode, request, owner, thread, handed_over)

    run = outcome.run
    assert run["status"] == "completed"
    assert run["error"] is None
    assert run["incomplete_details"] == {"reason": finish_reason}
    assert (run["output_message"]["content"], run["output_message"]["status"]) == (
        TEXT,
        "incomplete",
    )
    assert run["usage"] == {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}
    assert_events_tell_the_end(outcome, "run.completed")
    assert_stored(run, status="completed", error_code="", reason=finish_reason)


ENDED_WITHOUT_A_REASON = [
    # A plain answer with "finish_reason": null, or a stream whose last
    # chunk never came though it ends with [DONE].
    *(
        pytest.param(mode, Reply(text=TEXT, chunks=3, finish_reason=None), TEXT, id=f"{mode}-none")
        for mode in MODES
    ),
    # The body ends properly after two of four pieces, without a finish
    # reason or [DONE] (a proxy, or the server, closed it early). A plain
    # answer has a length: it cannot end early without an error.
    *(
        pytest.param(
            mode,
            Reply(text=TEXT, chunks=4, cut_after=2, cut_cleanly=True),
            HALF,
            id=f"{mode}-closed",
        )
        for mode in STREAMED_MODES
    ),
]


@pytest.mark.parametrize(("mode", "answer", "text_so_far"), ENDED_WITHOUT_A_REASON)
def test_a_reply_that_ends_without_a_finish_reason_fails_the_run_and_keeps_the_text(
    request, owner, thread, openai_settings, handed_over, errors_logged, mode, answer, text_so_far
):
    openai_settings.queue(answer)

    outcome = carry_out(mode, request, owner, thread, handed_over)

    run = outcome.run
    assert run["status"] == "failed"
    assert run["error"] == {
        "code": "PROVIDER_BAD_RESPONSE",
        "message": ProviderBadResponse.public_message,
    }
    assert run["incomplete_details"] is None
    assert (run["output_message"]["content"], run["output_message"]["status"]) == (
        text_so_far,
        "incomplete",
    )
    assert_events_tell_the_end(outcome, "run.failed")
    assert_stored(run, status="failed", error_code="PROVIDER_BAD_RESPONSE", reason="")
    [logged] = logged_failures(errors_logged, run["id"])
    assert isinstance(logged.exc_info[1], ProviderBadResponse)


# The providers' side: the port carries the reason.


OPENAI_REASONS = [
    ("stop", FinishReason.STOP),
    ("tool_calls", FinishReason.STOP),
    ("function_call", FinishReason.STOP),
    # A server's own word for a natural end (TGI's) still ends the reply.
    ("eos_token", FinishReason.STOP),
    ("length", FinishReason.LENGTH),
    ("content_filter", FinishReason.CONTENT_FILTER),
    (None, None),
]


@pytest.mark.parametrize(("sent", "expected"), OPENAI_REASONS)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_openai_provider_passes_on_the_finish_reason(openai_settings, stream, sent, expected):
    openai_settings.queue(Reply(text=TEXT, chunks=2, finish_reason=sent))
    provider = providers.get_provider()
    messages = [ChatMessage(role="user", content="hi")]

    completion = list(provider.stream(messages))[-1] if stream else provider.complete(messages)

    assert isinstance(completion, Completion)
    assert completion.text == TEXT
    assert completion.finish_reason == expected


def test_echo_provider_always_finishes_with_stop():
    provider = EchoProvider()
    messages = [ChatMessage(role="user", content="hi there")]

    assert provider.complete(messages).finish_reason is FinishReason.STOP
    assert list(provider.stream(messages))[-1].finish_reason is FinishReason.STOP
