"""Request bodies sent with ``Transfer-Encoding: chunked`` (no Content-Length).

Against real gunicorn, which decodes the chunks for the application: the
body is read, within ``MAX_BODY_BYTES``, and acted on as if it had come with
a Content-Length; a larger one is 413 before it is read whole. A server that
does not decode chunks (Django's own, as ``live_server``) gets 411, never an
empty body acknowledged.
"""

import json
import threading

import pytest
from django.conf import settings

from conversations.models import Conversation, Message, Thread
from tests.db import fetch_row
from tests.gunicorn_server import RawConnection, chunked, request
from tests.sse import bearer, runs_path

pytest_plugins = ["tests.conftest_gunicorn"]

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = "/api/v1/chatkit/sessions"


def send_chunked(conn: RawConnection, method: str, path: str, owner, body: bytes):
    headers = {
        **bearer(owner),
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
    }
    conn.send(request(method, path, headers=headers) + chunked(body))
    return conn.read_response()


def test_chunked_session_create_keeps_its_fields(gunicorn_server, owner):
    body = json.dumps({"title": "Sent in chunks", "metadata": {"via": "chunked"}}).encode()

    with gunicorn_server.connect() as conn:
        response = send_chunked(conn, "POST", SESSIONS, owner, body)

    assert response.status == 201, response.body
    data = json.loads(response.body)["data"]
    assert data["title"] == "Sent in chunks"
    assert data["metadata"] == {"via": "chunked"}
    row = fetch_row(Conversation, data["id"])
    assert row["title"] == "Sent in chunks"


def test_chunked_patch_changes_the_session(gunicorn_server, owner):
    session = Conversation.objects.create(user=owner, title="Before")
    body = json.dumps({"title": "After", "instructions": "Be brief."}).encode()

    with gunicorn_server.connect() as conn:
        response = send_chunked(conn, "PATCH", f"{SESSIONS}/{session.pk}", owner, body)

    assert response.status == 200, response.body
    assert json.loads(response.body)["data"]["title"] == "After"
    row = fetch_row(Conversation, session.pk)
    assert (row["title"], row["instructions"]) == ("After", "Be brief.")


def test_chunked_run_create_reads_its_input(gunicorn_server, owner):
    thread = Thread.objects.create(conversation=Conversation.objects.create(user=owner))
    # Many small chunks, one of them splitting a multi-byte character.
    body = json.dumps({"input": "chunk by chunk ✓ " * 50}, ensure_ascii=False).encode()

    with gunicorn_server.connect() as conn:
        response = send_chunked(conn, "POST", runs_path(thread), owner, body)

    assert response.status == 201, response.body
    data = json.loads(response.body)["data"]
    assert data["status"] == "completed"
    assert data["input_message"]["content"] == "chunk by chunk ✓ " * 50
    assert fetch_row(Message, data["input_message"]["id"])["content"] == "chunk by chunk ✓ " * 50


def test_chunked_body_on_a_keep_alive_connection_leaves_the_next_request_intact(
    gunicorn_server, owner
):
    body = json.dumps({"title": "First"}).encode()

    with gunicorn_server.connect() as conn:
        first = send_chunked(conn, "POST", SESSIONS, owner, body)
        conn.send(request("GET", SESSIONS, headers=bearer(owner)))
        second = conn.read_response()

    assert first.status == 201, first.body
    assert second.status == 200, second.body
    assert [item["title"] for item in json.loads(second.body)["data"]] == ["First"]


def test_chunked_body_over_the_limit_is_413_before_it_is_read_whole(gunicorn_server, owner):
    limit = settings.MAX_BODY_BYTES
    piece = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    answered = threading.Event()

    with gunicorn_server.connect() as conn:
        headers = {
            **bearer(owner),
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        }
        conn.send(request("POST", SESSIONS, headers=headers) + b"1\r\n{\r\n")

        def send_until_answered() -> None:
            # The body never ends (no last chunk): a server that waited for
            # all of it would never answer, and the read below would time out.
            sent = 0
            try:
                while sent < 256 * limit and not answered.is_set():
                    conn.send(piece)
                    sent += len(piece)
            except OSError:
                pass  # the server closed the connection after its answer

        sender = threading.Thread(target=send_until_answered, daemon=True)
        sender.start()
        try:
            response = conn.read_response()
        finally:
            answered.set()
            sender.join(timeout=30)

    assert response.status == 413, response.body
    error = json.loads(response.body)["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert error["details"] == {"max_bytes": limit}
    assert not Conversation.objects.exists()


def test_chunked_body_is_411_on_a_server_that_does_not_decode_it(live_server, owner):
    port = int(live_server.url.rsplit(":", 1)[1])
    body = json.dumps({"title": "Lost?"}).encode()

    with RawConnection(port) as conn:
        headers = {
            **bearer(owner),
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
            "Connection": "close",
        }
        conn.send(request("POST", SESSIONS, headers=headers) + chunked(body))
        response = conn.read_response()

    assert response.status == 411, response.body
    error = json.loads(response.body)["error"]
    assert error["code"] == "LENGTH_REQUIRED"
    assert error["request_id"] == response.headers["x-request-id"]
    assert not Conversation.objects.exists()
