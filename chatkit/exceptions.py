"""The one place that decides the error envelope for the whole API.

``{"success": false, "error": {"code", "message", "details", "request_id"}}``.
Expected conditions map to their contract code; database outages become 503;
anything else is a bug: logged once with its stack trace and request id, and
answered with a generic 500 that reveals nothing.
"""

import logging
from typing import Any, NamedTuple

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response

from conversations.errors import DomainError, ErrorCode

from .logging import request_id_var

logger = logging.getLogger("chatkit.errors")

RETRY_AFTER_SECONDS = 5


class HttpError(NamedTuple):
    status: int
    # What the OpenAPI document says of the code (chatkit.schema).
    description: str
    # The message when the exception's own text is not a plain sentence;
    # domain errors bring their own.
    message: str = ""


# The one table of HTTP statuses: every code the API answers with. The
# exception handler and the OpenAPI document's error responses read it.
ERRORS: dict[ErrorCode, HttpError] = {
    ErrorCode.MALFORMED_REQUEST: HttpError(
        400,
        "the body is not valid JSON, or Content-Length is not a number",
        "The request body is not valid JSON.",
    ),
    ErrorCode.VALIDATION_ERROR: HttpError(
        400, "details maps field to messages", "The request is invalid."
    ),
    ErrorCode.NOT_AUTHENTICATED: HttpError(
        401,
        "no credentials were sent (with WWW-Authenticate)",
        "Authentication credentials were not provided.",
    ),
    ErrorCode.AUTHENTICATION_FAILED: HttpError(
        401,
        "the credentials are invalid, expired or revoked (with WWW-Authenticate)",
        "The credentials are invalid, expired or revoked.",
    ),
    ErrorCode.PERMISSION_DENIED: HttpError(
        403, "not allowed (registration is closed)", "You are not allowed to do this."
    ),
    ErrorCode.NOT_FOUND: HttpError(404, "missing, another user's, or a malformed id", "Not found."),
    ErrorCode.METHOD_NOT_ALLOWED: HttpError(
        405, "the route has no such method", "Method not allowed."
    ),
    ErrorCode.NOT_ACCEPTABLE: HttpError(
        406, "the Accept header asks for another format", "The requested format is not available."
    ),
    ErrorCode.SESSION_LIMIT_REACHED: HttpError(409, "the user has as many sessions as allowed"),
    ErrorCode.RUN_IN_PROGRESS: HttpError(
        409, "the thread has an active run (details.active_run_id)"
    ),
    ErrorCode.RUN_NOT_ACTIVE: HttpError(409, "the run already ended"),
    ErrorCode.IDEMPOTENCY_KEY_IN_USE: HttpError(
        409,
        "the same key is still being processed",
        "A request with this Idempotency-Key is still being processed.",
    ),
    ErrorCode.LENGTH_REQUIRED: HttpError(
        411, "a chunked body on a server that does not decode chunks"
    ),
    ErrorCode.PAYLOAD_TOO_LARGE: HttpError(413, "the body is over the size limit"),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: HttpError(
        415,
        "the body is not application/json in UTF-8",
        "The request body must be application/json.",
    ),
    ErrorCode.IDEMPOTENCY_KEY_REUSED: HttpError(
        422,
        "the Idempotency-Key was used for another request",
        "This Idempotency-Key was used for a different request.",
    ),
    ErrorCode.THROTTLED: HttpError(
        429, "too many requests, or too much held (with Retry-After)", "Too many requests."
    ),
    ErrorCode.INTERNAL_ERROR: HttpError(
        500, "a bug, logged with the request id", "An internal error occurred."
    ),
    ErrorCode.SERVICE_UNAVAILABLE: HttpError(
        503,
        "the database is unavailable (with Retry-After)",
        "The service is temporarily unavailable. Please retry.",
    ),
}


class IdempotencyKeyInUse(exceptions.APIException):
    status_code = ERRORS[ErrorCode.IDEMPOTENCY_KEY_IN_USE].status
    default_detail = ERRORS[ErrorCode.IDEMPOTENCY_KEY_IN_USE].message
    default_code = "idempotency_key_in_use"


class IdempotencyKeyReused(exceptions.APIException):
    status_code = ERRORS[ErrorCode.IDEMPOTENCY_KEY_REUSED].status
    default_detail = ERRORS[ErrorCode.IDEMPOTENCY_KEY_REUSED].message
    default_code = "idempotency_key_reused"


