"""Request id, HEAD without a body, health probes and the request body's size,
before anything reads it."""

import io
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from conversations.errors import ErrorCode

from . import health
from .exceptions import error_response
from .logging import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class RequestIDMiddleware:
    """Adopt the client's sane ``X-Request-ID`` or make one; echo it on every response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = supplied if _SANE_REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        request.request_id = request_id
        # Deliberately not reset on the way out: django.request logs 4xx and 5xx
        # responses, and streamed bodies run, after this middleware has returned,
        # and their records need the id too. The next request sets its own.
        request_id_var.set(request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


class HeadWithoutBodyMiddleware:
    """A HEAD gets the GET's status and headers, and no body.

    Servers iterate the body of every response, HEAD ones included; one that
    sends it (or a proxy that passes it on) desynchronises a keep-alive
    connection, and a streamed body would run for nothing: a run's events
    follower would poll the database until the run ended. So a HEAD's body
    is dropped here, and a stream's generator is never started. The GET's
    Content-Length, when known, stays, as RFC 9110 allows.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.method == "HEAD":
            if response.streaming:
                # The old generator is still closed with the response.
                response.streaming_content = ()
            else:
                response.content = b""
        return response


class HealthProbeMiddleware:
    """Answer ``/healthz`` and ``/readyz`` whatever the request's Host.

    Probes come by address (the image's HEALTHCHECK, an orchestrator, a load
    balancer), with a Host that ``ALLOWED_HOSTS`` rightly refuses for the rest
    of the site: CommonMiddleware would answer them 400. So they are answered
    here, before it; nothing on the way reads the Host, and the probes read
    only the method and the path. Every other path goes on unchanged.
    """

    PROBES = {"/healthz": health.healthz, "/readyz": health.readyz}

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.PROBES.get(request.path_info)
        if probe is None:
            return self.get_response(request)
        response = probe(request)
        # What CommonMiddleware, skipped here, would have set.
        if not response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))
        return response


class BodySizeLimitMiddleware:
    """413 before any parser reads a body over ``MAX_BODY_BYTES``; 411 if its length is unknown."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.MAX_BODY_BYTES
        if not request.META.get("CONTENT_LENGTH") and "HTTP_TRANSFER_ENCODING" in request.META:
            # Django reads as many bytes as Content-Length says: none here.
            # ChunkedRequestBody gives the length where the server decodes
            # the chunks (gunicorn); elsewhere, refuse rather than read nothing.
            return error_response(
                ErrorCode.LENGTH_REQUIRED,
                "This server needs a Content-Length for a request body.",
            )
        length = request.META.get("CONTENT_LENGTH") or "0"
        # isdigit() alone accepts "²", which int() rejects.
        if not (length.isascii() and length.isdigit()):
            return error_response(ErrorCode.MALFORMED_REQUEST, "Content-Length is not a number.")
        digits = length.lstrip("0")
        # Compare lengths first: int() refuses strings of more than 4300 digits.
        if len(digits) > len(str(limit)) or int(digits or "0") > limit:
            return error_response(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The request body is larger than {limit} bytes.",
                details={"max_bytes": limit},
            )
        return self.get_response(request)


class ChunkedRequestBody:
    """WSGI middleware: a chunked request body gets the Content-Length Django needs.

    Django reads a body only up to ``CONTENT_LENGTH``; a chunked request has
    none, so its body was read as empty and acted on without its fields.
    Where the server has decoded the chunks and ends the input at the body's
    end (``wsgi.input_terminated``, as gunicorn does), read it here, at most
    one byte past ``MAX_BODY_BYTES``, and pass it on with its length: a
    larger body is then refused with 413 by BodySizeLimitMiddleware, never
    held whole in memory.
    """

    def __init__(self, application: Callable[..., Iterable[bytes]]):
        self.application = application

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if (
            "HTTP_TRANSFER_ENCODING" in environ
            and not environ.get("CONTENT_LENGTH")
            and environ.get("wsgi.input_terminated")
        ):
            body = environ["wsgi.input"].read(settings.MAX_BODY_BYTES + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)
