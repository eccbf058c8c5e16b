"""The served document's error responses come from the status table and the views' ``raises``."""

import pytest
import yaml
from rest_framework.test import APIClient

from chatkit.exceptions import ERRORS

RUNS = "/api/v1/chatkit/sessions/{session_id}/threads/{thread_id}/runs"
CHATKIT = "/api/v1/chatkit/sessions/{session_id}/chatkit"


@pytest.fixture(scope="module")
def document():
    # Generated once for the module: the document needs no database.
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def _operations(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def _codes(response: dict) -> set[str]:
    return {part.split(":")[0] for part in response["description"].split("; ")}


def test_every_error_response_is_the_envelope_with_codes_of_its_status(document):
    for path, method, operation in _operations(document):
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                continue
            where = (method, path, status)
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, where
            for code in _codes(response):
                assert str(ERRORS[code].status) == status, (where, code)


def test_every_operation_lists_what_any_request_can_meet(document):
    for path, method, operation in _operations(document):
        assert {"400", "411", "413", "429", "500", "503"} <= set(operation["responses"]), (
            method,
            path,
        )


@pytest.mark.parametrize(
    ("path", "method", "status", "code"),
    [
        ("/api/v1/chatkit/sessions", "post", "409", "SESSION_LIMIT_REACHED"),
        (RUNS, "post", "409", "RUN_IN_PROGRESS"),
        (CHATKIT, "post", "409", "RUN_IN_PROGRESS"),
        (CHATKIT, "post", "404", "NOT_FOUND"),
        (CHATKIT, "post", "415", "UNSUPPORTED_MEDIA_TYPE"),
        (f"{RUNS}/{{id}}/cancel", "post", "409", "RUN_NOT_ACTIVE"),
        (RUNS, "post", "409", "IDEMPOTENCY_KEY_IN_USE"),
        (RUNS, "post", "422", "IDEMPOTENCY_KEY_REUSED"),
        ("/api/v1/chatkit/sessions/{id}", "get", "404", "NOT_FOUND"),
        ("/api/v1/auth/register", "post", "403", "PERMISSION_DENIED"),
        ("/api/v1/auth/token", "post", "401", "AUTHENTICATION_FAILED"),
        ("/api/v1/auth/me", "get", "401", "NOT_AUTHENTICATED"),
    ],
)
def test_an_operation_lists_the_errors_its_view_raises(document, path, method, status, code):
    assert code in _codes(document["paths"][path][method]["responses"][status])


def test_registration_needs_no_credentials_so_lists_no_401(document):
    assert "401" not in document["paths"]["/api/v1/auth/register"]["post"]["responses"]


def test_the_chatkit_endpoint_answers_bare_objects_and_its_own_events(document):
    ok = document["paths"][CHATKIT]["post"]["responses"]["200"]["content"]
    schemas = document["components"]["schemas"]

    # The protocol's objects, not the API's envelope; ChatKit's events, not a run's.
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatKitResponse"}
    assert ok["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/ChatKitEvent"}
    request = document["paths"][CHATKIT]["post"]["requestBody"]["content"]["application/json"]
    assert request["schema"] == {"$ref": "#/components/schemas/ChatKitRequest"}
    kinds = [option["properties"]["type"]["const"] for option in schemas["ChatKitRequest"]["oneOf"]]
    assert sorted(kinds) == sorted(
        [
            "threads.create",
            "threads.add_user_message",
            "threads.retry_after_item",
            "threads.get_by_id",
            "threads.list",
            "items.list",
            "threads.update",
            "threads.delete",
            "items.feedback",
        ]
    )
