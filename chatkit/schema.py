"""OpenAPI post-processing: the envelope, the error responses and headers, as served.

drf-spectacular describes the serializers; this hook adds what the API does
around them, so that the document lists every status an operation can answer
with (and the contract's error envelope for each), the headers every response
carries, the ``Idempotency-Key`` header on the POSTs that honour it, and the
strict request bodies (no unknown fields, the metadata rules, no NUL).
"""

from typing import Any

from django.conf import settings
from rest_framework import serializers

from conversations.validators import (
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE_LENGTH,
)

from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import REPLAYED_HEADER, IdempotentPostMixin
from .middleware import REQUEST_ID_HEADER

# Strings the API stores may not hold NUL (PostgreSQL cannot store it).
NO_NUL = "^[^\\x00]*$"
# Python's str.isspace() characters, spelled out: a run's input must have
# something else, and regex engines disagree on what \s means.
_SPACE = "\\x09-\\x0d\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
NOT_ONLY_SPACE = f"^[^\\x00]*[^\\x00{_SPACE}][^\\x00]*$"

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "error": {
            "type": "object",
            "required": ["code", "message", "details", "request_id"],
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
                "message": {"type": "string"},
                "details": {"type": ["object", "null"], "additionalProperties": True},
                "request_id": {"type": "string"},
            },
        },
    },
}

METADATA_SCHEMA = {
    "type": "object",
    "description": (
        f"At most {METADATA_MAX_KEYS} keys of 1 to {METADATA_MAX_KEY_LENGTH} characters, "
        f"with string values of at most {METADATA_MAX_VALUE_LENGTH} characters."
    ),
    "maxProperties": METADATA_MAX_KEYS,
    "propertyNames": {
        "type": "string",
        "minLength": 1,
        "maxLength": METADATA_MAX_KEY_LENGTH,
        "pattern": NO_NUL,
    },
    "additionalProperties": {
        "type": "string",
        "maxLength": METADATA_MAX_VALUE_LENGTH,
        "pattern": NO_NUL,
    },
}

_RUN_EVENTS = [
    "run.created",
    "run.in_progress",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.expired",
]


def _event(names: list[str], data: dict, description: str) -> dict:
    return {
        "type": "object",
        "description": description,
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "event": {"type": "string", "enum": names},
            "data": {"type": "string", **data},
        },
    }


def _json_event(names: list[str], schema: dict, description: str) -> dict:
    return _event(
        names, {"contentMediaType": "application/json", "contentSchema": schema}, description
    )


RUN_EVENT_SCHEMA = {
    "description": (
        "One server-sent event of a run, with `id:` (its sequence number in the run), `event:` "
        "and `data:` (JSON). In order: run.created, message.created, run.in_progress, "
        "message.delta..., message.completed, one of run.completed|run.failed|run.cancelled|"
        "run.expired, and last `done` with the data `[DONE]`. A `: ping` comment line keeps "
        "idle streams open."
    ),
    "oneOf": [
        _json_event(_RUN_EVENTS, {"$ref": "#/components/schemas/Run"}, "The run."),
        _json_event(
            ["message.created", "message.completed"],
            {"$ref": "#/components/schemas/Message"},
            "The user message, then the assistant message.",
        ),
        _json_event(
            ["message.delta"],
            {
                "type": "object",
                "required": ["message_id", "delta"],
                "properties": {
                    "message_id": {"type": "string", "format": "uuid"},
                    "delta": {"type": "string"},
                },
            },
            "The next piece of the assistant message's text.",
        ),
        {
            "type": "object",
            "description": "The end of the stream.",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "enum": ["done"]},
                "data": {"type": "string", "enum": ["[DONE]"]},
            },
        },
    ],
}

_HEADERS = {
    REQUEST_ID_HEADER: {
        "description": "The client's own X-Request-ID when it sent a sane one, else a new one.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {
        "description": "The bearer scheme.",
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer"},
    },
    REPLAYED_HEADER: {
        "description": "Present, as `true`, on the stored answer to a repeated Idempotency-Key.",
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    },
}

IDEMPOTENCY_KEY_PARAMETER = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": (
        "1 to 255 printable ASCII characters (HTTP drops spaces at either end). A repeat with "
        "the same key, method, path and body within 24 h gets the first answer again, with "
        "`Idempotent-Replayed: true`; the same key with another request is 422, and a repeat "
        "while the first is still being processed is 409."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$",
    },
}

