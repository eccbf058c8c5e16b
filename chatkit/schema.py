"""OpenAPI: the error responses, headers and envelope, derived from the code.

``ChatkitAutoSchema`` (DEFAULT_SCHEMA_CLASS) gives each operation the error
responses it can answer with: those every request can meet, those its view
implies (authentication, an id in the path, a request body, Idempotency-Key),
and the domain errors its view declares in ``raises``; statuses and
descriptions come from the one table (``chatkit.exceptions.ERRORS``). The
post-processing hook is generic: it wraps every success in the envelope and
describes request bodies as the strict parser reads them (no unknown fields,
no NUL).
"""

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

from conversations.errors import ErrorCode
from conversations.models import EventName
from conversations.validators import (
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE_LENGTH,
)

from . import protocol_schema
from .exceptions import ERRORS
from .fields import NO_NUL, NOT_ONLY_SPACE, MetadataField, NonBlankTextField
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import REPLAYED_HEADER, IdempotentPostMixin
from .middleware import REQUEST_ID_HEADER

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

# A run's event names in the order a run sends them (the last four are its
# possible ends), from the domain's one enum: the event schema below is built
# from them.
EVENT_NAMES = [name.value for name in EventName]
_DELTA = EventName.MESSAGE_DELTA.value
_RUN_EVENTS = [name for name in EVENT_NAMES if name.startswith("run.")]
_MESSAGE_EVENTS = [name for name in EVENT_NAMES if name.startswith("message.") and name != _DELTA]
_STARTS, _ENDS = EVENT_NAMES[:-4], EVENT_NAMES[-4:]


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
        f"and `data:` (JSON). In order: {', '.join(_STARTS).replace(_DELTA, _DELTA + '...')}, "
        f"one of {'|'.join(_ENDS)}, and last `done` with the data `[DONE]`. A `: ping` comment "
        "line keeps idle streams open."
    ),
    "oneOf": [
        _json_event(_RUN_EVENTS, {"$ref": "#/components/schemas/Run"}, "The run."),
        _json_event(
            _MESSAGE_EVENTS,
            {"$ref": "#/components/schemas/Message"},
            "The user message, then the assistant message.",
        ),
        _json_event(
            [_DELTA],
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
# Headers of error responses, by status.
_ERROR_HEADERS = {"401": ["WWW-Authenticate"], "429": ["Retry-After"], "503": ["Retry-After"]}

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

# Any request can meet these: a malformed body or Content-Length, a chunked
# body where the server does not decode chunks, a body over the limit, a
# throttle, a bug, the database away. Invalid input (a body, a cursor, an
# event id) is a VALIDATION_ERROR.
_ANY_REQUEST = (
    ErrorCode.MALFORMED_REQUEST,
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.LENGTH_REQUIRED,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.THROTTLED,
    ErrorCode.INTERNAL_ERROR,
    ErrorCode.SERVICE_UNAVAILABLE,
)


def _component(registry, kind: str, name: str, schema: dict) -> dict:
    """A reference to a component of ours, registered on first use."""
    component = ResolvedComponent(name=name, type=kind, schema=schema, object=name)
    registry.register_on_missing(component)
    return component.ref


# Added by the hook, after drf-spectacular has made components of enums: the
# events' names and the error's ``success`` stay inline.
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_RUN_EVENT_REF = {"$ref": "#/components/schemas/RunEvent"}


class ChatkitAutoSchema(AutoSchema):
    """Each operation with every error response it can answer, and the headers of each."""

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        idempotent = self._is_idempotent()
        responses = operation["responses"]
        for response in responses.values():
            stream = response.get("content", {}).get("text/event-stream")
            # A run's events, unless the view describes its own (the ChatKit endpoint).
            if stream is not None and stream.get("schema") == {"type": "string"}:
                stream["schema"] = _RUN_EVENT_REF
        for status, codes in self._errors(operation, idempotent).items():
            responses[status] = self._error_response(codes, status)
        for status, response in responses.items():
            headers = response.setdefault("headers", {})
            names = [REQUEST_ID_HEADER]
            if idempotent and status.startswith("2"):
                names.append(REPLAYED_HEADER)
            for name in names:
                headers[name] = self._header(name)
        if idempotent:
            operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY_PARAMETER)
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _is_idempotent(self) -> bool:
        return self.method == "POST" and isinstance(self.view, IdempotentPostMixin)

    def _errors(self, operation: dict, idempotent: bool) -> dict[str, list[ErrorCode]]:
        """The error codes the operation can answer with, by status."""
        codes = list(_ANY_REQUEST)
        if self.view.authentication_classes:
            codes += [ErrorCode.NOT_AUTHENTICATED, ErrorCode.AUTHENTICATION_FAILED]
        if "{" in self.path:
            codes.append(ErrorCode.NOT_FOUND)
        if "requestBody" in operation:
            codes.append(ErrorCode.UNSUPPORTED_MEDIA_TYPE)
        if idempotent:
            codes += [ErrorCode.IDEMPOTENCY_KEY_IN_USE, ErrorCode.IDEMPOTENCY_KEY_REUSED]
        # What the view says its action (a viewset) or method (an APIView) raises.
        declared = getattr(self.view, "raises", {})
        codes += declared.get(getattr(self.view, "action", None) or self.method.lower(), ())
        by_status: dict[str, list[ErrorCode]] = {}
        for code in codes:
            listed = by_status.setdefault(str(ERRORS[code].status), [])
            if code not in listed:
                listed.append(code)
        return by_status

    def _error_response(self, codes: list[ErrorCode], status: str) -> dict:
        return {
            "description": "; ".join(f"{code}: {ERRORS[code].description}" for code in codes),
            "content": {"application/json": {"schema": _ERROR_REF}},
            "headers": {name: self._header(name) for name in _ERROR_HEADERS.get(status, ())},
        }

    def _header(self, name: str) -> dict:
        return _component(self.registry, "headers", name, _HEADERS[name])


class MetadataFieldExtension(OpenApiSerializerFieldExtension):
    """The contract's metadata, one component wherever a serializer has the field."""

    target_class = MetadataField

    def map_serializer_field(self, auto_schema, direction):
        return _component(auto_schema.registry, "schemas", "Metadata", METADATA_SCHEMA)


class NonBlankTextFieldExtension(OpenApiSerializerFieldExtension):
    """Text that must hold something besides whitespace, which it keeps."""

    target_class = NonBlankTextField

    def map_serializer_field(self, auto_schema, direction):
        field = self.target
        schema = {"type": "string", "minLength": 1, "pattern": NOT_ONLY_SPACE}
        if field.max_length is not None:
            schema["maxLength"] = field.max_length
        if field.help_text:
            schema["description"] = str(field.help_text)
        return schema


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
        if properties is None or not name.endswith("Request"):
            continue
        # Unknown or read-only fields are a 400 naming them.
        schema["additionalProperties"] = False
        fields = _serializer_fields(generator, name)
        for field_name, field in properties.items():
            if field.get("type") == "string" and "pattern" not in field and "format" not in field:
                field["pattern"] = _string_pattern(fields.get(field_name))


def _nullable_blank_email(components: dict) -> None:
    """Email addresses are optional: an account without one has ``""``."""
    for schema in components.values():
        properties = schema.get("properties", {})
        for name, field in properties.items():
            if "email" not in (
                field.get("format"),
                *(f.get("format") for f in field.get("oneOf", [])),
            ):
                continue
            extra = {key: field.pop(key) for key in ("readOnly", "title") if key in field}
            properties[name] = {"oneOf": [field, {"type": "string", "enum": [""]}], **extra}


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


def _wrap_success(response: dict, components: dict) -> None:
    media = response.get("content", {}).get("application/json")
    # The ChatKit endpoint answers the protocol's objects as they are.
    if media is None or media.get("schema") == protocol_schema.RESPONSE_REF:
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
    """Every success in the envelope, and request bodies as the strict parser reads them."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    components["RunEvent"] = RUN_EVENT_SCHEMA
    components.update(protocol_schema.COMPONENTS)
    _strict_request_bodies(components, generator)
    _nullable_blank_email(components)
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status.startswith("2"):
                    _wrap_success(response, components)
    _nullable_to_3_1(result)
    return result
