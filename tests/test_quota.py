"""MAX_SESSIONS_PER_USER holds, also when many creates for one user arrive at once."""

import threading
from collections import Counter

import pytest
from django.db import connection
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from conversations.models import Conversation
from tests.db import count_rows

SESSIONS = "/api/v1/chatkit/sessions"
LIMIT = 5
CONCURRENT_CLIENTS = 25


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.MAX_SESSIONS_PER_USER = LIMIT


@pytest.mark.django_db
def test_create_past_the_limit_is_409(api, owner):
    for _ in range(LIMIT):
        assert api.post(SESSIONS, {}, format="json").status_code == 201

    response = api.post(SESSIONS, {"title": "One too many"}, format="json")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "SESSION_LIMIT_REACHED"
    assert error["details"] == {"limit": LIMIT}
    assert Conversation.objects.filter(user=owner).count() == LIMIT
    assert not Conversation.objects.filter(title="One too many").exists()


@pytest.mark.django_db
def test_limit_is_per_user(api, stranger_api, owner, stranger):
    Conversation.objects.bulk_create(Conversation(user=owner) for _ in range(LIMIT))

    assert api.post(SESSIONS, {}, format="json").status_code == 409
    assert stranger_api.post(SESSIONS, {}, format="json").status_code == 201


@pytest.mark.django_db
def test_deleting_a_session_frees_a_slot(api, owner):
    sessions = Conversation.objects.bulk_create(Conversation(user=owner) for _ in range(LIMIT))
    assert api.post(SESSIONS, {}, format="json").status_code == 409

    api.delete(f"{SESSIONS}/{sessions[0].pk}")

    assert api.post(SESSIONS, {}, format="json").status_code == 201
    assert api.post(SESSIONS, {}, format="json").status_code == 409


@pytest.mark.django_db
def test_user_already_past_a_lowered_limit_cannot_create(api, owner, settings):
    Conversation.objects.bulk_create(Conversation(user=owner) for _ in range(LIMIT))
    settings.MAX_SESSIONS_PER_USER = 2

    response = api.post(SESSIONS, {}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["details"] == {"limit": 2}


def _post_all_at_once(user, clients: int) -> list[tuple[int, str | None]]:
    """POST a session for ``user`` from ``clients`` threads released together."""
    token = str(AccessToken.for_user(user))
    barrier = threading.Barrier(clients)
    results: list[tuple[int, str | None]] = [(0, "not run")] * clients

    def post(index: int) -> None:
        try:
            client = APIClient(raise_request_exception=False)
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
            barrier.wait()
            response = client.post(SESSIONS, {}, format="json")
            code = response.json()["error"]["code"] if response.status_code >= 400 else None
            results[index] = (response.status_code, code)
        except Exception as exc:  # reported through results, asserted below
            results[index] = (-1, repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("existing", [0, 3])
def test_concurrent_creates_never_pass_the_limit(owner, existing):
    Conversation.objects.bulk_create(Conversation(user=owner) for _ in range(existing))

    results = _post_all_at_once(owner, CONCURRENT_CLIENTS)

    outcomes = Counter(results)
    assert outcomes == {
        (201, None): LIMIT - existing,
        (409, "SESSION_LIMIT_REACHED"): CONCURRENT_CLIENTS - (LIMIT - existing),
    }, outcomes
    assert Conversation.objects.filter(user=owner).count() == LIMIT
    assert count_rows(Conversation, user=owner.pk) == LIMIT
