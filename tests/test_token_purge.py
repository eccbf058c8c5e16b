"""Expired refresh tokens and their blacklist rows are dropped, by the worker, on a schedule.

Every login and every rotation stores a refresh token (simplejwt's
OutstandingToken), every logout and rotation a blacklist row for the old one;
without a purge both tables grow for ever. Once a token has expired it is
refused for that alone, so its rows protect nothing.
"""

import threading
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.services import purge_expired_tokens
from conversations.management.commands import worker
from conversations.tasks import maintenance
from tests.db import count_rows
from tests.sse import wait_until, worker_process

REFRESH = "/api/v1/auth/token/refresh"


def token(user, *, expired: bool = False, blacklisted: bool = False) -> RefreshToken:
    """A refresh token of ``user`` as a login stores it; its row backdated when ``expired``."""
    refresh = RefreshToken.for_user(user)
    if blacklisted:
        refresh.blacklist()
    if expired:
        past = timezone.now() - timedelta(seconds=1)
        OutstandingToken.objects.filter(jti=refresh["jti"]).update(expires_at=past)
    return refresh


def stored(refresh: RefreshToken) -> bool:
    return count_rows(OutstandingToken, jti=refresh["jti"]) == 1


@pytest.mark.django_db(transaction=True)
def test_purge_drops_expired_tokens_with_their_blacklist_rows_and_keeps_the_rest(anon, owner):
    expired = [token(owner, expired=True), token(owner, expired=True, blacklisted=True)]
    live, live_blacklisted = token(owner), token(owner, blacklisted=True)

    assert purge_expired_tokens() == 2

    assert [stored(each) for each in expired] == [False, False]
    assert [stored(live), stored(live_blacklisted)] == [True, True]
    assert count_rows(BlacklistedToken) == 1
    # The blacklist still holds for a token that has not expired.
    refused = anon.post(REFRESH, {"refresh": str(live_blacklisted)}, format="json")
    assert refused.status_code == 401
    assert purge_expired_tokens() == 0


@pytest.mark.django_db(transaction=True)
def test_worker_maintenance_purges_expired_tokens_at_first_then_hourly(owner, request):
    rounds = []

    def counted(**kwargs) -> None:
        rounds.append(1)

    maintenance.connect(counted)
    request.addfinalizer(lambda: maintenance.disconnect(counted))
    first = token(owner, expired=True, blacklisted=True)
    stop = threading.Event()
    rounds_thread = threading.Thread(target=worker.maintain_forever, args=(0.01, stop, 0.01))
    rounds_thread.start()
    try:
        wait_until(lambda: not stored(first), timeout=30, what="the first round's purge")
        later = token(owner, expired=True)
        seen = len(rounds)
        wait_until(lambda: len(rounds) >= seen + 5, timeout=30, what="five more rounds")
        # Not before an hour: simplejwt's table is read whole each time.
        assert stored(later)
    finally:
        stop.set()
        rounds_thread.join(timeout=30)
    assert count_rows(BlacklistedToken) == 0


@pytest.mark.django_db(transaction=True)
def test_the_worker_command_purges_expired_tokens(owner):
    expired, live = token(owner, expired=True, blacklisted=True), token(owner)

    # Its first housekeeping round comes after one heartbeat.
    with worker_process(threads=1, RUN_HEARTBEAT_SECONDS="1") as running:
        running.wait_for(lambda: not stored(expired), timeout=60, what="the expired token to go")

    assert stored(live)
    assert count_rows(BlacklistedToken) == 0
