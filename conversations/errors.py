"""Domain errors. Each carries a stable code; the HTTP adapter picks the status."""

from typing import Any


class DomainError(Exception):
    code = "DOMAIN_ERROR"
    message = "The request cannot be carried out."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        self.message = message or self.message
        self.details = details
        super().__init__(self.message)


class ObjectNotFound(DomainError):
    code = "NOT_FOUND"
    message = "Not found."


class OwnerNotFound(DomainError):
    """The authenticated user was deleted while the request was under way."""

    code = "AUTHENTICATION_FAILED"
    message = "User not found."


class SessionLimitReached(DomainError):
    code = "SESSION_LIMIT_REACHED"
    message = "You have reached the maximum number of sessions."


class RunInProgress(DomainError):
    code = "RUN_IN_PROGRESS"
    message = "This thread already has an active run."


class RunNotActive(DomainError):
    code = "RUN_NOT_ACTIVE"
    message = "This run has already ended."


class LimitReached(DomainError):
    """A user holds as much of a shared resource as one user may: retry once some is freed.

    ``details`` say which (``reason``) and the ``limit``.
    """

    code = "THROTTLED"
    message = "You have reached a limit on what one user may hold at once."


class ActiveRunLimitReached(LimitReached):
    message = "You have too many runs queued or in progress; retry when one has ended."
