"""Rate limits: auth per client address, run creation and reads per user.

Rates are read when the throttle classes are imported, into
``SimpleRateThrottle.THROTTLE_RATES``; the tests make them small by patching
that dict. A throttled request gets 429 ``THROTTLED`` in the error envelope
with a positive integer ``Retry-After``; nobody else is affected.
"""

import pytest
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle
from rest_framework_simplejwt.tokens import RefreshToken

from conversations.models import Conversation, Thread
from tests.conftest import PASSWORD, client_for, make_user

SESSIONS = "/api/v1/chatkit/sessions"
AUTH = "/api/v1/auth"


@pytest.fixture
def rates(monkeypatch):
    """Set throttle rates for one test: ``rates(auth="3/min", ...)``."""

    def set_rates(**scopes: str) -> None:
        for scope, rate in scopes.items():
            monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, scope, rate)

    return set_rates


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def runs_path(thread) -> str:
    return f"{SESSIONS}/{thread.conversation_id}/threads/{thread.pk}/runs"


def from_address(address: str, **extra) -> APIClient:
    """An anonymous client at ``address`` that sends JSON bodies."""
    client = APIClient(REMOTE_ADDR=address, **extra)
    client.default_format = "json"
    return client


def user_client(user) -> APIClient:
    """``client_for(user)`` that sends JSON bodies."""
    client = client_for(user)
    client.default_format = "json"
    return client


def assert_throttled(response, *, limit_seconds: int = 60) -> None:
    assert response.status_code == 429, response.content
    retry_after = response["Retry-After"]
    assert retry_after.isascii(), retry_after
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= limit_seconds
    body = response.json()
    assert body["success"] is False
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == "THROTTLED"
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response["X-Request-ID"]


# Auth: per client address ---------------------------------------------------


def test_token_endpoint_throttles_per_client_address(rates, owner):
    rates(auth="3/min")
    attacker = from_address("203.0.113.7")
    wrong = {"username": "owner", "password": "guess"}

    answers = [attacker.post(f"{AUTH}/token", wrong) for _ in range(3)]
    blocked = attacker.post(f"{AUTH}/token", {"username": "owner", "password": PASSWORD})

    assert [a.status_code for a in answers] == [401, 401, 401]
    assert_throttled(blocked)
    # The right password does not get past the limit either.
    right = attacker.post(f"{AUTH}/token", {"username": "owner", "password": PASSWORD})
    assert_throttled(right)
    # Another address is not affected.
    neighbour = from_address("203.0.113.8")
    ok = neighbour.post(f"{AUTH}/token", {"username": "owner", "password": PASSWORD})
    assert ok.status_code == 200, ok.json()


def test_auth_endpoints_share_one_budget_per_address(rates, owner):
    rates(auth="4/min")
    client = from_address("198.51.100.20")
    refresh = str(RefreshToken.for_user(owner))

    register = client.post(f"{AUTH}/register", {"username": "newbie", "password": PASSWORD})
    token = client.post(f"{AUTH}/token", {"username": "owner", "password": PASSWORD})
    rotate = client.post(f"{AUTH}/token/refresh", {"refresh": refresh})
    logout = client.post(f"{AUTH}/logout", {"refresh": token.json()["data"]["refresh"]})
    assert [r.status_code for r in (register, token, rotate, logout)] == [201, 200, 200, 200]

    for path, body in [
        ("register", {"username": "another", "password": PASSWORD}),
        ("token", {"username": "owner", "password": PASSWORD}),
        ("token/refresh", {"refresh": rotate.json()["data"]["refresh"]}),
        ("logout", {"refresh": rotate.json()["data"]["refresh"]}),
    ]:
        assert_throttled(client.post(f"{AUTH}/{path}", body))


def test_spoofed_forwarded_for_does_not_escape_the_auth_limit(rates, owner):
    rates(auth="2/min")
    wrong = {"username": "owner", "password": "guess"}
    answers = [
        from_address("192.0.2.1", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}").post(
            f"{AUTH}/token", wrong, format="json"
        )
        for i in range(3)
    ]

    assert [a.status_code for a in answers[:2]] == [401, 401]
    assert_throttled(answers[2])


