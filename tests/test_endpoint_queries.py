"""Pinned query counts of the endpoints test_query_counts.py and test_run_queries.py
leave out. A change here is a change in cost, to be made on purpose.

Counted inside the test's transaction: each service's durable transaction
shows up as SAVEPOINT / RELEASE SAVEPOINT (BEGIN / COMMIT in production,
which Django does not count).
"""

import pytest
from django.db import connection
from django_tasks import task_backends
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from conversations import runs
from conversations.models import Conversation, Message, Run, RunEvent, Thread
from conversations.providers.echo import EchoProvider
from tests.conftest import PASSWORD

# Counted with the token's user looked up (no cached user): the cold cost.
pytestmark = pytest.mark.usefixtures("cold_auth_cache")

SESSIONS = "/api/v1/chatkit/sessions"


@pytest.fixture
def session(owner) -> Conversation:
    # A custom title: a first run would otherwise rename it (one more UPDATE).
    return Conversation.objects.create(user=owner, title="Pinned")


def thread_url(thread: Thread) -> str:
    return f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}"


def finished_run(thread: Thread, text: str = "Hello") -> Run:
    run = runs.run_start(thread=thread, input=text, provider="echo", model="echo-1")
    list(runs.run_execute(run=run, provider=EchoProvider(), stream=False))
    return run


def with_turns(session: Conversation, threads: int, turns: int) -> list[Thread]:
    made = [Thread.objects.create(conversation=session) for _ in range(threads)]
    for thread in made:
        for n in range(turns):
            finished_run(thread, f"turn {n}")
    return made


@pytest.fixture
def thread(session) -> Thread:
    # A custom title: a first run would otherwise rename it too.
    return Thread.objects.create(conversation=session, title="Pinned")


# Sessions -------------------------------------------------------------------


@pytest.mark.parametrize(("threads", "turns"), [(1, 1), (3, 2)])
def test_session_delete(api, session, threads, turns, django_assert_num_queries):
    with_turns(session, threads, turns)

    # 1. SELECT the user named by the access token
    # 2. SELECT the session, among the user's sessions
    # 3. SAVEPOINT
    # 4. SELECT the session's threads (the cascade's collector)
    # 5. SELECT the runs of those threads
    # 6. DELETE the run events of those runs
    # 7. DELETE the feedback on the threads' messages
    # 8. DELETE the messages of the threads
    # 9. DELETE the runs
    # 10. DELETE the threads
    # 11. DELETE the session
    # 12. RELEASE SAVEPOINT
    with django_assert_num_queries(12):
        response = api.delete(f"{SESSIONS}/{session.pk}")

    assert response.status_code == 204
    assert not Conversation.objects.filter(pk=session.pk).exists()
    assert not Thread.objects.filter(conversation_id=session.pk).exists()
    assert not Message.objects.exists()
    assert not Run.objects.exists()
    assert not RunEvent.objects.exists()


# Threads --------------------------------------------------------------------


def test_thread_retrieve(api, thread, django_assert_num_queries):
    # 1. SELECT the user named by the access token
    # 2. SELECT the session from the URL, among the user's sessions
    # 3. SELECT the thread, in that session
    with django_assert_num_queries(3):
        response = api.get(thread_url(thread))

    assert response.status_code == 200
    assert response.json()["data"]["id"] == str(thread.pk)


def test_thread_patch(api, thread, django_assert_num_queries):
    # 1. SELECT the user named by the access token
    # 2. SELECT the session from the URL, among the user's sessions
    # 3. SELECT the thread, in that session
    # 4. SAVEPOINT
    # 5. UPDATE the changed fields and updated_at
    # 6. RELEASE SAVEPOINT
    with django_assert_num_queries(6):
        response = api.patch(thread_url(thread), {"title": "Renamed"}, format="json")

    assert response.status_code == 200
    thread.refresh_from_db()
    assert thread.title == "Renamed"


