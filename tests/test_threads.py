"""Threads of a session: create, list, retrieve, patch, delete."""

import uuid
from datetime import timedelta

import pytest

from conversations import services
from conversations.models import Conversation, Thread

SESSIONS = "/api/v1/chatkit/sessions"
THREAD_FIELDS = {"id", "session_id", "title", "metadata", "created_at", "updated_at"}


@pytest.fixture
def session(owner) -> Conversation:
    return Conversation.objects.create(user=owner, title="Trip")


@pytest.fixture
def thread(session) -> Thread:
    return Thread.objects.create(conversation=session, title="Flights", metadata={"k": "v"})


def threads_url(session: Conversation) -> str:
    return f"{SESSIONS}/{session.pk}/threads"


def thread_url(session: Conversation, thread: Thread) -> str:
    return f"{threads_url(session)}/{thread.pk}"


def test_create_with_empty_body_uses_defaults(api, session):
    response = api.post(threads_url(session), {}, format="json")

    assert response.status_code == 201
    data = response.json()["data"]
    assert set(data) == THREAD_FIELDS
    assert data["session_id"] == str(session.pk)
    assert data["title"] == "New Thread"
    assert data["metadata"] == {}
    stored = Thread.objects.get(pk=data["id"])
    assert stored.conversation_id == session.pk


def test_create_stores_given_fields(api, session):
    response = api.post(
        threads_url(session), {"title": "Hotels", "metadata": {"city": "Oslo"}}, format="json"
    )

    assert response.status_code == 201
    stored = Thread.objects.get(pk=response.json()["data"]["id"])
    assert (stored.title, stored.metadata) == ("Hotels", {"city": "Oslo"})


def test_create_rejects_instructions(api, session):
    response = api.post(threads_url(session), {"instructions": "x"}, format="json")

    assert response.status_code == 400
    assert "instructions" in response.json()["error"]["details"]
    assert not Thread.objects.exists()


def test_create_in_missing_session_is_404(api):
    response = api.post(f"{SESSIONS}/{uuid.uuid4()}/threads", {}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert not Thread.objects.exists()


def test_list_returns_only_this_sessions_threads_newest_first(api, owner, session):
    older = Thread.objects.create(conversation=session, title="older")
    newer = Thread.objects.create(conversation=session, title="newer")
    Thread.objects.filter(pk=older.pk).update(created_at=newer.created_at - timedelta(1))
    Thread.objects.create(conversation=Conversation.objects.create(user=owner))

    response = api.get(threads_url(session))

    assert response.status_code == 200
    body = response.json()
    assert [t["id"] for t in body["data"]] == [str(newer.pk), str(older.pk)]
    assert set(body["data"][0]) == THREAD_FIELDS
    assert body["pagination"] == {
        "has_more": False,
        "first_id": str(newer.pk),
        "last_id": str(older.pk),
    }


def test_retrieve(api, session, thread):
    response = api.get(thread_url(session, thread))

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == str(thread.pk)
    assert data["session_id"] == str(session.pk)
    assert data["title"] == "Flights"
    assert data["metadata"] == {"k": "v"}


def test_patch_changes_only_given_fields(api, session, thread):
    earlier = thread.created_at - timedelta(hours=1)
    Thread.objects.filter(pk=thread.pk).update(updated_at=earlier)

    response = api.patch(thread_url(session, thread), {"title": "Trains"}, format="json")

    assert response.status_code == 200
    assert response.json()["data"]["title"] == "Trains"
    stored = Thread.objects.get(pk=thread.pk)
    assert stored.title == "Trains"
    assert stored.metadata == {"k": "v"}
    assert stored.updated_at > earlier
    assert stored.created_at == thread.created_at


def test_patch_metadata(api, session, thread):
    response = api.patch(thread_url(session, thread), {"metadata": {"a": "b"}}, format="json")

    assert response.status_code == 200
    assert Thread.objects.get(pk=thread.pk).metadata == {"a": "b"}


def test_delete_removes_only_the_thread(api, session, thread):
    sibling = Thread.objects.create(conversation=session)

    response = api.delete(thread_url(session, thread))

    assert response.status_code == 204
    assert not Thread.objects.filter(pk=thread.pk).exists()
    assert Thread.objects.filter(pk=sibling.pk).exists()
    assert Conversation.objects.filter(pk=session.pk).exists()
    assert api.get(thread_url(session, thread)).status_code == 404


@pytest.mark.parametrize(
    ("method", "body"), [("get", None), ("patch", {"title": "Moved"}), ("delete", None)]
)
def test_thread_through_another_own_session_is_404(api, owner, thread, method, body):
    other_session = Conversation.objects.create(user=owner)
    before = Thread.objects.filter(pk=thread.pk).values().get()

    response = getattr(api, method)(thread_url(other_session, thread), body, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert Thread.objects.filter(pk=thread.pk).values().get() == before


def test_missing_thread_is_404(api, session):
    response = api.get(f"{threads_url(session)}/{uuid.uuid4()}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(("method", "on_item"), [("put", True), ("post", True), ("put", False)])
def test_unsupported_method_is_405(api, session, thread, method, on_item):
    url = thread_url(session, thread) if on_item else threads_url(session)

    response = getattr(api, method)(url, {"title": "Replaced"}, format="json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert Thread.objects.get(pk=thread.pk).title == "Flights"


def test_anonymous_is_401(anon, session, thread):
    response = anon.get(thread_url(session, thread))

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"


def test_owned_thread_loads_the_thread_and_its_session_as_the_orm_does(owner):
    session = Conversation.objects.create(
        user=owner, title="Plans", instructions="Be brief.", metadata={"team": "ops"}
    )
    thread = Thread.objects.create(conversation=session, title="Week 1", metadata={"n": "1"})

    loaded = services.owned_thread(user_id=owner.pk, session_id=session.pk, thread_id=thread.pk)

    fresh = Thread.objects.select_related("conversation").get(pk=thread.pk)
    for model, got, expected in (
        (Thread, loaded, fresh),
        (Conversation, loaded.conversation, fresh.conversation),
    ):
        for field in model._meta.concrete_fields:
            assert getattr(got, field.attname) == getattr(expected, field.attname), field.name
    # Saved as loaded, nothing changes.
    loaded.save()
    assert Thread.objects.get(pk=thread.pk).metadata == {"n": "1"}


def test_owned_thread_is_none_unless_thread_session_and_user_all_match(owner, stranger):
    session = Conversation.objects.create(user=owner)
    thread = Thread.objects.create(conversation=session)
    other_session = Conversation.objects.create(user=owner)

    assert (
        services.owned_thread(user_id=stranger.pk, session_id=session.pk, thread_id=thread.pk)
        is None
    )
    assert (
        services.owned_thread(user_id=owner.pk, session_id=other_session.pk, thread_id=thread.pk)
        is None
    )
    assert (
        services.owned_thread(user_id=owner.pk, session_id=session.pk, thread_id=uuid.uuid4())
        is None
    )
