"""A whole ChatKit session over real HTTP, checked against the official package.

A live gunicorn serves ``POST /api/v1/chatkit/sessions/{id}/chatkit``; the test
plays a ChatKit client through every request the endpoint supports (create,
list and page threads, load, page items, add, retry, feedback, rename, stop,
delete, and a few that must fail), records each exchange as it went over the wire, then hands the
transcript to the conformance checker (conformance/check_chatkit.py), which
validates every body and event against ``openai-chatkit`` 1.6.5 and replays the
session on the package's reference server. The checker's report is the
failure message.
"""

import copy
import http.client
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conversations.models import Conversation, Message, MessageStatus, Run, RunStatus
from tests.conformance import run_checker
from tests.conftest import make_user
from tests.gunicorn_server import GunicornServer, gunicorn_process
from tests.openai_server import TEST_API_KEY, TEST_MODEL, FakeOpenAIServer
from tests.openai_server import Reply as OpenAIReply
from tests.sse import READ_TIMEOUT, SESSIONS, bearer, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# A reply long enough to be stopped in its middle: one piece per word, this
# many milliseconds apart.
ECHO_DELAY_MS = 25
LONG_INPUT = " ".join(f"word{number}" for number in range(60))


@pytest.fixture(scope="module")
def slow_echo_server(django_db_setup) -> Iterator[GunicornServer]:
    """One gunicorn for the module, its echo replies paced so a stop lands mid-reply."""
    with gunicorn_process(ECHO_DELAY_MS=str(ECHO_DELAY_MS)) as server:
        yield server


@pytest.fixture(scope="module")
def failing_provider_server(django_db_setup) -> Iterator[GunicornServer]:
    """A second gunicorn on the same database, its provider cut off in the middle of a reply."""
    provider = FakeOpenAIServer()
    provider.default = OpenAIReply(text="Half of a reply that never ends", chunks=4, cut_after=2)
    provider.start()
    try:
        with gunicorn_process(
            LLM_PROVIDER="openai",
            LLM_MODEL=TEST_MODEL,
            OPENAI_BASE_URL=provider.base_url,
            OPENAI_API_KEY=TEST_API_KEY,
            LLM_MAX_RETRIES="0",
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
        ) as server:
            yield server
    finally:
        provider.stop()


@dataclass
class Answer:
    status: int
    content_type: str
    body: str

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        return [
            json.loads(line.removeprefix("data: "))
            for line in self.body.splitlines()
            if line.startswith("data: ")
        ]


