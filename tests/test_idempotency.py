"""``Idempotency-Key`` on POST: replays, reuse, races, failures and expiry.

A repeat with the same key, method, path and body gets the first answer again
(same status and body, ``Idempotent-Replayed: true``) and does nothing else:
rows are counted through a second database connection (tests/db.py), and
provider calls on the local OpenAI-protocol server. The same key with another
request is 422; while the first is still running, 409. Errors are not
answers: a corrected retry with the same key goes through.
"""

import threading
import time
from collections import Counter
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from chatkit.models import IdempotencyRecord
from conversations import runs, tasks
from conversations.models import Conversation, Message, MessageRole, Run, Thread
from tests.conftest import client_for
from tests.db import count_rows, fetch_rows
from tests.openai_server import Reply
from tests.sse import streamed_events

pytest_plugins = ["tests.conftest_openai"]

SESSIONS = "/api/v1/chatkit/sessions"
REPLAYED = "Idempotent-Replayed"


def keyed(key: str) -> dict[str, str]:
    return {"HTTP_IDEMPOTENCY_KEY": key}


def threads_path(session) -> str:
    return f"{SESSIONS}/{session.pk}/threads"


def runs_path(thread) -> str:
    return f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}/runs"


def error_code(response) -> str:
    return response.json()["error"]["code"]


@pytest.fixture
def session(owner) -> Conversation:
    return Conversation.objects.create(user=owner, title="Keyed")


@pytest.fixture
def enqueued(monkeypatch) -> list[str]:
    """Background runs handed to the task engine (recorded, not carried out)."""
    handed_over: list[str] = []
    monkeypatch.setattr(tasks, "enqueue_run", lambda run: handed_over.append(str(run.pk)))
    return handed_over


# Replays --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_same_key_same_body_replays_the_first_answer_and_stores_once(api, owner):
    body = {"title": "Once only", "metadata": {"k": "v"}}

    first = api.post(SESSIONS, body, format="json", **keyed("create-session-1"))
    second = api.post(SESSIONS, body, format="json", **keyed("create-session-1"))

    assert first.status_code == 201, first.json()
    assert REPLAYED not in first
    assert second.status_code == 201
    assert second[REPLAYED] == "true"
    assert second.content == first.content
    assert second["Content-Type"] == "application/json"
    rows = fetch_rows(Conversation, user=owner.pk)
    assert [str(row["id"]) for row in rows] == [first.json()["data"]["id"]]


@pytest.mark.django_db(transaction=True)
def test_replay_of_a_thread_create_does_not_create_another(api, session):
    first = api.post(threads_path(session), {"title": "T"}, format="json", **keyed("t-1"))
    second = api.post(threads_path(session), {"title": "T"}, format="json", **keyed("t-1"))

    assert first.status_code == 201
    assert (second.status_code, second.get(REPLAYED)) == (201, "true")
    assert second.content == first.content
    assert count_rows(Thread, conversation=session.pk) == 1


@pytest.mark.django_db(transaction=True)
def test_replay_of_a_run_does_not_store_or_call_the_provider_again(api, thread, openai_settings):
    first = api.post(runs_path(thread), {"input": "Hi once"}, format="json", **keyed("run-1"))
    assert first.status_code == 201, first.json()
    assert len(openai_settings.requests) == 1

    second = api.post(runs_path(thread), {"input": "Hi once"}, format="json", **keyed("run-1"))

    assert (second.status_code, second.get(REPLAYED)) == (201, "true")
    assert second.content == first.content
    assert len(openai_settings.requests) == 1
    assert count_rows(Run, thread=thread.pk) == 1
    assert count_rows(Message, thread=thread.pk, role=MessageRole.USER) == 1
    assert count_rows(Message, thread=thread.pk, role=MessageRole.ASSISTANT) == 1


