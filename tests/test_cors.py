"""CORS for the origins in CORS_ALLOWED_ORIGINS (none by default), e.g. ChatKit JS's page.

Preflights of the configured origins are answered with the Authorization
header allowed; answers, errors included, carry Access-Control-Allow-Origin
and expose X-Request-ID and Retry-After; other origins get no CORS header,
so a browser keeps their pages from reading anything.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chatkit_client import chatkit_path

pytestmark = pytest.mark.django_db

ORIGIN = "https://chat.example.com"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def allowed(settings):
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN, "http://localhost:5173"]


def preflight(client, path: str, origin: str):
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type, idempotency-key",
    )


def test_a_preflight_of_an_allowed_origin_allows_the_bearer_header(anon, session, allowed):
    response = preflight(anon, chatkit_path(session.pk), ORIGIN)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    allowed_headers = {h.strip() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed_headers
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response
    assert response["X-Request-ID"]


def test_answers_to_an_allowed_origin_expose_the_request_id_and_retry_after(api, session, allowed):
    response = api.post(
        chatkit_path(session.pk),
        {"type": "threads.list", "params": {}},
        format="json",
        HTTP_ORIGIN=ORIGIN,
    )

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip().lower() for h in response["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "retry-after"} <= exposed


def test_errors_to_an_allowed_origin_carry_cors_headers_too(anon, api, session, allowed, settings):
    settings.MAX_BODY_BYTES = 10
    unauthenticated = anon.post(chatkit_path(session.pk), {}, format="json", HTTP_ORIGIN=ORIGIN)
    too_large = api.post(
        chatkit_path(session.pk),
        {"type": "threads.list", "params": {}},
        format="json",
        HTTP_ORIGIN=ORIGIN,
    )

    assert (unauthenticated.status_code, too_large.status_code) == (401, 413)
    for response in (unauthenticated, too_large):
        assert response["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "https://chat.example.com.evil", "null"]
)
def test_other_origins_get_no_cors_headers(anon, api, session, allowed, origin):
    answered = api.post(
        chatkit_path(session.pk),
        {"type": "threads.list", "params": {}},
        format="json",
        HTTP_ORIGIN=origin,
    )
    refused = preflight(anon, chatkit_path(session.pk), origin)

    assert answered.status_code == 200
    for response in (answered, refused):
        assert "Access-Control-Allow-Origin" not in response
        assert "Access-Control-Allow-Headers" not in response


def test_no_origin_is_allowed_by_default(anon, session, settings):
    assert settings.CORS_ALLOWED_ORIGINS == []

    response = preflight(anon, chatkit_path(session.pk), ORIGIN)

    assert "Access-Control-Allow-Origin" not in response


def test_cors_is_for_the_api_only(anon, allowed):
    response = anon.get("/healthz", HTTP_ORIGIN=ORIGIN)

    assert response.status_code == 200

    assert "Access-Control-Allow-Origin" not in response


def test_the_origins_come_from_the_environment_comma_separated():
    env = {
        **os.environ,
        "DEBUG": "1",
        "CORS_ALLOWED_ORIGINS": f"{ORIGIN}, http://localhost:5173,",
        "DJANGO_SETTINGS_MODULE": "chatbot_project.settings",
    }
    code = "from django.conf import settings; print(settings.CORS_ALLOWED_ORIGINS)"

    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )

    assert shown.stdout.strip() == str([ORIGIN, "http://localhost:5173"])
