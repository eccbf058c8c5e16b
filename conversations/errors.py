"""The contract's error codes, and the domain errors that carry them.

Every code a client can read in ``error.code`` (or in a failed run's
``error.code``) is a member of ``ErrorCode``: the domain's own, a run's
failures, and those the HTTP layer answers for requests the domain never
sees. The HTTP status of each lives in one table in the HTTP layer
(``chatkit.exceptions.ERRORS``).
"""

from typing import Any

from django.db import models


class ErrorCode(models.TextChoices):
    # Raised by the domain (DomainError subclasses below).
    NOT_FOUND = "NOT_FOUND"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    SESSION_LIMIT_REACHED = "SESSION_LIMIT_REACHED"
    RUN_IN_PROGRESS = "RUN_IN_PROGRESS"
    RUN_NOT_ACTIVE = "RUN_NOT_ACTIVE"
    THROTTLED = "THROTTLED"
    # Why a run failed (Run.error_code), never an HTTP answer.
    PROVIDER_ERROR = "PROVIDER_ERROR"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    PROVIDER_BAD_RESPONSE = "PROVIDER_BAD_RESPONSE"
    RUN_EXPIRED = "RUN_EXPIRED"
    # Answered by the HTTP layer for the request itself.
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    NOT_ACCEPTABLE = "NOT_ACCEPTABLE"
    IDEMPOTENCY_KEY_IN_USE = "IDEMPOTENCY_KEY_IN_USE"
    LENGTH_REQUIRED = "LENGTH_REQUIRED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


# The codes a failed run stores (the choices of Run.error_code).
RUN_FAILURES = (
    ErrorCode.PROVIDER_ERROR,
    ErrorCode.PROVIDER_TIMEOUT,
    ErrorCode.PROVIDER_BAD_RESPONSE,
    ErrorCode.RUN_EXPIRED,
)


class DomainError(Exception):
    code: ErrorCode
    message = "The request cannot be carried out."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        self.message = message or self.message
        self.details = details
        super().__init__(self.message)


class ObjectNotFound(DomainError):
    code = ErrorCode.NOT_FOUND
    message = "Not found."


class OwnerNotFound(DomainError):
    """The authenticated user was deleted while the request was under way."""

    code = ErrorCode.AUTHENTICATION_FAILED
    message = "User not found."


class SessionLimitReached(DomainError):
    code = ErrorCode.SESSION_LIMIT_REACHED
    message = "You have reached the maximum number of sessions."


class RunInProgress(DomainError):
    code = ErrorCode.RUN_IN_PROGRESS
    message = "This thread already has an active run."


class RunNotActive(DomainError):
    code = ErrorCode.RUN_NOT_ACTIVE
    message = "This run has already ended."


class LimitReached(DomainError):
    """A user holds as much of a shared resource as one user may: retry once some is freed.

    ``details`` say which (``reason``) and the ``limit``.
    """

    code = ErrorCode.THROTTLED
    message = "You have reached a limit on what one user may hold at once."


class ActiveRunLimitReached(LimitReached):
    message = "You have too many runs queued or in progress; retry when one has ended."