@pytest.mark.django_db(transaction=True)
def test_replay_of_a_background_run_is_the_202_and_hands_over_nothing(api, thread, enqueued):
    body = {"input": "Later, please", "background": True}

    first = api.post(runs_path(thread), body, format="json", **keyed("bg-1"))
    second = api.post(runs_path(thread), body, format="json", **keyed("bg-1"))

    assert first.status_code == 202, first.json()
    assert first.json()["data"]["status"] == "queued"
    assert (second.status_code, second.get(REPLAYED)) == (202, "true")
    assert second.content == first.content
    assert enqueued == [first.json()["data"]["id"]]
    assert count_rows(Run, thread=thread.pk) == 1
    assert count_rows(Message, thread=thread.pk) == 1


@pytest.mark.django_db(transaction=True)
def test_replay_of_a_streamed_run_streams_the_stored_events(api, thread, openai_settings):
    openai_settings.default = Reply(text="Streamed once, replayed later.", chunks=4)
    body = {"input": "Stream it", "stream": True}

    first = api.post(runs_path(thread), body, format="json", **keyed("stream-1"))
    assert first.status_code == 200
    assert first["Content-Type"].startswith("text/event-stream")
    live = streamed_events(first)
    assert [e.event for e in live][-3:] == ["message.completed", "run.completed", "done"]
    assert len(openai_settings.requests) == 1

    second = api.post(runs_path(thread), body, format="json", **keyed("stream-1"))

    assert second.status_code == 200
    assert second[REPLAYED] == "true"
    assert second["Content-Type"].startswith("text/event-stream")
    replayed = streamed_events(second)
    assert [(e.id, e.event, e.data) for e in replayed] == [(e.id, e.event, e.data) for e in live]
    assert replayed[-2].event == "run.completed"
    assert (replayed[-1].event, replayed[-1].data) == ("done", "[DONE]")
    assert len(openai_settings.requests) == 1
    assert count_rows(Run, thread=thread.pk) == 1
    assert count_rows(Message, thread=thread.pk, role=MessageRole.USER) == 1


# Reuse with another request ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_same_key_with_another_body_is_422_and_stores_nothing(api, owner):
    first = api.post(SESSIONS, {"title": "A"}, format="json", **keyed("k-body"))
    other = api.post(SESSIONS, {"title": "B"}, format="json", **keyed("k-body"))

    assert first.status_code == 201
    assert other.status_code == 422
    assert error_code(other) == "IDEMPOTENCY_KEY_REUSED"
    assert REPLAYED not in other
    assert [row["title"] for row in fetch_rows(Conversation, user=owner.pk)] == ["A"]


@pytest.mark.django_db(transaction=True)
def test_same_key_on_another_path_is_422_and_stores_nothing(api, session):
    first = api.post(SESSIONS, {}, format="json", **keyed("k-path"))
    other = api.post(threads_path(session), {}, format="json", **keyed("k-path"))

    assert first.status_code == 201
    assert other.status_code == 422
    assert error_code(other) == "IDEMPOTENCY_KEY_REUSED"
    assert count_rows(Thread, conversation=session.pk) == 0


@pytest.mark.django_db(transaction=True)
def test_keys_are_per_user(api, stranger_api, owner, stranger):
    mine = api.post(SESSIONS, {"title": "Same"}, format="json", **keyed("shared-key"))
    theirs = stranger_api.post(SESSIONS, {"title": "Same"}, format="json", **keyed("shared-key"))
    theirs_other = stranger_api.post(
        SESSIONS, {"title": "Other"}, format="json", **keyed("shared-key-2")
    )
    mine_other = api.post(SESSIONS, {"title": "Other"}, format="json", **keyed("shared-key-2"))

    assert mine.status_code == theirs.status_code == 201
    assert REPLAYED not in theirs
    assert theirs.json()["data"]["id"] != mine.json()["data"]["id"]
    assert theirs.json()["data"]["user_id"] == str(stranger.pk)
    assert theirs_other.status_code == mine_other.status_code == 201
    assert REPLAYED not in mine_other
    assert count_rows(Conversation, user=owner.pk) == 2
    assert count_rows(Conversation, user=stranger.pk) == 2