@pytest.mark.parametrize("turns", [1, 4])
def test_thread_delete(api, session, turns, django_assert_num_queries):
    (thread,) = with_turns(session, 1, turns)

    # 1. SELECT the user named by the access token
    # 2. SELECT the session from the URL, among the user's sessions
    # 3. SELECT the thread, in that session
    # 4. SAVEPOINT
    # 5. SELECT the thread's runs (the cascade's collector)
    # 6. DELETE the run events of those runs
    # 7. DELETE the feedback on the thread's messages
    # 8. DELETE the thread's messages
    # 9. DELETE the runs
    # 10. DELETE the thread
    # 11. RELEASE SAVEPOINT
    with django_assert_num_queries(11):
        response = api.delete(thread_url(thread))

    assert response.status_code == 204
    assert not Thread.objects.filter(pk=thread.pk).exists()
    assert not Message.objects.exists()
    assert not Run.objects.exists()
    assert not RunEvent.objects.exists()


# Runs -----------------------------------------------------------------------


def test_run_retrieve(api, thread, django_assert_num_queries):
    run = finished_run(thread)

    # 1. SELECT the user named by the access token
    # 2. SELECT the thread joined to its session, the URL's and the user's
    # 3. SELECT the run with its thread and both its messages (one JOIN)
    with django_assert_num_queries(3):
        response = api.get(f"{thread_url(thread)}/runs/{run.pk}")

    assert response.status_code == 200
    assert response.json()["data"]["output_message"]["content"] == "Echo: Hello"


def test_run_cancel_of_a_queued_run(api, thread, django_assert_num_queries):
    run = runs.run_start(thread=thread, input="x", provider="echo", model="echo-1", queued=True)

    # 1. SELECT the user named by the access token
    # 2. SELECT the thread joined to its session, the URL's and the user's
    # 3. SELECT the run, in that thread
    # 4. SAVEPOINT
    # 5. SELECT the run FOR UPDATE, with its thread and messages
    # 6. SELECT the text it streamed so far (none)
    # then INSERT the run.cancelled event and UPDATE the run: sent together
    # on PostgreSQL (7), one by one on SQLite (7, 8)
    # and RELEASE SAVEPOINT
    with django_assert_num_queries(8 if connection.vendor == "postgresql" else 9):
        response = api.post(f"{thread_url(thread)}/runs/{run.pk}/cancel")

    assert response.status_code == 200
    assert response.json()["data"]["status"] == "cancelled"


def test_background_run_post(
    api, thread, settings, django_assert_num_queries, django_capture_on_commit_callbacks
):
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.dummy.DummyBackend"}}

    # 1. SELECT the user named by the access token
    # 2. SELECT the thread joined to its session, the URL's and the user's
    # run_start, one transaction: 3. SAVEPOINT, then lock the user's row,
    # INSERT the run if the user has fewer than MAX_ACTIVE_RUNS_PER_USER
    # active runs, INSERT the user message and the run events (run.created,
    # message.created), sent together on PostgreSQL (4); on SQLite, whose
    # transaction holds the write lock, COUNT the user's active runs and the
    # three INSERTs one by one (4 to 7); and RELEASE SAVEPOINT
    # and nothing else: the task is enqueued only once that commits.
    with (
        django_capture_on_commit_callbacks(execute=False) as callbacks,
        django_assert_num_queries(5 if connection.vendor == "postgresql" else 8),
    ):
        response = api.post(
            f"{thread_url(thread)}/runs", {"input": "Later", "background": True}, format="json"
        )

    assert response.status_code == 202
    run_id = response.json()["data"]["id"]
    assert response.json()["data"]["status"] == "queued"
    # Nothing was handed over yet; on commit, the run (only) is enqueued.
    assert task_backends["default"].results == []
    assert len(callbacks) == 1
    callbacks[0]()
    assert [r.kwargs for r in task_backends["default"].results] == [{"run_id": run_id}]


