"""Writes are committed before the response is sent.

These tests run outside a wrapping transaction and read back through a second
connection (tests/db.py), which sees only committed rows.
"""

import uuid

import pytest
from django.db import transaction

from accounts.models import User
from conversations.models import Conversation, Thread
from tests.conftest import PASSWORD
from tests.db import count_rows, fetch_row

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = "/api/v1/chatkit/sessions"


def test_second_connection_does_not_see_uncommitted_rows(owner):
    with transaction.atomic():
        conversation = Conversation.objects.create(user=owner)
        assert fetch_row(Conversation, conversation.pk) is None
    assert fetch_row(Conversation, conversation.pk) is not None


def test_created_session_is_committed(api, owner):
    body = {"title": "Plans", "metadata": {"k": "v"}, "instructions": "Be brief."}
    response = api.post(SESSIONS, body, format="json")
    assert response.status_code == 201

    row = fetch_row(Conversation, response.json()["data"]["id"])
    assert row is not None
    assert row["user_id"] == owner.pk
    assert row["title"] == "Plans"
    assert row["metadata"] == {"k": "v"}
    assert row["instructions"] == "Be brief."


def test_created_thread_is_committed(api, owner):
    conversation = Conversation.objects.create(user=owner)
    response = api.post(f"{SESSIONS}/{conversation.pk}/threads", {"title": "Side"}, format="json")
    assert response.status_code == 201

    row = fetch_row(Thread, response.json()["data"]["id"])
    assert row is not None
    assert row["conversation_id"] == conversation.pk
    assert row["title"] == "Side"


def test_session_patch_is_committed(api, owner):
    conversation = Conversation.objects.create(user=owner)
    response = api.patch(
        f"{SESSIONS}/{conversation.pk}",
        {"title": "Renamed", "metadata": {"a": "b"}},
        format="json",
    )
    assert response.status_code == 200

    row = fetch_row(Conversation, conversation.pk)
    assert row["title"] == "Renamed"
    assert row["metadata"] == {"a": "b"}
    assert row["updated_at"] > row["created_at"]


def test_thread_patch_is_committed(api, owner):
    conversation = Conversation.objects.create(user=owner)
    thread = Thread.objects.create(conversation=conversation)
    response = api.patch(
        f"{SESSIONS}/{conversation.pk}/threads/{thread.pk}", {"title": "Renamed"}, format="json"
    )
    assert response.status_code == 200
    assert fetch_row(Thread, thread.pk)["title"] == "Renamed"


def test_session_delete_is_committed_with_its_threads(api, owner):
    conversation = Conversation.objects.create(user=owner)
    Thread.objects.create(conversation=conversation)
    Thread.objects.create(conversation=conversation)
    assert count_rows(Thread, conversation=conversation.pk) == 2

    response = api.delete(f"{SESSIONS}/{conversation.pk}")
    assert response.status_code == 204

    assert fetch_row(Conversation, conversation.pk) is None
    assert count_rows(Thread, conversation=conversation.pk) == 0


def test_thread_delete_is_committed(api, owner):
    conversation = Conversation.objects.create(user=owner)
    thread = Thread.objects.create(conversation=conversation)
    response = api.delete(f"{SESSIONS}/{conversation.pk}/threads/{thread.pk}")
    assert response.status_code == 204

    assert fetch_row(Thread, thread.pk) is None
    assert fetch_row(Conversation, conversation.pk) is not None


def test_registered_user_is_committed(anon):
    username = f"user-{uuid.uuid4().hex[:8]}"
    response = anon.post(
        "/api/v1/auth/register", {"username": username, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 201

    row = fetch_row(User, response.json()["data"]["id"])
    assert row is not None
    assert row["username"] == username