# Malformed keys ------------------------------------------------------------

MALFORMED_KEYS = {
    "empty": "",
    "256_chars": "k" * 256,
    "non_ascii": "clé-ünïcødé",
    "nul": "abc\x00def",
    "control_char": "abc\x01def",
    "tab": "abc\tdef",
    "newline": "abc\ndef",
    "delete_char": "abc\x7fdef",
}


@pytest.mark.parametrize("key", list(MALFORMED_KEYS.values()), ids=list(MALFORMED_KEYS))
def test_malformed_key_is_400_before_any_lookup(api, key):
    with CaptureQueriesContext(connection) as queries:
        response = api.post(SESSIONS, {"title": "x"}, format="json", **keyed(key))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "Idempotency-Key" in error["details"]
    table = IdempotencyRecord._meta.db_table
    assert not [q["sql"] for q in queries.captured_queries if table in q["sql"]]
    assert not Conversation.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_key_of_255_printable_chars_is_accepted(api):
    key = "".join(chr(0x20 + i % 95) for i in range(255))

    first = api.post(SESSIONS, {}, format="json", **keyed(key))
    second = api.post(SESSIONS, {}, format="json", **keyed(key))

    assert first.status_code == 201
    assert (second.status_code, second.get(REPLAYED)) == (201, "true")
    assert Conversation.objects.count() == 1


# Failed requests are not answers -------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_validation_error_is_not_stored_and_the_corrected_retry_succeeds(api, owner):
    bad = api.post(SESSIONS, {"title": 5}, format="json", **keyed("fix-me"))
    assert bad.status_code == 400
    assert count_rows(IdempotencyRecord, user=owner.pk) == 0

    fixed = api.post(SESSIONS, {"title": "Five"}, format="json", **keyed("fix-me"))

    assert fixed.status_code == 201, fixed.json()
    assert REPLAYED not in fixed
    assert [row["title"] for row in fetch_rows(Conversation, user=owner.pk)] == ["Five"]


@pytest.mark.django_db(transaction=True)
def test_404_is_not_stored_and_a_retry_at_the_right_path_succeeds(api, owner, session):
    missing = f"{SESSIONS}/00000000-0000-4000-8000-000000000000/threads"

    lost = api.post(missing, {}, format="json", **keyed("wrong-parent"))
    assert lost.status_code == 404
    assert count_rows(IdempotencyRecord, user=owner.pk) == 0

    found = api.post(threads_path(session), {}, format="json", **keyed("wrong-parent"))

    assert found.status_code == 201, found.json()
    assert count_rows(Thread, conversation=session.pk) == 1


@pytest.mark.django_db(transaction=True)
def test_409_run_in_progress_is_not_stored_and_the_retry_succeeds(api, owner, thread):
    active = runs.run_start(thread=thread, input="busy", provider="echo", model="echo-1")
    body = {"input": "after the busy one"}

    busy = api.post(runs_path(thread), body, format="json", **keyed("wait-for-it"))
    assert busy.status_code == 409
    assert error_code(busy) == "RUN_IN_PROGRESS"
    assert count_rows(IdempotencyRecord, user=owner.pk) == 0

    runs.run_cancel(run_id=active.pk)
    retry = api.post(runs_path(thread), body, format="json", **keyed("wait-for-it"))

    assert retry.status_code == 201, retry.json()
    assert REPLAYED not in retry
    assert retry.json()["data"]["status"] == "completed"
    assert count_rows(Run, thread=thread.pk) == 2


@pytest.mark.django_db(transaction=True)
def test_409_session_limit_is_not_stored_and_the_retry_succeeds(api, owner, settings):
    settings.MAX_SESSIONS_PER_USER = 1
    existing = Conversation.objects.create(user=owner)

    full = api.post(SESSIONS, {"title": "Second"}, format="json", **keyed("quota"))
    assert full.status_code == 409
    assert error_code(full) == "SESSION_LIMIT_REACHED"

    existing.delete()
    retry = api.post(SESSIONS, {"title": "Second"}, format="json", **keyed("quota"))

    assert retry.status_code == 201, retry.json()
    assert [row["title"] for row in fetch_rows(Conversation, user=owner.pk)] == ["Second"]