def test_events_of_a_finished_run(api, thread, django_assert_num_queries):
    run = finished_run(thread)

    # 1. SELECT the user named by the access token
    # 2. SELECT the thread joined to its session, the URL's and the user's
    # 3. SELECT the run, in that thread
    # 4. SELECT the run's stored events, which end with run.completed: done
    with django_assert_num_queries(4):
        response = api.get(f"{thread_url(thread)}/runs/{run.pk}/events")
        body = b"".join(response.streaming_content).decode()

    assert response.status_code == 200
    assert "event: run.completed" in body


# Auth -----------------------------------------------------------------------


def test_auth_me(api, owner, django_assert_num_queries):
    # 1. SELECT the user named by the access token
    with django_assert_num_queries(1):
        response = api.get("/api/v1/auth/me")

    assert response.json()["data"]["id"] == str(owner.pk)


def test_token_refresh(owner, django_assert_num_queries):
    refresh = str(RefreshToken.for_user(owner))

    # 1. SELECT whether the refresh token is blacklisted
    # 2. SELECT the user named by the token
    # 3. SELECT the token's outstanding row (get_or_create finds it)
    # 4. SAVEPOINT, 5. INSERT the blacklist row, 6. RELEASE SAVEPOINT
    # 7. INSERT the new refresh token's outstanding row
    with django_assert_num_queries(7):
        response = APIClient().post(
            "/api/v1/auth/token/refresh", {"refresh": refresh}, format="json"
        )

    assert response.status_code == 200, response.json()


def test_token_obtain(owner, django_assert_num_queries):
    # 1. SELECT the user by username (then the password is checked)
    # 2. INSERT the new refresh token's outstanding row
    with django_assert_num_queries(2):
        response = APIClient().post(
            "/api/v1/auth/token", {"username": "owner", "password": PASSWORD}, format="json"
        )

    assert response.status_code == 200, response.json()


def test_logout(owner, django_assert_num_queries):
    refresh = str(RefreshToken.for_user(owner))

    # 1. SELECT whether the refresh token is blacklisted
    # 2. SELECT the token's outstanding row (get_or_create finds it)
    # 3. SAVEPOINT, 4. INSERT the blacklist row, 5. RELEASE SAVEPOINT
    with django_assert_num_queries(5):
        response = APIClient().post("/api/v1/auth/logout", {"refresh": refresh}, format="json")

    assert response.status_code == 200, response.json()


def test_register(db, django_assert_num_queries):
    # 1. SELECT whether the username is taken
    # 2. SAVEPOINT, 3. INSERT the user, 4. RELEASE SAVEPOINT
    with django_assert_num_queries(4):
        response = APIClient().post(
            "/api/v1/auth/register",
            {"username": "newcomer", "password": "a long passphrase"},
            format="json",
        )

    assert response.status_code == 201, response.json()


# Paging depth ---------------------------------------------------------------


DEPTH = 500


@pytest.fixture
def many_sessions(owner) -> list[Conversation]:
    """DEPTH + 30 sessions, newest first as the list shows them."""
    made = Conversation.objects.bulk_create(Conversation(user=owner) for _ in range(DEPTH + 30))
    return sorted(made, key=lambda s: (s.created_at, s.pk), reverse=True)


@pytest.mark.parametrize("depth", [1, DEPTH])
def test_sessions_page_costs_the_same_at_any_depth(
    api, many_sessions, depth, django_assert_num_queries
):
    cursor = many_sessions[depth]

    # 1. SELECT the user named by the access token
    # 2. SELECT the page beyond the cursor (limit + 1 rows), the cursor's
    #    created_at a subquery among the user's sessions
    with django_assert_num_queries(2):
        response = api.get(SESSIONS, {"limit": 20, "after": str(cursor.pk)})

    assert response.status_code == 200
    page = response.json()
    assert [s["id"] for s in page["data"]] == [
        str(s.pk) for s in many_sessions[depth + 1 : depth + 21]
    ]
    assert page["pagination"]["has_more"] is True
