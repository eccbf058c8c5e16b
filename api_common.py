"""What the two HTTP adapters (chatkit, accounts) share: throttles and strict input.

Rate limits, per scope, from settings (THROTTLE_AUTH, THROTTLE_RUNS, THROTTLE_USER).
Counters live in the Django cache: with several gunicorn workers or hosts,
configure a shared cache (CACHE_URL=redis://...), or each process counts on
its own and the effective limit is multiplied by the number of processes.
"""

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from django.http import HttpRequest
from rest_framework import serializers
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from conversations.validators import has_forbidden_characters


class AuthThrottle(SimpleRateThrottle):
    """Register, token, refresh and logout: per client address, strict."""

    scope = "auth"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class UserThrottle(SimpleRateThrottle):
    """Every API request: per user, or per client address when anonymous."""

    scope = "user"

    def get_cache_key(self, request, view) -> str:
        user = getattr(request, "user", None)
        ident = user.pk if user is not None and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class RunCreateThrottle(UserThrottle):
    """Starting runs (which call a provider): per user, stricter than reads."""

    scope = "runs"


class FailedLoginThrottle:
    """Failed sign-ins outside the API (the admin): per client address and per username.

    At the ``auth`` rate (THROTTLE_AUTH), with the same client address rules
    and cache as the token endpoint. Only failures count, so signing in is
    never held back by earlier successes; once either count is at the rate,
    ``retry_after`` says how long until the oldest failure in the window
    ages out, and no password should be checked until then.
    """

    def __init__(self, request: HttpRequest, username: str) -> None:
        auth = AuthThrottle()
        self.limit, self.duration = auth.num_requests, auth.duration
        self.cache, self.timer = auth.cache, auth.timer
        # Hashed: a username is anything the client typed, and cache keys
        # must stay short and printable.
        name = hashlib.sha256(username.casefold().encode()).hexdigest()
        self.keys = [
            f"throttle_failed_login_address_{auth.get_ident(request)}",
            f"throttle_failed_login_username_{name}",
        ]

    def _recent(self, key: str, now: float) -> list[float]:
        """Times of the key's failures within the window, newest first, at most ``limit``."""
        history = self.cache.get(key, [])
        return [moment for moment in history if moment > now - self.duration][: self.limit]

    def retry_after(self) -> int | None:
        """Whole seconds to wait before another attempt; None when one is allowed now."""
        if self.limit is None:
            return None
        now = self.timer()
        waits = [
            self.duration - (now - recent[-1])
            for recent in (self._recent(key, now) for key in self.keys)
            if len(recent) >= self.limit
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self) -> None:
        """Count one failed attempt against the address and the username."""
        if self.limit is None:
            return
        now = self.timer()
        for key in self.keys:
            self.cache.set(key, [now, *self._recent(key, now)][: self.limit], self.duration)


def _type_error(field: serializers.Field, value: Any) -> str | None:
    if isinstance(field, serializers.CharField):
        if not isinstance(value, str):
            return "Must be a string."
        if has_forbidden_characters(value):
            return "Must not contain NUL or surrogate characters."
    elif isinstance(field, serializers.BooleanField):
        if not isinstance(value, bool):
            return "Must be a boolean."
    elif isinstance(field, serializers.IntegerField) and (
        isinstance(value, bool) or not isinstance(value, int)
    ):
        return "Must be an integer."
    return None


class StrictInputMixin:
    """Reject what DRF would otherwise coerce or silently drop.

    A number sent for a string field, ``"true"`` for a boolean, or a field the
    client may not set (``id``, ``user_id``, timestamps, an unknown name) is a
    400 naming that field, so nothing half-understood is ever stored.
    """

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise serializers.ValidationError(
                {api_settings.NON_FIELD_ERRORS_KEY: ["Expected a JSON object."]}
            )
        errors: dict[str, list[str]] = {}
        for name, value in data.items():
            field = self.fields.get(name)
            if field is None:
                errors[name] = ["Unknown field."]
            elif field.read_only:
                errors[name] = ["This field is read-only."]
            elif value is not None:
                problem = _type_error(field, value)
                if problem:
                    errors[name] = [problem]
        if errors:
            raise serializers.ValidationError(errors)
        return super().to_internal_value(data)
