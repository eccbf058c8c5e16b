"""Prometheus metrics over HTTP: the requests' own, open event streams, and ``/metrics``.

``GET /metrics`` is answered only to ``Authorization: Bearer <METRICS_TOKEN>``
(compared in constant time). Without the setting, or without that header,
the request goes on as if the endpoint did not exist: the same 404 (or
400 for a foreign Host) as any unknown path, so nobody without the token
learns that it is there. With the token it is answered whatever the Host
and over plain HTTP, as the health probes are: Prometheus scrapes each
instance by its address.

Under gunicorn (``PROMETHEUS_MULTIPROC_DIR`` set, see gunicorn.conf.py) each
process writes its values to files in that directory and the scrape adds
up every process's, the dead ones' counters included; elsewhere (runserver,
tests in one process) the scrape reads this process's registry. Either way
the database's state (``conversations.metrics.RunStateCollector``) is read
at scrape time.
"""

import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.db import connections
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.http.response import HttpResponseBase
from django.urls import Resolver404, resolve
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from conversations.metrics import RunStateCollector

PATH = "/metrics"

HTTP_REQUESTS = Counter(
    "chatbot_http_requests",
    "HTTP requests answered, by route, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "chatbot_http_request_duration_seconds",
    "Time to answer an HTTP request; for an event stream, until its response starts.",
    ["route", "method"],
)
# livesum: the open streams of the processes alive now; a dead process's go with it.
STREAMS_ACTIVE = Gauge(
    "chatbot_http_streams_active",
    "Event streams (text/event-stream responses) open now.",
    multiprocess_mode="livesum",
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Paths answered by middleware, not by a URL pattern.
MIDDLEWARE_ROUTES = {PATH: "metrics"}
UNMATCHED = "unmatched"


def route_of(request: HttpRequest) -> str:
    """The request's URL pattern by name (its route when unnamed), never the raw path.

    A request answered before its URL was resolved (a body too large, a
    foreign Host, a probe) is resolved here; a path that matches no pattern
    is ``unmatched`` (static files, unknown paths).
    """
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return MIDDLEWARE_ROUTES.get(request.path_info, UNMATCHED)
    return match.view_name or match.route or UNMATCHED


class HTTPMetricsMiddleware:
    """Count every request by route, method and status, and time it (outermost middleware)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in METHODS else "other"
        route = route_of(request)
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        return response


class CountedStream:
    """An event stream's body, counted in ``chatbot_http_streams_active`` until it is closed.

    Django registers ``close`` with the response, and the WSGI server calls
    it however the stream ended (read to its end, cut short, never read).
    """

    def __init__(self, body: Iterable[bytes]) -> None:
        self.body = body
        self.closed = False
        STREAMS_ACTIVE.inc()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            STREAMS_ACTIVE.dec()


class _Scrape:
    """The collectors one scrape reads, in order."""

    def __init__(self, *sources: Collector) -> None:
        self.sources = sources

    def collect(self):
        for source in self.sources:
            yield from source.collect()


@cache
def scrape_source() -> _Scrape:
    # prometheus_client chooses between per-process values and files when it
    # is imported, from this same variable; the scrape follows its choice.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        processes: Collector = MultiProcessCollector(None)
    else:
        processes = REGISTRY
    return _Scrape(processes, RunStateCollector())


def authorized(request: HttpRequest) -> bool:
    """Whether the request carries ``Bearer <METRICS_TOKEN>``, and the token is set."""
    token = settings.METRICS_TOKEN
    if not token:
        return False
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def scrape(request: HttpRequest) -> HttpResponse:
    """The metrics in the format the scraper asks for (Prometheus text by default)."""
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse(status=405)
        response["Allow"] = "GET, HEAD"
        return response
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(scrape_source()), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


class MetricsEndpointMiddleware:
    """Answer ``/metrics`` to the token's holder; pass anything else on.

    Before SecurityMiddleware (its HTTPS redirect) and CommonMiddleware (its
    Host check): a scrape comes over plain HTTP to an instance's address.
    Anything else, ``/metrics`` without the token included, meets them as
    usual.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info != PATH or not authorized(request):
            return self.get_response(request)
        response = scrape(request)
        # What CommonMiddleware, skipped here, would have set.
        response["Content-Length"] = str(len(response.content))
        return response


# The worker's listener -----------------------------------------------------


def metrics_app(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
    """A WSGI app of ``/metrics`` alone, on the same terms, for the worker.

    The runs a worker carries out are counted in its process, which serves
    no HTTP otherwise; this is what Prometheus scrapes there.
    """
    request = WSGIRequest(environ)
    try:
        if request.path_info == PATH and authorized(request):
            response = scrape(request)
        else:
            response = HttpResponseNotFound()
    finally:
        # Each scrape has a thread of its own, and so a connection of its
        # own (the database's state): hand it back, as a request's end would.
        connections.close_all()
    response["Content-Length"] = str(len(response.content))
    start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
    return [b"" if request.method == "HEAD" else response.content]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # A line per scrape, every few seconds, says nothing.
        pass


def serve_metrics() -> str | None:
    """Serve ``metrics_app`` on ``WORKER_METRICS_BIND`` in a thread; what to print, or None.

    Nothing without ``METRICS_TOKEN``, as on the web.
    """
    bind = settings.WORKER_METRICS_BIND
    if not bind or not settings.METRICS_TOKEN:
        return None
    host, _, port = bind.rpartition(":")
    server = make_server(
        host, int(port), metrics_app, server_class=_Server, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return f"Metrics on http://{host}:{server.server_port}{PATH}"