class ChatKitClient:
    """Speaks to one session's ChatKit endpoint and records every exchange, byte for byte."""

    def __init__(self, port: int, headers: dict[str, str], session_id: str) -> None:
        self.port = port
        self.headers = {**headers, "Content-Type": "application/json"}
        self.path = f"{SESSIONS}/{session_id}/chatkit"
        self.records: list[dict[str, Any]] = []

    def via(self, port: int) -> "ChatKitClient":
        """The same session through another server, recorded in the same transcript."""
        other = copy.copy(self)
        other.port = port
        return other

    def send(self, request: dict[str, Any], *, stop_after_events: int | None = None) -> Answer:
        """POST one request; with ``stop_after_events``, drop the connection after that many."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=READ_TIMEOUT)
        try:
            conn.request("POST", self.path, body=json.dumps(request), headers=self.headers)
            response = conn.getresponse()
            if stop_after_events is None:
                raw = response.read()
            else:
                raw = self._read_events(response, stop_after_events)
            answer = Answer(
                status=response.status,
                content_type=response.getheader("Content-Type", ""),
                body=raw.decode("utf-8"),
            )
        finally:
            # Closing mid-stream is the stop button: the server sees the client go.
            conn.close()
        self.records.append(
            {
                "request": request,
                "status": answer.status,
                "content_type": answer.content_type,
                "body": answer.body,
                "dropped": stop_after_events is not None,
            }
        )
        return answer

    @staticmethod
    def _read_events(response: http.client.HTTPResponse, count: int) -> bytes:
        raw = b""
        seen = 0
        in_event = False
        while seen < count:
            line = response.readline()
            if not line:
                raise AssertionError(f"the stream ended after {seen} events: {raw!r}")
            raw += line
            if line.strip(b"\r\n"):
                in_event = in_event or not line.startswith(b":")
            elif in_event:
                seen += 1
                in_event = False
        return raw

    def write(self, path: Path) -> None:
        path.write_text("".join(json.dumps(record) + "\n" for record in self.records))


def user_input(text: str) -> dict[str, Any]:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }


def item_of(events: list[Any], event_type: str, item_type: str) -> dict[str, Any]:
    return next(
        event["item"]
        for event in events
        if event["type"] == event_type and event["item"]["type"] == item_type
    )


def wait_for_runs_to_end(thread_id: str) -> None:
    active = (RunStatus.QUEUED, RunStatus.IN_PROGRESS)
    wait_until(
        lambda: not Run.objects.filter(thread_id=thread_id, status__in=active).exists(),
        timeout=20,
        what="the stopped run to end",
    )


def play_session(client: ChatKitClient, failing: ChatKitClient) -> None:
    """Every request ChatKit makes, in an order a user's clicks could make them."""
    created = client.send(
        {"type": "threads.create", "params": {"input": user_input("hello conformance")}}
    )
    assert created.status == 200, created.body
    events = created.events()
    thread_id = events[0]["thread"]["id"]
    first_reply = item_of(events, "thread.item.done", "assistant_message")
    assert first_reply["content"][0]["text"] == "Echo: hello conformance"

    other = client.send(
        {"type": "threads.create", "params": {"input": user_input("another thread")}}
    )
    other_id = other.events()[0]["thread"]["id"]
    newest = client.send({"type": "threads.list", "params": {"limit": 1}}).json()
    assert [thread["id"] for thread in newest["data"]] == [other_id]
    assert newest["has_more"] is True
    older = client.send(
        {"type": "threads.list", "params": {"limit": 1, "after": newest["after"]}}
    ).json()
    assert [thread["id"] for thread in older["data"]] == [thread_id]
    assert older["has_more"] is False
    loaded = client.send({"type": "threads.get_by_id", "params": {"thread_id": thread_id}})
    assert loaded.status == 200, loaded.body

    added = client.send(
        {
            "type": "threads.add_user_message",
            "params": {"thread_id": thread_id, "input": user_input("tell me more")},
        }
    )
    second_question = item_of(added.events(), "thread.item.done", "user_message")

    first_page = client.send(
        {"type": "items.list", "params": {"thread_id": thread_id, "limit": 3}}
    ).json()
    assert first_page["has_more"] is True, first_page
    second_page = client.send(
        {
            "type": "items.list",
            "params": {"thread_id": thread_id, "limit": 3, "after": first_page["after"]},
        }
    ).json()
    assert len(first_page["data"]) + len(second_page["data"]) == 4
    assert second_page["has_more"] is False

    retried = client.send(
        {
            "type": "threads.retry_after_item",
            "params": {"thread_id": thread_id, "item_id": second_question["id"]},
        }
    )
    new_reply = item_of(retried.events(), "thread.item.done", "assistant_message")
    assert new_reply["content"][0]["text"] == "Echo: tell me more"

    feedback = client.send(
        {
            "type": "items.feedback",
            "params": {"thread_id": thread_id, "item_ids": [new_reply["id"]], "kind": "positive"},
        }
    )
    assert feedback.status == 200, feedback.body
    renamed = client.send(
        {"type": "threads.update", "params": {"thread_id": thread_id, "title": "Renamed"}}
    )
    assert renamed.json()["title"] == "Renamed"

    # Stop: the connection drops after the first piece of the reply
    # (user item, stream options, item added, part added, first delta).
    client.send(
        {
            "type": "threads.add_user_message",
            "params": {"thread_id": thread_id, "input": user_input(LONG_INPUT)},
        },
        stop_after_events=5,
    )
    wait_for_runs_to_end(thread_id)
    after_stop = client.send({"type": "items.list", "params": {"thread_id": thread_id}}).json()
    stopped_reply = after_stop["data"][0]
    assert stopped_reply["type"] == "assistant_message"
    assert len(stopped_reply["content"][0]["text"]) < len(f"Echo: {LONG_INPUT}")
    assert Message.objects.get(pk=stopped_reply["id"]).status == MessageStatus.INCOMPLETE

    # A turn whose provider breaks off mid-reply: an error event ends it.
    broken = failing.send(
        {
            "type": "threads.add_user_message",
            "params": {"thread_id": thread_id, "input": user_input("and then?")},
        }
    )
    assert broken.events()[-1]["type"] == "error", broken.body

    # Requests that must fail, with the API's envelope.
    failures = [
        {"type": "threads.frobnicate", "params": {}},
        {"type": "items.list", "params": {"limit": 5}},
        {"type": "items.list", "params": {"thread_id": thread_id, "limit": "many"}},
        {"type": "threads.get_by_id", "params": {"thread_id": "not-a-thread"}},
        {
            "type": "attachments.create",
            "params": {"name": "a.txt", "size": 1, "mime_type": "text/plain"},
        },
    ]
    for request in failures:
        answer = client.send(request)
        assert 400 <= answer.status < 500, (request, answer.status, answer.body)
        assert answer.json()["success"] is False, answer.body

    deleted = client.send({"type": "threads.delete", "params": {"thread_id": thread_id}})
    assert deleted.json() == {}
    gone = client.send({"type": "threads.get_by_id", "params": {"thread_id": thread_id}})
    assert gone.status == 404, gone.body


def check(client: ChatKitClient, directory: Path) -> subprocess.CompletedProcess:
    transcript = directory / "chatkit-session.jsonl"
    client.write(transcript)
    return run_checker(transcript, cwd=directory)


def test_a_whole_chatkit_session_conforms_to_the_package(
    slow_echo_server, failing_provider_server, tmp_path
):
    owner = make_user("chatkit-owner")
    session = Conversation.objects.create(user=owner)
    client = ChatKitClient(slow_echo_server.port, bearer(owner), str(session.pk))

    try:
        play_session(client, client.via(failing_provider_server.port))
    except AssertionError as exc:
        # What the checker makes of the exchanges so far says more than the step alone.
        result = check(client, tmp_path)
        raise AssertionError(
            f"{exc}\n\nthe checker on the exchanges so far:\n{result.stdout}"
        ) from exc

    result = check(client, tmp_path)
    assert result.returncode == 0, (
        f"the ChatKit endpoint does not conform:\n{result.stdout}{result.stderr}"
    )
    assert f"{len(client.records)} exchanges, 0 violations" in result.stdout
