"""Request id, health probes and body size, applied before anything reads the request."""

import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

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
    """413 before any parser reads a body larger than ``MAX_BODY_BYTES``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        length = request.META.get("CONTENT_LENGTH") or "0"
        limit = settings.MAX_BODY_BYTES
        # isdigit() alone accepts "²", which int() rejects.
        if not (length.isascii() and length.isdigit()):
            return error_response(400, "MALFORMED_REQUEST", "Content-Length is not a number.")
        digits = length.lstrip("0")
        # Compare lengths first: int() refuses strings of more than 4300 digits.
        if len(digits) > len(str(limit)) or int(digits or "0") > limit:
            return error_response(
                413,
                "PAYLOAD_TOO_LARGE",
                f"The request body is larger than {limit} bytes.",
                details={"max_bytes": limit},
            )
        return self.get_response(request)