# Checked in order: the first class the exception is an instance of gives its code.
_API_EXCEPTIONS: dict[type[exceptions.APIException], ErrorCode] = {
    exceptions.ParseError: ErrorCode.MALFORMED_REQUEST,
    exceptions.ValidationError: ErrorCode.VALIDATION_ERROR,
    exceptions.NotAuthenticated: ErrorCode.NOT_AUTHENTICATED,
    exceptions.AuthenticationFailed: ErrorCode.AUTHENTICATION_FAILED,
    exceptions.PermissionDenied: ErrorCode.PERMISSION_DENIED,
    exceptions.NotFound: ErrorCode.NOT_FOUND,
    exceptions.MethodNotAllowed: ErrorCode.METHOD_NOT_ALLOWED,
    exceptions.NotAcceptable: ErrorCode.NOT_ACCEPTABLE,
    exceptions.UnsupportedMediaType: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    exceptions.Throttled: ErrorCode.THROTTLED,
    IdempotencyKeyInUse: ErrorCode.IDEMPOTENCY_KEY_IN_USE,
    IdempotencyKeyReused: ErrorCode.IDEMPOTENCY_KEY_REUSED,
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {
        "success": False,
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "request_id": request_id_var.get(),
        },
    }


def error_response(code: ErrorCode, message: str = "", details: Any = None) -> JsonResponse:
    """An error envelope for plain Django views and middleware."""
    status = ERRORS[code].status
    response = JsonResponse(
        error_body(code, message or ERRORS[code].message, details), status=status
    )
    if status == 503:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _validation_details(detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        return detail
    return {"non_field_errors": detail if isinstance(detail, list) else [detail]}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, DomainError):
        status = ERRORS[exc.code].status
        details, headers = exc.details, {}
        if status == 429:
            # A per-user limit (conversations.errors.LimitReached): as for
            # every 429, say when to try again.
            details = {**(details or {}), "retry_after_seconds": RETRY_AFTER_SECONDS}
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return Response(error_body(exc.code, exc.message, details), status=status, headers=headers)

    for exc_class, code in _API_EXCEPTIONS.items():
        if isinstance(exc, exc_class):
            return _api_error(exc, code)

    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.exception("Database unavailable")
        return _logged(
            Response(
                error_body(
                    ErrorCode.SERVICE_UNAVAILABLE,
                    ERRORS[ErrorCode.SERVICE_UNAVAILABLE].message,
                ),
                status=ERRORS[ErrorCode.SERVICE_UNAVAILABLE].status,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        )

    if isinstance(exc, exceptions.APIException):
        # An APIException the table does not know: keep its status, not its text.
        code = str(exc.default_code).upper()
        return _api_error(
            exc, code, status=exc.status_code, message="The request cannot be carried out."
        )

    kind = "Database error" if isinstance(exc, DatabaseError) else "Unhandled exception"
    logger.exception("%s in %s", kind, _view_name(context))
    return _logged(
        Response(
            error_body(ErrorCode.INTERNAL_ERROR, ERRORS[ErrorCode.INTERNAL_ERROR].message),
            status=ERRORS[ErrorCode.INTERNAL_ERROR].status,
        )
    )


def _api_error(
    exc: exceptions.APIException, code: str, *, status: int = 0, message: str = ""
) -> Response:
    """``status`` and ``message`` default to the table's for ``code``."""
    headers: dict[str, str] = {}
    details = None
    status = status or ERRORS[code].status
    message = message or ERRORS[code].message
    if isinstance(exc, exceptions.ValidationError):
        details = _validation_details(exc.detail)
    elif isinstance(exc.detail, str) and code not in {
        ErrorCode.MALFORMED_REQUEST,
        ErrorCode.AUTHENTICATION_FAILED,
    }:
        message = str(exc.detail)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    if isinstance(exc, exceptions.Throttled):
        # The contract promises Retry-After on every 429; DRF leaves ``wait``
        # unset when a throttle cannot tell (more requests recorded than allowed).
        wait = RETRY_AFTER_SECONDS if exc.wait is None else max(1, int(exc.wait + 0.999))
        headers["Retry-After"] = str(wait)
        details = {"retry_after_seconds": wait}
    return Response(error_body(code, message, details), status=status, headers=headers)


def _logged(response: Response) -> Response:
    # Tells django.request not to log this response again without its traceback.
    response._has_been_logged = True
    return response


def _view_name(context: dict[str, Any]) -> str:
    view = context.get("view")
    return type(view).__name__ if view is not None else "unknown view"


@csrf_exempt
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Unknown routes under /api/ answer in the envelope too, whatever DEBUG is.

    CSRF-exempt like the API's own views: otherwise a POST to an unknown route
    got Django's HTML 403 page instead of the 404.
    """
    return error_response(ErrorCode.NOT_FOUND)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400, for example a Host header not in ALLOWED_HOSTS."""
    if _is_api(request):
        return error_response(ErrorCode.MALFORMED_REQUEST, "Bad request.")
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return error_response(ErrorCode.PERMISSION_DENIED)
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return error_response(ErrorCode.NOT_FOUND)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500 for failures outside DRF views (django.request logged the traceback)."""
    if _is_api(request):
        return error_response(ErrorCode.INTERNAL_ERROR)
    return defaults.server_error(request)