def test_auth_throttle_does_not_touch_authenticated_api_calls(rates, owner):
    rates(auth="1/min")
    client = from_address("192.0.2.50")
    client.post(f"{AUTH}/token", {"username": "owner", "password": "guess"})
    assert_throttled(client.post(f"{AUTH}/token", {"username": "owner", "password": "guess"}))

    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(owner).access_token}")
    assert client.get(f"{AUTH}/me").status_code == 200
    assert client.get(SESSIONS).status_code == 200


# Runs: per user, separate from reads ----------------------------------------


def test_run_creation_throttles_per_user_separately_from_reads(rates, owner, thread):
    rates(runs="2/min", user="100/min")
    api = user_client(owner)

    created = [api.post(runs_path(thread), {"input": f"hi {i}"}) for i in range(2)]
    blocked = api.post(runs_path(thread), {"input": "one too many"})

    assert [r.status_code for r in created] == [201, 201]
    assert_throttled(blocked)
    assert thread.runs.count() == 2
    # Reads and other writes of the same user go on.
    assert api.get(runs_path(thread)).status_code == 200
    assert api.get(f"{SESSIONS}/{thread.conversation_id}").status_code == 200
    assert api.post(SESSIONS, {}).status_code == 201
    # The throttled request stored nothing.
    assert thread.messages.filter(content="one too many").count() == 0


def test_run_creation_limit_of_one_user_leaves_another_alone(rates, owner, thread):
    rates(runs="1/min", user="100/min")
    api = user_client(owner)
    assert api.post(runs_path(thread), {"input": "mine"}).status_code == 201
    assert_throttled(api.post(runs_path(thread), {"input": "again"}))

    other = make_user("other")
    other_thread = Thread.objects.create(conversation=Conversation.objects.create(user=other))
    response = user_client(other).post(runs_path(other_thread), {"input": "hers"})

    assert response.status_code == 201, response.json()


def test_run_creation_limit_holds_across_threads_and_sessions(rates, owner, thread):
    rates(runs="1/min", user="100/min")
    api = user_client(owner)
    second = Thread.objects.create(conversation=Conversation.objects.create(user=owner))

    assert api.post(runs_path(thread), {"input": "first"}).status_code == 201
    assert_throttled(api.post(runs_path(second), {"input": "second"}))


def test_reads_throttle_per_user(rates, owner, stranger):
    rates(user="5/min")
    api = user_client(owner)

    reads = [api.get(SESSIONS) for _ in range(5)]
    blocked = api.get(SESSIONS)

    assert [r.status_code for r in reads] == [200] * 5
    assert_throttled(blocked)
    # Per user, not per route: every API call of that user waits.
    assert_throttled(api.get(f"{AUTH}/me"))
    assert_throttled(api.post(SESSIONS, {}))
    # The same user's requests from another address are the same user.
    moved = user_client(owner)
    moved.defaults["REMOTE_ADDR"] = "192.0.2.99"
    assert_throttled(moved.get(SESSIONS))
    # Another user is not affected.
    assert user_client(stranger).get(SESSIONS).status_code == 200


def test_two_users_behind_one_address_have_their_own_limits(rates, owner, stranger):
    rates(user="2/min")
    mine = user_client(owner)
    theirs = user_client(stranger)
    for client in (mine, theirs):
        client.defaults["REMOTE_ADDR"] = "192.0.2.200"

    assert [mine.get(SESSIONS).status_code for _ in range(2)] == [200, 200]
    assert_throttled(mine.get(SESSIONS))
    assert [theirs.get(SESSIONS).status_code for _ in range(2)] == [200, 200]
    assert_throttled(theirs.get(SESSIONS))


def test_throttled_response_retry_after_follows_the_rate(rates, owner):
    rates(user="1/hour")
    api = user_client(owner)
    assert api.get(SESSIONS).status_code == 200

    blocked = api.get(SESSIONS)

    assert_throttled(blocked, limit_seconds=3600)
    assert int(blocked["Retry-After"]) > 60
    assert blocked.json()["error"]["details"]["retry_after_seconds"] == int(blocked["Retry-After"])