# Eight at once --------------------------------------------------------------

PARALLEL = 8


@pytest.mark.django_db(transaction=True)
def test_eight_parallel_posts_with_one_key_run_once(owner, thread, openai_settings):
    gate = threading.Event()
    openai_settings.default = Reply(text="The only reply.", gate=gate)
    barrier = threading.Barrier(PARALLEL)
    results: list[tuple[int, str, bytes] | None] = [None] * PARALLEL
    body = {"input": "Eight times the same request"}

    def post(index: int) -> None:
        try:
            client = client_for(owner)
            client.raise_request_exception = False
            barrier.wait(timeout=10)
            response = client.post(runs_path(thread), body, format="json", **keyed("octet"))
            code = error_code(response) if response.status_code >= 400 else ""
            results[index] = (response.status_code, code, response.content)
        except Exception as exc:  # reported through results
            results[index] = (-1, repr(exc), b"")
        finally:
            connection.close()

    workers = [threading.Thread(target=post, args=(i,), daemon=True) for i in range(PARALLEL)]
    for worker in workers:
        worker.start()
    try:
        # The first request holds the provider until the seven others have answered.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sum(result is not None for result in results) >= PARALLEL - 1:
                break
            time.sleep(0.02)
    finally:
        gate.set()
        for worker in workers:
            worker.join(timeout=20)
    assert not any(worker.is_alive() for worker in workers)

    outcomes = Counter((status, code) for status, code, _ in results)
    assert outcomes == {(201, ""): 1, (409, "IDEMPOTENCY_KEY_IN_USE"): PARALLEL - 1}, results
    assert len(openai_settings.requests) == 1
    assert count_rows(Message, thread=thread.pk, role=MessageRole.USER) == 1
    assert count_rows(Run, thread=thread.pk) == 1
    [winner] = [content for status, _, content in results if status == 201]

    retry = client_for(owner).post(runs_path(thread), body, format="json", **keyed("octet"))

    assert (retry.status_code, retry.get(REPLAYED)) == (201, "true")
    assert retry.content == winner
    assert len(openai_settings.requests) == 1
    assert count_rows(Message, thread=thread.pk, role=MessageRole.USER) == 1


