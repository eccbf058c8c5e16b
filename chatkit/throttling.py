"""Rate limits, per scope, from settings (THROTTLE_AUTH, THROTTLE_RUNS, THROTTLE_USER).

Counters live in the Django cache: with several gunicorn workers or hosts,
configure a shared cache (CACHE_URL=redis://...), or each process counts on
its own and the effective limit is multiplied by the number of processes.
"""

from rest_framework.throttling import SimpleRateThrottle


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
