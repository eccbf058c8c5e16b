"""The response envelope, request ids, service endpoints, and failures that reveal nothing."""

import logging
import re
import uuid

import pytest
import yaml
from django.conf import settings
from django.core.management import call_command
from django.db import IntegrityError, OperationalError

from chatkit.logging import RequestIDFilter
from conversations import services

SESSIONS = "/api/v1/chatkit/sessions"
SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
SECRET = "secret internals"


@pytest.fixture
def request_id_logs(caplog):
    """caplog, with records stamped with the request id as the console handler does."""
    caplog.handler.addFilter(RequestIDFilter())
    caplog.set_level(logging.INFO)
    return caplog


# Request ids

# (name, how to make the request) covering each kind of response.
REQUESTS = {
    "200 list": lambda c, s: c.get(SESSIONS),
    "201 create": lambda c, s: c.post(SESSIONS, {}, format="json"),
    "204 delete": lambda c, s: c.delete(f"{SESSIONS}/{s.pk}"),
    "400 validation": lambda c, s: c.post(SESSIONS, {"title": 5}, format="json"),
    "400 malformed": lambda c, s: c.generic("POST", SESSIONS, "{", "application/json"),
    "404 item": lambda c, s: c.get(f"{SESSIONS}/{uuid.uuid4()}"),
    "404 route": lambda c, s: c.get("/api/v1/nothing-here"),
    "405": lambda c, s: c.put(f"{SESSIONS}/{s.pk}", {}, format="json"),
    "413": lambda c, s: c.generic(
        "POST", SESSIONS, b"x" * (settings.MAX_BODY_BYTES + 1), "application/json"
    ),
    "415": lambda c, s: c.generic("POST", SESSIONS, "title=x", "text/plain"),
    "healthz": lambda c, s: c.get("/healthz"),
    "readyz": lambda c, s: c.get("/readyz"),
    "non-api 404": lambda c, s: c.get("/nothing-here"),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_every_response_has_a_request_id(api, session, name):
    response = REQUESTS[name](api, session)

    assert SANE_ID.fullmatch(response["X-Request-ID"])


def test_unauthenticated_response_has_a_request_id(anon):
    response = anon.get(SESSIONS)

    assert response.status_code == 401
    assert SANE_ID.fullmatch(response["X-Request-ID"])
    assert response.json()["error"]["request_id"] == response["X-Request-ID"]


def test_request_ids_differ_between_requests(api):
    ids = {api.get(SESSIONS)["X-Request-ID"] for _ in range(3)}

    assert len(ids) == 3


@pytest.mark.parametrize("name", [n for n in REQUESTS if n.startswith("4")])
@pytest.mark.parametrize("sent", ["abc-123", "A.b_c-9", "x" * 128, "1"])
def test_sane_client_request_id_is_echoed_in_header_and_error(api, session, name, sent):
    api.defaults["HTTP_X_REQUEST_ID"] = sent

    response = REQUESTS[name](api, session)

    assert response["X-Request-ID"] == sent
    assert response.json()["error"]["request_id"] == sent


def test_sane_client_request_id_is_echoed_on_success(api):
    response = api.get(SESSIONS, HTTP_X_REQUEST_ID="trace-42")

    assert response.status_code == 200
    assert response["X-Request-ID"] == "trace-42"


@pytest.mark.parametrize(
    "sent", ["x" * 129, "has space", "semi;colon", "new\nline", 'quote"d', "slash/ed", "ünï"]
)
def test_insane_client_request_id_is_replaced(api, sent):
    response = api.get(f"{SESSIONS}/{uuid.uuid4()}", HTTP_X_REQUEST_ID=sent)

    assert response.status_code == 404
    assert response["X-Request-ID"] != sent
    assert SANE_ID.fullmatch(response["X-Request-ID"])
    assert response.json()["error"]["request_id"] == response["X-Request-ID"]
    assert sent not in response.content.decode()


def test_empty_client_request_id_is_replaced(api):
    response = api.get(SESSIONS, HTTP_X_REQUEST_ID="")

    assert SANE_ID.fullmatch(response["X-Request-ID"])


# Routes and service endpoints


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/nothing-here"),
        ("post", "/api/v1/nothing-here"),
        ("get", "/api/v2/chatkit/sessions"),
        ("get", "/api/"),
        ("get", SESSIONS + "/"),
        ("delete", "/api/v1/chatkit"),
    ],
)
def test_unknown_api_route_is_json_404(api, method, path):
    response = getattr(api, method)(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert response.json()["error"]["request_id"] == response["X-Request-ID"]


def test_unknown_api_route_is_404_without_credentials(anon):
    response = anon.get("/api/v1/nothing-here")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_healthz(anon):
    response = anon.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"success": True, "data": {"status": "ok"}}


@pytest.mark.django_db
def test_readyz(anon):
    response = anon.get("/readyz")

    assert response.status_code == 200
    assert response.json()["success"] is True