@pytest.mark.django_db(transaction=True)
def test_retry_while_the_first_is_running_is_409_then_replays(owner, thread, openai_settings):
    gate = threading.Event()
    openai_settings.default = Reply(text="Slow reply.", gate=gate)
    first: dict[str, object] = {}

    def post_first() -> None:
        try:
            response = client_for(owner).post(
                runs_path(thread), {"input": "slow"}, format="json", **keyed("slow-1")
            )
            first["status"], first["content"] = response.status_code, response.content
        finally:
            connection.close()

    worker = threading.Thread(target=post_first, daemon=True)
    worker.start()
    try:
        assert openai_settings.wait_for_requests(1, timeout=10)
        during = client_for(owner).post(
            runs_path(thread), {"input": "slow"}, format="json", **keyed("slow-1")
        )
        during_other = client_for(owner).post(
            runs_path(thread), {"input": "other"}, format="json", **keyed("slow-1")
        )
    finally:
        gate.set()
        worker.join(timeout=20)

    assert during.status_code == 409
    assert error_code(during) == "IDEMPOTENCY_KEY_IN_USE"
    assert during_other.status_code == 422
    assert error_code(during_other) == "IDEMPOTENCY_KEY_REUSED"
    assert first["status"] == 201
    after = client_for(owner).post(
        runs_path(thread), {"input": "slow"}, format="json", **keyed("slow-1")
    )
    assert (after.status_code, after.get(REPLAYED)) == (201, "true")
    assert after.content == first["content"]
    assert len(openai_settings.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_key_of_a_request_that_died_is_freed_after_the_run_timeout(api, owner, settings):
    first = api.post(SESSIONS, {"title": "Retry"}, format="json", **keyed("orphan"))
    assert first.status_code == 201
    # As if the process had died after claiming the key and before answering.
    IdempotencyRecord.objects.filter(user=owner, key="orphan").update(
        response_status=None, response_body=None
    )
    busy = api.post(SESSIONS, {"title": "Retry"}, format="json", **keyed("orphan"))
    assert busy.status_code == 409
    assert error_code(busy) == "IDEMPOTENCY_KEY_IN_USE"

    died_at = timezone.now() - timedelta(seconds=settings.RUN_TIMEOUT_SECONDS + 1)
    IdempotencyRecord.objects.filter(user=owner, key="orphan").update(created_at=died_at)
    retry = api.post(SESSIONS, {"title": "Retry"}, format="json", **keyed("orphan"))

    assert retry.status_code == 201, retry.json()
    assert REPLAYED not in retry
    replay = api.post(SESSIONS, {"title": "Retry"}, format="json", **keyed("orphan"))
    assert (replay.status_code, replay.get(REPLAYED)) == (201, "true")
    assert replay.content == retry.content


# Expiry ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_purge_removes_keys_past_24_hours_and_the_key_can_be_reused(api, owner):
    old = api.post(SESSIONS, {"title": "Yesterday"}, format="json", **keyed("old-key"))
    fresh = api.post(SESSIONS, {"title": "Today"}, format="json", **keyed("fresh-key"))
    assert old.status_code == fresh.status_code == 201
    past = timezone.now() - timedelta(hours=24, seconds=1)
    IdempotencyRecord.objects.filter(user=owner, key="old-key").update(expires_at=past)

    out = StringIO()
    call_command("purge_idempotency_keys", stdout=out)

    assert "Deleted 1 " in out.getvalue()
    assert [row["key"] for row in fetch_rows(IdempotencyRecord, user=owner.pk)] == ["fresh-key"]
    reused = api.post(SESSIONS, {"title": "New day"}, format="json", **keyed("old-key"))
    assert reused.status_code == 201, reused.json()
    assert REPLAYED not in reused
    kept = api.post(SESSIONS, {"title": "Today"}, format="json", **keyed("fresh-key"))
    assert (kept.status_code, kept.get(REPLAYED)) == (201, "true")
    titles = sorted(row["title"] for row in fetch_rows(Conversation, user=owner.pk))
    assert titles == ["New day", "Today", "Yesterday"]


@pytest.mark.django_db(transaction=True)
def test_key_expired_but_not_yet_purged_is_not_replayed(api, owner):
    first = api.post(SESSIONS, {"title": "Old"}, format="json", **keyed("stale"))
    assert first.status_code == 201
    IdempotencyRecord.objects.filter(user=owner, key="stale").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    again = api.post(SESSIONS, {"title": "Old"}, format="json", **keyed("stale"))

    assert again.status_code == 201
    assert REPLAYED not in again
    assert again.json()["data"]["id"] != first.json()["data"]["id"]
    assert count_rows(Conversation, user=owner.pk) == 2


def test_post_without_key_is_not_recorded(api):
    first = api.post(SESSIONS, {}, format="json")
    second = api.post(SESSIONS, {}, format="json")

    assert first.status_code == second.status_code == 201
    assert REPLAYED not in second
    assert Conversation.objects.count() == 2
    assert not IdempotencyRecord.objects.exists()


def test_key_on_a_get_is_ignored(api, session):
    response = api.get(SESSIONS, **keyed("\x00 not even valid"))

    assert response.status_code == 200
    assert not IdempotencyRecord.objects.exists()


def test_unauthenticated_post_with_key_is_401_and_records_nothing(db):
    response = APIClient().post(SESSIONS, {}, format="json", **keyed("anon"))

    assert response.status_code == 401
    assert not IdempotencyRecord.objects.exists()
