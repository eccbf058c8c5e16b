"""HEAD answers with the GET's headers and no body, and never runs a stream.

Over a raw keep-alive connection to real gunicorn, the response after a HEAD
is read where it starts; the application itself sends no body bytes (gunicorn
would drop them, with a warning, and another server might send them on);
and a HEAD on a run's events answers at once without following the run.
"""

import json

import pytest

from chatkit import streaming
from conversations import runs
from conversations.models import Conversation, Run, Thread
from tests.db import fetch_row
from tests.gunicorn_server import RawConnection, request
from tests.sse import bearer, runs_path

pytest_plugins = ["tests.conftest_gunicorn"]

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = "/api/v1/chatkit/sessions"
DROPPED_BODY = "sent body bytes on a no-body response"


@pytest.fixture
def queued_run(owner) -> Run:
    """A run that stays active: queued, and no worker runs here."""
    thread = Thread.objects.create(conversation=Conversation.objects.create(user=owner))
    return runs.run_start(
        thread=thread, input="waiting", provider="echo", model="echo-1", queued=True
    )


def events_path(run: Run) -> str:
    return f"{runs_path(run.thread)}/{run.pk}/events"


def head_then_get(conn: RawConnection, path: str, headers: dict[str, str]):
    """HEAD, then GET of the same path, pipelined on one connection."""
    conn.send(request("HEAD", path, headers=headers) + request("GET", path, headers=headers))
    return conn.read_response(head=True), conn.read_response()


@pytest.mark.parametrize(
    "path",
    ["/api/schema/", "/healthz", SESSIONS, f"{SESSIONS}/00000000-0000-0000-0000-000000000000"],
)
def test_head_then_get_on_one_connection_reads_both(gunicorn_server, owner, path):
    Conversation.objects.create(user=owner, title="listed")
    headers = bearer(owner)
    logged = len(gunicorn_server.log())

    with gunicorn_server.connect() as conn:
        head, get = head_then_get(conn, path, headers)
        # Both answers read where they start: nothing is left over.
        assert conn.pending() == b""

    assert head.status == get.status
    assert get.body
    assert head.headers["content-type"] == get.headers["content-type"]
    if "content-length" in head.headers:
        assert int(head.headers["content-length"]) == len(get.body)
    assert DROPPED_BODY not in gunicorn_server.log(since=logged)


def test_head_on_events_answers_at_once_and_leaves_the_connection_usable(
    gunicorn_server, owner, queued_run
):
    headers = bearer(owner)
    logged = len(gunicorn_server.log())

    with gunicorn_server.connect() as conn:
        conn.send(request("HEAD", events_path(queued_run), headers=headers))
        head = conn.read_response(head=True)
        conn.send(request("GET", "/healthz", headers=headers))
        health = conn.read_response()

    assert head.status == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.headers["cache-control"] == "no-cache"
    assert health.status == 200
    assert json.loads(health.body)["data"] == {"status": "ok"}
    assert fetch_row(Run, queued_run.pk)["status"] == "queued"
    assert DROPPED_BODY not in gunicorn_server.log(since=logged)


def test_head_on_events_does_not_start_the_follower(live_server, owner, queued_run, monkeypatch):
    # Django's own server, like gunicorn, iterates a HEAD response's body to
    # its end: a follower started there would poll until the run ends.
    polls = []

    def follower_poll(**kwargs):
        polls.append(kwargs)
        raise AssertionError("the follower ran for a HEAD request")

    monkeypatch.setattr(streaming.runs, "run_events_after", follower_poll)
    monkeypatch.setattr(streaming.runs, "run_is_active", follower_poll)
    port = int(live_server.url.rsplit(":", 1)[1])

    with RawConnection(port) as conn:
        conn.send(request("HEAD", events_path(queued_run), headers=bearer(owner)))
        head = conn.read_response(head=True)
        assert conn.pending() == b""

    assert head.status == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert polls == []


def test_head_on_another_users_events_is_404(live_server, stranger, queued_run):
    port = int(live_server.url.rsplit(":", 1)[1])

    with RawConnection(port) as conn:
        conn.send(request("HEAD", events_path(queued_run), headers=bearer(stranger)))
        head = conn.read_response(head=True)

    assert head.status == 404
