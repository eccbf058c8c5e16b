"""Verified tokens and their users are cached per process for AUTH_CACHE_SECONDS."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient
from rest_framework_simplejwt import tokens
from rest_framework_simplejwt import utils as jwt_utils
from rest_framework_simplejwt.backends import TokenBackend
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken
from rest_framework_simplejwt.utils import aware_utcnow

from accounts import authentication
from accounts.authentication import TTLCache, token_cache, user_cache
from accounts.models import User
from conversations.models import Conversation
from tests.conftest import client_for, make_user
from tests.db import fetch_rows

ME = "/api/v1/auth/me"
SESSIONS = "/api/v1/chatkit/sessions"

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(monkeypatch):
    """The cache's clock, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(authentication.time, "monotonic", lambda: now[0])
    return now


def user_queries(context) -> list[str]:
    return [q["sql"] for q in context.captured_queries if '"accounts_user"' in q["sql"]]


def test_the_second_request_reads_no_user_row(api):
    with CaptureQueriesContext(connection) as first:
        assert api.get(SESSIONS).status_code == 200
    with CaptureQueriesContext(connection) as second:
        assert api.get(SESSIONS).status_code == 200

    assert len(user_queries(first)) == 1
    assert user_queries(second) == []
    assert len(second) == len(first) - 1


def test_each_token_gets_its_own_user(owner, stranger):
    owner_api, stranger_api = client_for(owner), client_for(stranger)

    for _ in range(3):
        assert owner_api.get(ME).json()["data"]["username"] == "owner"
        assert stranger_api.get(ME).json()["data"]["username"] == "stranger"


def test_deactivating_a_user_is_seen_by_the_next_request(api, owner):
    assert api.get(ME).status_code == 200

    owner.is_active = False
    owner.save()

    response = api.get(ME)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AUTHENTICATION_FAILED"


def test_deleting_a_user_is_seen_by_the_next_request(api, owner):
    assert api.get(ME).status_code == 200

    owner.delete()

    assert api.get(ME).status_code == 401


def test_a_change_made_elsewhere_is_seen_once_the_entry_expires(api, owner, settings, clock):
    settings.AUTH_CACHE_SECONDS = 5
    assert api.get(ME).status_code == 200
    # No signal: as when another process (or plain SQL) deactivates the user.
    User.objects.filter(pk=owner.pk).update(is_active=False)

    clock[0] += 4.9
    assert api.get(ME).status_code == 200
    clock[0] += 0.2
    assert api.get(ME).status_code == 401


def test_zero_seconds_turns_the_cache_off(api, owner, settings):
    settings.AUTH_CACHE_SECONDS = 0
    assert api.get(ME).status_code == 200

    User.objects.filter(pk=owner.pk).update(is_active=False)

    assert api.get(ME).status_code == 401
    assert user_cache.get(str(owner.pk)) is None


def test_a_cached_user_is_checked_on_every_request(api, owner):
    assert api.get(ME).status_code == 200
    cached = user_cache.get(str(owner.pk))
    cached.is_active = False
    user_cache.put(str(owner.pk), cached, ttl=60)

    assert api.get(ME).status_code == 401


def test_a_request_changing_its_user_does_not_change_the_cache(clock):
    cache = TTLCache()
    user = User(username="first")
    cache.put("k", user, ttl=5)

    user.username = "changed after put"
    got = cache.get("k")
    got.username = "changed after get"

    assert cache.get("k").username == "first"


def test_the_cache_starts_afresh_when_full(monkeypatch, clock):
    monkeypatch.setattr(authentication, "MAX_CACHED", 3)
    cache = TTLCache()
    for n in range(3):
        cache.put(str(n), User(username=f"u{n}"), ttl=5)
    cache.put("3", User(username="u3"), ttl=5)

    assert [cache.get(str(n)) for n in range(3)] == [None, None, None]
    assert cache.get("3").username == "u3"


def test_a_renamed_user_is_read_afresh(db):
    first = make_user("first")
    api = client_for(first)
    assert api.get(ME).json()["data"]["username"] == "first"
    first.username = "renamed"
    first.save()

    assert api.get(ME).json()["data"]["username"] == "renamed"


@pytest.mark.django_db(transaction=True)
def test_a_user_deleted_by_another_process_gets_401_and_nothing_is_stored(owner):
    api = client_for(owner)
    assert api.get(ME).status_code == 200
    cached = user_cache.get(str(owner.pk))
    owner.delete()
    # What another process still holds for a few seconds.
    user_cache.put(str(owner.pk), cached, ttl=60)

    response = api.post(SESSIONS, {"title": "Orphan"}, format="json")

    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] == "AUTHENTICATION_FAILED"
    assert fetch_rows(Conversation) == []


@pytest.fixture
def verifications(monkeypatch):
    """How many times a token's signature was checked."""
    calls = []
    decode = TokenBackend.decode

    def counting(self, token, verify=True):
        calls.append(token)
        return decode(self, token, verify)

    monkeypatch.setattr(TokenBackend, "decode", counting)
    return calls


def test_a_token_is_verified_once_then_reused(api, verifications):
    for _ in range(3):
        assert api.get(ME).status_code == 200

    assert len(verifications) == 1


def test_a_cached_token_still_expires(owner, verifications, monkeypatch):
    token = AccessToken.for_user(owner)
    token.set_exp(lifetime=timedelta(minutes=1))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get(ME).status_code == 200
    later = aware_utcnow() + timedelta(minutes=2)
    monkeypatch.setattr(tokens, "aware_utcnow", lambda: later)
    monkeypatch.setattr(jwt_utils, "aware_utcnow", lambda: later)

    response = api.get(ME)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AUTHENTICATION_FAILED"
    assert token_cache.get(str(token).encode()) is None


def test_a_tampered_copy_of_a_cached_token_is_refused(api, owner):
    token = str(RefreshToken.for_user(owner).access_token)
    good = APIClient()
    good.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert good.get(ME).status_code == 200
    last = "A" if token[-1] != "A" else "B"
    tampered = APIClient()
    tampered.credentials(HTTP_AUTHORIZATION=f"Bearer {token[:-1]}{last}")

    assert tampered.get(ME).status_code == 401
    assert good.get(ME).status_code == 200


def test_zero_seconds_verifies_every_token(api, settings, verifications):
    settings.AUTH_CACHE_SECONDS = 0
    for _ in range(3):
        assert api.get(ME).status_code == 200

    assert len(verifications) == 3
