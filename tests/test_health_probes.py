"""/healthz and /readyz answer whatever the Host: probes come by address, not by name.

The image's HEALTHCHECK fetches http://127.0.0.1:8000/healthz, and
orchestrators and load balancers probe a container by its address, while
ALLOWED_HOSTS names the public host. The rest of the site still refuses
such a Host.
"""

import pytest

PROBE_HOST = "10.0.0.5:8000"


@pytest.fixture(autouse=True)
def _public_name_only(settings):
    settings.ALLOWED_HOSTS = ["api.example.com"]


def test_healthz_by_address_is_200(anon):
    response = anon.get("/healthz", HTTP_HOST=PROBE_HOST)

    assert response.status_code == 200
    assert response.json() == {"success": True, "data": {"status": "ok"}}
    assert response["Content-Length"] == str(len(response.content))
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Request-ID"]


@pytest.mark.django_db
def test_readyz_by_address_is_200_when_the_database_is_ready(anon):
    response = anon.get("/readyz", HTTP_HOST=PROBE_HOST)

    assert response.status_code == 200
    assert response.json() == {"success": True, "data": {"status": "ready"}}


@pytest.mark.django_db
def test_readyz_by_address_still_checks_the_migrations(anon, monkeypatch):
    monkeypatch.setattr(
        "chatkit.health.MigrationExecutor.migration_plan", lambda self, targets: [("x", False)]
    )

    response = anon.get("/readyz", HTTP_HOST=PROBE_HOST)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert response.json()["error"]["details"] == {"pending_migrations": 1}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_on_a_probe_by_address_is_200_without_a_body(anon, path):
    response = anon.head(path, HTTP_HOST=PROBE_HOST)

    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_other_methods_on_a_probe_are_405(anon, path):
    response = anon.post(path, HTTP_HOST=PROBE_HOST)

    assert response.status_code == 405


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/v1/chatkit/sessions", "/api/v1/auth/token", "/admin/", "/healthz/", "/readyzz"]
)
def test_the_rest_of_the_site_refuses_that_host(api, path):
    response = api.get(path, HTTP_HOST=PROBE_HOST)

    assert response.status_code == 400
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "MALFORMED_REQUEST"


@pytest.mark.django_db
def test_the_api_answers_its_public_name(api):
    response = api.get("/api/v1/chatkit/sessions", HTTP_HOST="api.example.com")

    assert response.status_code == 200
