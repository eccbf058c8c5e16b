"""Requests that interleave with others: a deleted parent, a token used twice at once.

Interleavings are forced by wrapping a service so that the competing change
lands between the view's lookup and the service's write; simultaneous
requests come from threads released together by a barrier.
"""

import threading
from collections import Counter
from collections.abc import Callable

import pytest
from django.db import connection
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import User
from conversations import services
from conversations.models import Conversation, Thread
from tests.conftest import PASSWORD
from tests.db import count_rows

SESSIONS = "/api/v1/chatkit/sessions"


def after(first: Callable[[], object], service: Callable) -> Callable:
    """``service``, run just after ``first`` (the competing request's change)."""

    def wrapped(**kwargs):
        first()
        return service(**kwargs)

    return wrapped


def _delete_row(model, pk) -> Callable[[], object]:
    return lambda: model.objects.filter(pk=pk).delete()


@pytest.mark.django_db(transaction=True)
def test_patch_of_session_deleted_meanwhile_is_404(api, session, monkeypatch):
    monkeypatch.setattr(
        services,
        "conversation_update",
        after(_delete_row(Conversation, session.pk), services.conversation_update),
    )

    response = api.patch(f"{SESSIONS}/{session.pk}", {"title": "Late"}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert count_rows(Conversation, pk=session.pk) == 0


@pytest.mark.django_db(transaction=True)
def test_patch_of_thread_deleted_meanwhile_is_404(api, session, thread, monkeypatch):
    monkeypatch.setattr(
        services,
        "thread_update",
        after(_delete_row(Thread, thread.pk), services.thread_update),
    )

    response = api.patch(
        f"{SESSIONS}/{session.pk}/threads/{thread.pk}", {"title": "Late"}, format="json"
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert count_rows(Thread, pk=thread.pk) == 0


@pytest.mark.django_db(transaction=True)
def test_thread_create_in_session_deleted_meanwhile_is_404(api, session, monkeypatch):
    monkeypatch.setattr(
        services,
        "thread_create",
        after(_delete_row(Conversation, session.pk), services.thread_create),
    )

    response = api.post(f"{SESSIONS}/{session.pk}/threads", {}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert count_rows(Thread) == 0


@pytest.mark.django_db(transaction=True)
def test_delete_of_session_deleted_meanwhile_leaves_nothing(api, session, thread, monkeypatch):
    monkeypatch.setattr(
        services,
        "conversation_delete",
        after(_delete_row(Conversation, session.pk), services.conversation_delete),
    )

    response = api.delete(f"{SESSIONS}/{session.pk}")

    assert response.status_code in (204, 404)
    assert count_rows(Conversation, pk=session.pk) == 0
    assert count_rows(Thread, pk=thread.pk) == 0


def _all_at_once(clients: int, request: Callable[[APIClient], object]) -> list[tuple[int, str]]:
    """Make ``request`` from ``clients`` threads released together; (status, error code)."""
    barrier = threading.Barrier(clients)
    results: list[tuple[int, str]] = [(0, "not run")] * clients

    def run(index: int) -> None:
        try:
            client = APIClient(raise_request_exception=False)
            barrier.wait()
            response = request(client)
            code = response.json()["error"]["code"] if response.status_code >= 400 else ""
            results[index] = (response.status_code, code)
        except Exception as exc:  # reported through results, asserted by the caller
            results[index] = (-1, repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.django_db(transaction=True)
def test_refresh_token_used_twice_at_once_rotates_once(owner):
    refresh = str(RefreshToken.for_user(owner))

    results = _all_at_once(
        10, lambda c: c.post("/api/v1/auth/token/refresh", {"refresh": refresh}, format="json")
    )

    assert Counter(results) == {(200, ""): 1, (401, "AUTHENTICATION_FAILED"): 9}, results


@pytest.mark.django_db(transaction=True)
def test_same_username_registered_twice_at_once_is_created_once():
    body = {"username": "popular", "password": PASSWORD}

    results = _all_at_once(10, lambda c: c.post("/api/v1/auth/register", body, format="json"))

    assert Counter(results) == {(201, ""): 1, (400, "VALIDATION_ERROR"): 9}, results
    assert User.objects.filter(username="popular").count() == 1
