"""Pinned query counts: a change here is a change in cost, to be made on purpose.

The tests run inside pytest-django's wrapping transaction, so each service's
durable transaction shows up as SAVEPOINT / RELEASE SAVEPOINT; in production
those are BEGIN / COMMIT, which Django does not count as queries.
"""

import pytest
from django.db import connection

from conversations.models import Conversation, Thread

# Counted with the token's user looked up (no cached user): the cold cost.
pytestmark = pytest.mark.usefixtures("cold_auth_cache")

SESSIONS = "/api/v1/chatkit/sessions"


def test_session_create(api, owner, django_assert_num_queries):
    # 1. SELECT the user named by the access token
    # 2. SAVEPOINT
    # PostgreSQL, one round trip (store.insert_conversation_within_quota):
    #   3. SELECT the user FOR UPDATE; INSERT the session if under the quota
    # SQLite (BEGIN IMMEDIATE serializes creates):
    #   3. SELECT COUNT(*) of the user's sessions, 4. INSERT the session
    # then RELEASE SAVEPOINT. In production the savepoint is BEGIN and
    # COMMIT on SQLite; on PostgreSQL nothing: the two statements sent
    # together are their own transaction.
    with django_assert_num_queries(4 if connection.vendor == "postgresql" else 5):
        response = api.post(SESSIONS, {"title": "x", "metadata": {"a": "b"}}, format="json")

    assert response.status_code == 201


@pytest.mark.parametrize("rows", [3, 30])
def test_session_list(api, owner, rows, django_assert_num_queries):
    Conversation.objects.bulk_create(Conversation(user=owner) for _ in range(rows))

    # 1. SELECT the user named by the access token
    # 2. SELECT the page of sessions (limit + 1 rows)
    with django_assert_num_queries(2):
        response = api.get(SESSIONS, {"limit": 100})

    assert len(response.json()["data"]) == rows


@pytest.mark.parametrize("rows", [3, 30])
def test_session_list_after_cursor(api, owner, rows, django_assert_num_queries):
    sessions = Conversation.objects.bulk_create(Conversation(user=owner) for _ in range(rows + 1))
    newest = max(sessions, key=lambda s: (s.created_at, s.pk))

    # 1. SELECT the user named by the access token
    # 2. SELECT the page of sessions beyond the cursor, whose created_at is
    #    a subquery among the user's sessions
    with django_assert_num_queries(2):
        response = api.get(SESSIONS, {"limit": 100, "after": str(newest.pk)})

    assert len(response.json()["data"]) == rows


def test_thread_create(api, session, django_assert_num_queries):
    # 1. SELECT the user named by the access token
    # 2. SELECT the session from the URL, among the user's sessions
    # 3. SAVEPOINT
    # 4. INSERT the thread
    # 5. RELEASE SAVEPOINT
    with django_assert_num_queries(5):
        response = api.post(f"{SESSIONS}/{session.pk}/threads", {"title": "x"}, format="json")

    assert response.status_code == 201


@pytest.mark.parametrize("rows", [3, 30])
def test_thread_list(api, session, rows, django_assert_num_queries):
    Thread.objects.bulk_create(Thread(conversation=session) for _ in range(rows))

    # 1. SELECT the user named by the access token
    # 2. SELECT the session from the URL, among the user's sessions
    # 3. SELECT the page of threads (limit + 1 rows)
    with django_assert_num_queries(3):
        response = api.get(f"{SESSIONS}/{session.pk}/threads", {"limit": 100})

    assert len(response.json()["data"]) == rows


def test_session_retrieve(api, session, django_assert_num_queries):
    # 1. SELECT the user named by the access token
    # 2. SELECT the session, among the user's sessions
    with django_assert_num_queries(2):
        response = api.get(f"{SESSIONS}/{session.pk}")

    assert response.status_code == 200


def test_session_patch(api, session, django_assert_num_queries):
    # 1. SELECT the user named by the access token
    # 2. SELECT the session, among the user's sessions
    # 3. SAVEPOINT
    # 4. UPDATE the changed fields and updated_at
    # 5. RELEASE SAVEPOINT
    with django_assert_num_queries(5):
        response = api.patch(f"{SESSIONS}/{session.pk}", {"title": "y"}, format="json")

    assert response.status_code == 200