_ERRORS = {
    "400": "VALIDATION_ERROR (details maps field to messages) or MALFORMED_REQUEST",
    "401": "NOT_AUTHENTICATED or AUTHENTICATION_FAILED (with WWW-Authenticate)",
    "403": "PERMISSION_DENIED",
    "404": "NOT_FOUND: missing, another user's, or a malformed id",
    "409": "Conflict",
    "411": "LENGTH_REQUIRED: a chunked body on a server that does not decode chunks",
    "413": "PAYLOAD_TOO_LARGE",
    "415": "UNSUPPORTED_MEDIA_TYPE: the body is not application/json in UTF-8",
    "422": "IDEMPOTENCY_KEY_REUSED: the Idempotency-Key was used for another request",
    "429": "THROTTLED (with Retry-After)",
    "500": "INTERNAL_ERROR",
    "503": "SERVICE_UNAVAILABLE (with Retry-After)",
}

_REGISTER = "/api/v1/auth/register"
# Conflicts an operation reports besides IDEMPOTENCY_KEY_IN_USE.
_CONFLICTS = {
    ("/api/v1/chatkit/sessions", "post"): "SESSION_LIMIT_REACHED",
    ("/api/v1/chatkit/sessions/{session_id}/threads/{thread_id}/runs", "post"): (
        "RUN_IN_PROGRESS (details.active_run_id)"
    ),
    ("/api/v1/chatkit/sessions/{session_id}/threads/{thread_id}/runs/{id}/cancel", "post"): (
        "RUN_NOT_ACTIVE: the run already ended"
    ),
}


def _error_statuses(path: str, method: str, operation: dict, idempotent: bool) -> dict[str, str]:
    """Every error status the operation can answer with, and its description."""
    # 400 (a Content-Length that is not a number), 411 (a chunked body where the
    # server does not decode it), 413 (a body of any method over the limit), 429,
    # 500 and 503 can answer any request.
    statuses = {status: _ERRORS[status] for status in ("400", "411", "413", "429", "500", "503")}
    if path == _REGISTER:
        statuses["403"] = "PERMISSION_DENIED: registration is closed"
    else:
        # Bearer JWTs, or the refresh token or password in the body of the auth routes.
        statuses["401"] = _ERRORS["401"]
    if "{" in path:
        statuses["404"] = _ERRORS["404"]
    if "requestBody" in operation:
        statuses["415"] = _ERRORS["415"]
    conflicts = [_CONFLICTS[path, method]] if (path, method) in _CONFLICTS else []
    if idempotent:
        conflicts.append("IDEMPOTENCY_KEY_IN_USE: the same key is still being processed")
        statuses["422"] = _ERRORS["422"]
    if conflicts:
        statuses["409"] = " or ".join(conflicts)
    return statuses


def _idempotent_operations(generator) -> set[tuple[str, str]]:
    endpoints = getattr(generator, "endpoints", None) or []
    return {
        (path, method.lower())
        for path, _regex, method, callback in endpoints
        if method == "POST" and issubclass(getattr(callback, "cls", object), IdempotentPostMixin)
    }


def _resolve(schema: dict, components: dict) -> dict:
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        return components.get(ref.rsplit("/", 1)[1], {})
    return schema


def _serializer_fields(generator, name: str) -> dict:
    """The fields of the serializer behind the component ``name``, if any."""
    try:
        component = generator.registry[(name, "schemas")]
    except (AttributeError, KeyError):
        return {}
    serializer = component.object
    if isinstance(serializer, type) and issubclass(serializer, serializers.Serializer):
        serializer = serializer()
    return getattr(serializer, "fields", {})


def _string_pattern(field: serializers.Field | None) -> str:
    # A field that trims and may not be blank rejects whitespace alone.
    if isinstance(field, serializers.CharField) and field.trim_whitespace and not field.allow_blank:
        return NOT_ONLY_SPACE
    return NO_NUL


