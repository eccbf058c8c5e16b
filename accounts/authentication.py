"""Bearer authentication with simplejwt, with verified tokens and their users cached briefly.

Every authenticated request verifies its token's signature and loads its
user row; together they are a third of the cost of a cheap endpoint. So each
process keeps, for ``AUTH_CACHE_SECONDS``:

- the tokens it verified, by their exact text: the same text verifies the
  same way, and a token's expiry is still checked on every request;
- the user rows it loaded. Saving or deleting a user evicts it in the
  process that did so at once; other processes see the change when their
  entry expires, so a deactivated user is refused everywhere within that
  many seconds. The user checks (active, token not revoked) run on every
  request, cached row or not.

0 turns both caches off.
"""

import copy
import threading
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from rest_framework_simplejwt import authentication
from rest_framework_simplejwt import utils as jwt_utils
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken, TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.utils import get_md5_hash_password

# Enough for every user (or token) active within a few seconds; past it, a
# cache starts afresh rather than growing.
MAX_CACHED = 10_000


class TTLCache:
    """Values by key, each kept for ``ttl`` seconds; safe across threads.

    Values are shallow-copied in and out: a request may set attributes on
    what it got without touching the cache.
    """

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return copy.copy(entry[1])

    def put(self, key: Any, value: Any, ttl: float) -> None:
        with self._lock:
            if len(self._entries) >= MAX_CACHED:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + ttl, copy.copy(value))

    def evict(self, key: Any) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


user_cache = TTLCache()
token_cache = TTLCache()


def evict_user(sender, instance, **kwargs) -> None:
    """Signal receiver: a saved or deleted user is read afresh by the next request."""
    user_cache.evict(str(instance.pk))


class JWTAuthentication(authentication.JWTAuthentication):
    """simplejwt's bearer authentication, with tokens and users cached briefly.

    A ``sub`` that is no UUID is a 401, not a 500: such a token can only come
    from whoever holds the signing key, but the lookup must still fail as an
    authentication error.
    """

    def get_validated_token(self, raw_token: bytes):
        ttl = settings.AUTH_CACHE_SECONDS
        token = token_cache.get(raw_token) if ttl > 0 else None
        if token is not None:
            try:
                # Against the time now: a token's own clock is when it was parsed.
                token.check_exp(current_time=jwt_utils.aware_utcnow())
            except TokenError:
                # Expired since: verify afresh, for simplejwt's own error.
                token_cache.evict(raw_token)
            else:
                return token
        token = super().get_validated_token(raw_token)
        if ttl > 0:
            token_cache.put(raw_token, token, ttl)
        return token

    def get_user(self, validated_token):
        try:
            key = str(validated_token[api_settings.USER_ID_CLAIM])
        except KeyError:
            raise InvalidToken("Token contained no recognizable user identification") from None
        ttl = settings.AUTH_CACHE_SECONDS
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
