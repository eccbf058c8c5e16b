"""Bearer authentication with simplejwt, and a short cache of the token's user.

Every authenticated request needs its user row. Loading it is one query and
a third of the cost of a cheap endpoint, so each process keeps the rows it
loaded for ``AUTH_USER_CACHE_SECONDS``. Saving or deleting a user evicts it
in the process that did so at once; other processes see the change when
their entry expires, so a deactivated user is refused everywhere within
that many seconds (0 turns the cache off). The user checks (active, token
not revoked) run on every request, cached row or not.
"""

import copy
import threading
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from rest_framework_simplejwt import authentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.utils import get_md5_hash_password

# Enough for every user active within a few seconds; past it, the cache
# starts afresh rather than growing.
MAX_CACHED_USERS = 10_000


class UserCache:
    """User rows by id, each kept for ``ttl`` seconds; safe across threads."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        # A copy: a request may change its user without touching the cache.
        return copy.copy(entry[1])

    def put(self, key: str, user: Any, ttl: float) -> None:
        with self._lock:
            if len(self._entries) >= MAX_CACHED_USERS:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + ttl, copy.copy(user))

    def evict(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


user_cache = UserCache()


def evict_user(sender, instance, **kwargs) -> None:
    """Signal receiver: a saved or deleted user is read afresh by the next request."""
    user_cache.evict(str(instance.pk))


class JWTAuthentication(authentication.JWTAuthentication):
    """simplejwt's bearer authentication, with the user row cached briefly.

    A ``sub`` that is no UUID is a 401, not a 500: such a token can only come
    from whoever holds the signing key, but the lookup must still fail as an
    authentication error.
    """

    def get_user(self, validated_token):
        try:
            key = str(validated_token[api_settings.USER_ID_CLAIM])
        except KeyError:
            raise InvalidToken("Token contained no recognizable user identification") from None
        ttl = settings.AUTH_USER_CACHE_SECONDS
        user = user_cache.get(key) if ttl > 0 else None
        if user is None:
            try:
                user = super().get_user(validated_token)
            except (ValidationError, ValueError, TypeError):
                raise AuthenticationFailed("User not found.", code="user_not_found") from None
            if ttl > 0:
                user_cache.put(key, user, ttl)
            return user
        self._check(user, validated_token)
        return user

    @staticmethod
    def _check(user, validated_token) -> None:
        """simplejwt's checks of a loaded user, for a user from the cache."""
        if api_settings.CHECK_USER_IS_ACTIVE and not user.is_active:
            raise AuthenticationFailed("User is inactive", code="user_inactive")
        if api_settings.CHECK_REVOKE_TOKEN and validated_token.get(
            api_settings.REVOKE_TOKEN_CLAIM
        ) != get_md5_hash_password(user.password):
            raise AuthenticationFailed(
                "The user's password has been changed.", code="password_changed"
            )
