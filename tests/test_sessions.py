"""Sessions: create, list, retrieve, patch, delete."""

import re
import uuid
from datetime import timedelta

import pytest

from conversations.models import Conversation, Thread

SESSIONS = "/api/v1/chatkit/sessions"
SESSION_FIELDS = {"id", "user_id", "title", "metadata", "instructions", "created_at", "updated_at"}
UTC_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture
def session(owner) -> Conversation:
    return Conversation.objects.create(
        user=owner, title="Trip", metadata={"topic": "travel"}, instructions="Be brief."
    )


def test_create_with_empty_body_uses_defaults(api, owner):
    response = api.post(SESSIONS, {}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == SESSION_FIELDS
    assert data["title"] == "New Chat"
    assert data["metadata"] == {}
    assert data["instructions"] == ""
    assert data["user_id"] == str(owner.pk)
    assert UTC_TIMESTAMP.fullmatch(data["created_at"])
    assert UTC_TIMESTAMP.fullmatch(data["updated_at"])
    stored = Conversation.objects.get(pk=uuid.UUID(data["id"]))
    assert stored.user == owner
    assert stored.title == "New Chat"


def test_create_stores_given_fields(api, owner):
    body = {"title": "Plans", "metadata": {"a": "1", "b": ""}, "instructions": "  Be brief.\n"}

    response = api.post(SESSIONS, body, format="json")

    assert response.status_code == 201
    data = response.json()["data"]
    assert {k: data[k] for k in body} == body
    stored = Conversation.objects.get(pk=data["id"])
    assert (stored.title, stored.metadata, stored.instructions) == (
        "Plans",
        {"a": "1", "b": ""},
        "  Be brief.\n",
    )


def test_create_accepts_limits_exactly(api):
    body = {
        "title": "t" * 200,
        "instructions": "i" * 32000,
        "metadata": {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)},
    }

    response = api.post(SESSIONS, body, format="json")

    assert response.status_code == 201
    assert Conversation.objects.get(pk=response.json()["data"]["id"]).metadata == body["metadata"]


def test_create_accepts_unicode(api):
    body = {"title": "Café ☕ 日本語 🎉", "metadata": {"ключ": "значение"}}

    response = api.post(SESSIONS, body, format="json")

    assert response.status_code == 201
    stored = Conversation.objects.get(pk=response.json()["data"]["id"])
    assert stored.title == body["title"]
    assert stored.metadata == body["metadata"]


def test_list_returns_only_own_sessions_newest_first(api, owner, stranger):
    older = Conversation.objects.create(user=owner, title="older")
    newer = Conversation.objects.create(user=owner, title="newer")
    Conversation.objects.filter(pk=older.pk).update(created_at=newer.created_at - timedelta(1))
    Conversation.objects.create(user=stranger, title="not yours")

    response = api.get(SESSIONS)

    assert response.status_code == 200
    body = response.json()
    assert [s["id"] for s in body["data"]] == [str(newer.pk), str(older.pk)]
    assert set(body["data"][0]) == SESSION_FIELDS
    assert body["pagination"] == {
        "has_more": False,
        "first_id": str(newer.pk),
        "last_id": str(older.pk),
    }


def test_list_when_empty(api):
    response = api.get(SESSIONS)

    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "data": [],
        "pagination": {"has_more": False, "first_id": None, "last_id": None},
    }


def test_retrieve(api, session, owner):
    response = api.get(f"{SESSIONS}/{session.pk}")

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == str(session.pk)
    assert data["user_id"] == str(owner.pk)
    assert data["title"] == "Trip"
    assert data["metadata"] == {"topic": "travel"}
    assert data["instructions"] == "Be brief."


def test_retrieve_missing_is_404(api):
    response = api.get(f"{SESSIONS}/{uuid.uuid4()}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_patch_changes_only_given_fields(api, session):
    response = api.patch(f"{SESSIONS}/{session.pk}", {"title": "Renamed"}, format="json")

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["title"] == "Renamed"
    assert data["metadata"] == {"topic": "travel"}
    assert data["instructions"] == "Be brief."
    session.refresh_from_db()
    assert session.title == "Renamed"
    assert session.metadata == {"topic": "travel"}
    assert session.instructions == "Be brief."


def test_patch_replaces_metadata_and_clears_instructions(api, session):
    response = api.patch(
        f"{SESSIONS}/{session.pk}", {"metadata": {"new": "x"}, "instructions": ""}, format="json"
    )

    assert response.status_code == 200
    session.refresh_from_db()
    assert session.metadata == {"new": "x"}
    assert session.instructions == ""


def test_patch_bumps_updated_at_and_keeps_created_at(api, session):
    earlier = session.created_at - timedelta(hours=1)
    Conversation.objects.filter(pk=session.pk).update(updated_at=earlier)

    response = api.patch(f"{SESSIONS}/{session.pk}", {"title": "Renamed"}, format="json")

    assert response.status_code == 200
    stored = Conversation.objects.get(pk=session.pk)
    assert stored.updated_at > earlier
    assert stored.created_at == session.created_at
    data = response.json()["data"]
    assert data["updated_at"] == stored.updated_at.isoformat().replace("+00:00", "Z")


def test_empty_patch_changes_nothing(api, session):
    before = Conversation.objects.filter(pk=session.pk).values().get()

    response = api.patch(f"{SESSIONS}/{session.pk}", {}, format="json")

    assert response.status_code == 200
    assert Conversation.objects.filter(pk=session.pk).values().get() == before


def test_patch_missing_is_404(api):
    response = api.patch(f"{SESSIONS}/{uuid.uuid4()}", {"title": "x"}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_delete_removes_session_and_its_threads(api, session, owner):
    Thread.objects.create(conversation=session)
    other = Conversation.objects.create(user=owner)
    kept = Thread.objects.create(conversation=other)

    response = api.delete(f"{SESSIONS}/{session.pk}")

    assert response.status_code == 204
    assert response.content == b""
    assert not Conversation.objects.filter(pk=session.pk).exists()
    assert not Thread.objects.filter(conversation_id=session.pk).exists()
    assert Thread.objects.filter(pk=kept.pk).exists()
    assert api.get(f"{SESSIONS}/{session.pk}").status_code == 404


def test_delete_twice_is_404(api, session):
    api.delete(f"{SESSIONS}/{session.pk}")

    response = api.delete(f"{SESSIONS}/{session.pk}")

    assert response.status_code == 404


@pytest.mark.parametrize(("method", "on_item"), [("put", True), ("post", True), ("put", False)])
def test_unsupported_method_is_405(api, session, method, on_item):
    url = f"{SESSIONS}/{session.pk}" if on_item else SESSIONS

    response = getattr(api, method)(url, {"title": "Replaced"}, format="json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    session.refresh_from_db()
    assert session.title == "Trip"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path"),
    [("get", ""), ("post", ""), ("get", "/{id}"), ("patch", "/{id}"), ("delete", "/{id}")],
)
def test_anonymous_is_401(anon, method, path):
    url = SESSIONS + path.format(id=uuid.uuid4())

    response = getattr(anon, method)(url, {}, format="json")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"
    assert Conversation.objects.count() == 0
