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

Then whatever a provider raises that its adapter did not translate (a
transport error of its HTTP client, a bug): the run fails with
``PROVIDER_ERROR``, the text so far is kept, the exception is logged once
with its stack trace, and the client sees only the generic message.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

from conversations import providers, tasks
from conversations.llm import (
    ChatMessage,
    Completion,
    Delta,
    FinishReason,
    ProviderBadResponse,
    ProviderError,
)
from conversations.models import Conversation, Message, Run, Thread
from conversations.providers.echo import EchoProvider
from conversations.tasks import execute_run
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
    monkeypatch.setattr(tasks, "enqueue_run", lambda run: runs_handed_over.append(str(run.pk)))
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


# Connections the server aborts mid-stream, through the API.


@pytest.mark.parametrize("mode", STREAMED_MODES)
@pytest.mark.parametrize("reset", [False, True], ids=["closed_mid_body", "reset"])
def test_a_connection_aborted_mid_stream_fails_the_run_and_keeps_the_text(
    request, owner, thread, openai_settings, handed_over, errors_logged, mode, reset
):
    openai_settings.queue(Reply(text=TEXT, chunks=4, chunk_delay=0.01, cut_after=2, reset=reset))

    outcome = carry_out(mode, request, owner, thread, handed_over)

    run = outcome.run
    assert run["status"] == "failed"
    assert run["error"] == {"code": "PROVIDER_ERROR", "message": ProviderError.public_message}
    assert (run["output_message"]["content"], run["output_message"]["status"]) == (
        HALF,
        "incomplete",
    )
    assert_events_tell_the_end(outcome, "run.failed")
    assert_stored(run, status="failed", error_code="PROVIDER_ERROR", reason="")
    [logged] = logged_failures(errors_logged, run["id"])
    assert type(logged.exc_info[1]) is ProviderError


# Exceptions a provider's adapter did not translate, through the API.


class RaisingProvider:
    """Streams a first piece, then raises ``error``, as an adapter with a gap would."""

    name = "raising"
    model = "raising-1"
    error: Exception = RuntimeError(SECRET)

    @classmethod
    def from_settings(cls) -> "RaisingProvider":
        return cls()

    def complete(self, messages: list[ChatMessage]) -> Completion:
        raise self.error

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
        yield Delta("Partial ")
        raise self.error


UNTRANSLATED = [
    pytest.param(httpx2.RemoteProtocolError(f"peer closed connection {SECRET}"), id="protocol"),
    pytest.param(httpx2.ReadError(f"[Errno 104] Connection reset by peer {SECRET}"), id="read"),
    pytest.param(httpx2.StreamClosed(), id="stream_closed"),
    pytest.param(RuntimeError(SECRET), id="runtime"),
]


@pytest.fixture
def raising_provider(settings, monkeypatch) -> type[RaisingProvider]:
    monkeypatch.setitem(providers.PROVIDERS, "raising", RaisingProvider)
    settings.LLM_PROVIDER = "raising"
    return RaisingProvider


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("error", UNTRANSLATED)
def test_an_exception_the_provider_did_not_translate_fails_the_run(
    request, owner, thread, raising_provider, monkeypatch, handed_over, errors_logged, mode, error
):
    monkeypatch.setattr(raising_provider, "error", error)

    outcome = carry_out(mode, request, owner, thread, handed_over)

    run = outcome.run
    assert run["status"] == "failed"
    assert run["error"] == {"code": "PROVIDER_ERROR", "message": ProviderError.public_message}
    assert run["completed_at"] is not None
    if mode == "wait":
        assert run["output_message"] is None
    else:
        assert (run["output_message"]["content"], run["output_message"]["status"]) == (
            "Partial ",
            "incomplete",
        )
    assert_events_tell_the_end(outcome, "run.failed")
    assert_stored(run, status="failed", error_code="PROVIDER_ERROR", reason="")
    # Nothing of the exception reaches the client ...
    assert SECRET not in outcome.bodies
    assert type(error).__name__ not in outcome.bodies
    # ... and the log has it once, with the stack trace down to where it was raised.
    [logged] = logged_failures(errors_logged, run["id"])
    assert logged.exc_info[1].__cause__ is error
    trace = logging.Formatter().formatException(logged.exc_info)
    assert "in stream" in trace or "in complete" in trace
    assert f"{type(error).__name__}" in trace
    # The thread takes the next run.
    again = client_for(owner).post(runs_path(thread), {"input": "again"}, format="json")
    assert again.status_code == 201
    assert again.json()["data"]["error"]["code"] == "PROVIDER_ERROR"


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