@pytest.mark.django_db
def test_readyz_is_503_when_the_database_is_down(anon, monkeypatch):
    def unreachable(self, *args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("chatkit.health.MigrationExecutor.migration_plan", unreachable)

    response = anon.get("/readyz")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(response["Retry-After"]) > 0
    assert "connection refused" not in response.content.decode()


@pytest.mark.django_db
def test_readyz_is_503_when_migrations_are_pending(anon, monkeypatch):
    monkeypatch.setattr(
        "chatkit.health.MigrationExecutor.migration_plan", lambda self, targets: [("x", False)]
    )

    response = anon.get("/readyz")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"


@pytest.mark.django_db
def test_schema_is_an_openapi_3_document_with_the_session_routes(anon):
    response = anon.get("/api/schema/")

    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/chatkit/sessions"])
    assert {"get", "patch", "delete"} <= set(paths["/api/v1/chatkit/sessions/{id}"])
    assert "put" not in paths["/api/v1/chatkit/sessions/{id}"]
    assert "/api/v1/chatkit/sessions/{session_id}/threads" in paths
    assert "/api/v1/chatkit/sessions/{session_id}/threads/{id}" in paths


@pytest.fixture
def collected_static(settings, tmp_path):
    """Static files collected as `make run` does: the manifest storage needs them
    to render any page that links a static file."""
    settings.STATIC_ROOT = tmp_path
    # The docs page needs only Swagger UI's assets; skipping the rest halves the time.
    call_command(
        "collectstatic",
        "--noinput",
        verbosity=0,
        ignore_patterns=["admin", "rest_framework", "redoc"],
    )


@pytest.mark.django_db
def test_docs_page(anon, collected_static):
    response = anon.get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"swagger-ui" in response.content
    assert b"/api/schema/" in response.content


# Failures


# (service to break, how to reach it)
SERVICE_CALLS = {
    "conversation_create": lambda c, s, t: c.post(SESSIONS, {}, format="json"),
    "conversation_update": lambda c, s, t: c.patch(
        f"{SESSIONS}/{s.pk}", {"title": "x"}, format="json"
    ),
    "conversation_delete": lambda c, s, t: c.delete(f"{SESSIONS}/{s.pk}"),
    "thread_create": lambda c, s, t: c.post(f"{SESSIONS}/{s.pk}/threads", {}, format="json"),
    "thread_delete": lambda c, s, t: c.delete(f"{SESSIONS}/{s.pk}/threads/{t.pk}"),
}


def _raiser(exception: Exception):
    def service(**kwargs):
        raise exception

    return service


@pytest.mark.parametrize("service", SERVICE_CALLS)
def test_unexpected_exception_is_a_generic_500_logged_with_request_id(
    api, session, thread, monkeypatch, request_id_logs, service
):
    monkeypatch.setattr(services, service, _raiser(RuntimeError(SECRET)))

    response = SERVICE_CALLS[service](api, session, thread)

    assert response.status_code == 500
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "INTERNAL_ERROR"
    assert body["error"]["details"] is None
    for leak in (SECRET, "RuntimeError", "Traceback", "services", ".py"):
        assert leak not in response.content.decode()

    with_traceback = [r for r in request_id_logs.records if r.exc_info]
    assert len(with_traceback) == 1, "logged once, with its traceback"
    record = with_traceback[0]
    assert record.levelno == logging.ERROR
    assert isinstance(record.exc_info[1], RuntimeError)
    assert SECRET in request_id_logs.text
    assert "Traceback" in request_id_logs.text
    assert record.request_id == response["X-Request-ID"] == body["error"]["request_id"]


def test_unexpected_database_error_is_a_generic_500(api, monkeypatch, request_id_logs):
    monkeypatch.setattr(
        services,
        "conversation_create",
        _raiser(IntegrityError(f'duplicate key value violates "x" {SECRET}')),
    )

    response = api.post(SESSIONS, {}, format="json")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL_ERROR"
    assert SECRET not in response.content.decode()
    assert "duplicate key" not in response.content.decode()
    assert SECRET in request_id_logs.text


@pytest.mark.parametrize("service", SERVICE_CALLS)
def test_database_outage_is_503_with_retry_after(
    api, session, thread, monkeypatch, request_id_logs, service
):
    monkeypatch.setattr(
        services, service, _raiser(OperationalError(f"could not connect: {SECRET}"))
    )

    response = SERVICE_CALLS[service](api, session, thread)

    assert response.status_code == 503
    body = response.json()
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(response["Retry-After"]) > 0
    assert SECRET not in response.content.decode()
    assert "could not connect" not in response.content.decode()
    logged = [r for r in request_id_logs.records if r.exc_info]
    assert len(logged) == 1
    assert logged[0].request_id == response["X-Request-ID"]


def test_client_error_warning_is_logged_with_request_id(api, request_id_logs):
    response = api.get(f"{SESSIONS}/{uuid.uuid4()}", HTTP_X_REQUEST_ID="find-me-in-the-log")

    assert response.status_code == 404
    warnings = [r for r in request_id_logs.records if r.name == "django.request"]
    assert warnings, "django.request logs 4xx responses"
    assert {r.request_id for r in warnings} == {"find-me-in-the-log"}