def _strict_request_bodies(components: dict, generator) -> None:
    """Request bodies as the strict parser reads them."""
    for name, schema in components.items():
        properties = schema.get("properties")
        if properties is None:
            continue
        if "metadata" in properties:
            properties["metadata"] = {"$ref": "#/components/schemas/Metadata"}
        if not name.endswith("Request"):
            continue
        # Unknown or read-only fields are a 400 naming them.
        schema["additionalProperties"] = False
        fields = _serializer_fields(generator, name)
        for field_name, field in properties.items():
            if field.get("type") == "string" and "pattern" not in field and "format" not in field:
                field["pattern"] = _string_pattern(fields.get(field_name))
    run_input = components.get("RunCreateRequest", {}).get("properties", {}).get("input")
    if run_input is not None:
        run_input["pattern"] = NOT_ONLY_SPACE
        run_input["description"] = "The user message: some text, not only whitespace."
    password = components.get("RegisterRequest", {}).get("properties", {}).get("password")
    if password is not None:
        # Django's password validators: at least 8 characters, not all digits, and
        # neither a common password nor one too like the username or email.
        password["minLength"] = max(password.get("minLength", 0), _min_password_length())
        password["pattern"] = "^[^\\x00]*[^\\x000-9][^\\x00]*$"
        password["description"] = (
            "Django's password validators apply: at least 8 characters, not only digits, "
            "not a common password, not too like the username or email."
        )


def _min_password_length() -> int:
    for validator in settings.AUTH_PASSWORD_VALIDATORS:
        if validator["NAME"].endswith(".MinimumLengthValidator"):
            return validator.get("OPTIONS", {}).get("min_length", 8)
    return 1


def _nullable_blank_email(components: dict) -> None:
    """Email addresses are optional: an account without one has ``""``."""
    for name in ("User", "RegisterRequest"):
        email = components.get(name, {}).get("properties", {}).get("email")
        if email is None:
            continue
        extra = {key: email.pop(key) for key in ("readOnly", "title") if key in email}
        components[name]["properties"]["email"] = {
            "oneOf": [email, {"type": "string", "enum": [""]}],
            **extra,
        }


def _nullable_to_3_1(node: Any) -> None:
    """OpenAPI 3.1 has no ``nullable``: the paginator's schema still says it."""
    if isinstance(node, list):
        for item in node:
            _nullable_to_3_1(item)
        return
    if not isinstance(node, dict):
        return
    if node.pop("nullable", False):
        kind = node.get("type")
        if isinstance(kind, str):
            node["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            kind.append("null")
    for value in node.values():
        _nullable_to_3_1(value)


def _header_ref(name: str) -> dict:
    return {"$ref": f"#/components/headers/{name}"}


def _error_response(description: str, status: str) -> dict:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    headers = {}
    if status in ("429", "503"):
        headers["Retry-After"] = _header_ref("Retry-After")
    if status == "401":
        headers["WWW-Authenticate"] = _header_ref("WWW-Authenticate")
    if headers:
        response["headers"] = headers
    return response


def _wrap_success(response: dict, components: dict) -> None:
    stream = response.get("content", {}).get("text/event-stream")
    if stream is not None:
        stream["schema"] = {"$ref": "#/components/schemas/RunEvent"}
    media = response.get("content", {}).get("application/json")
    if media is None:
        return
    # Lists come from the paginator with their envelope already.
    if "success" in _resolve(media.get("schema", {}), components).get("properties", {}):
        return
    media["schema"] = {
        "type": "object",
        "required": ["success", "data"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "data": media["schema"],
        },
    }


def envelope_postprocessing_hook(result: dict[str, Any], generator, request, public) -> dict:
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    components["Metadata"] = METADATA_SCHEMA
    components["RunEvent"] = RUN_EVENT_SCHEMA
    result["components"].setdefault("headers", {}).update(_HEADERS)
    _strict_request_bodies(components, generator)
    _nullable_blank_email(components)
    idempotent_operations = _idempotent_operations(generator)

    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            idempotent = (path, method) in idempotent_operations
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status.startswith("2"):
                    _wrap_success(response, components)
            for status, description in _error_statuses(path, method, operation, idempotent).items():
                # Views may name an error with a description only; the list here is complete.
                if "content" not in responses.get(status, {}):
                    responses[status] = _error_response(description, status)
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                headers[REQUEST_ID_HEADER] = _header_ref(REQUEST_ID_HEADER)
                if idempotent and status.startswith("2"):
                    headers[REPLAYED_HEADER] = _header_ref(REPLAYED_HEADER)
            if idempotent:
                parameters = operation.setdefault("parameters", [])
                if not any(p.get("name") == IDEMPOTENCY_HEADER for p in parameters):
                    parameters.append(IDEMPOTENCY_KEY_PARAMETER)
            operation["responses"] = dict(sorted(responses.items()))
    _nullable_to_3_1(result)
    return result
