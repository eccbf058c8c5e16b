"""OpenAPI post-processing: the envelope and the error responses, as served."""

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "error": {
            "type": "object",
            "required": ["code", "message", "details", "request_id"],
            "properties": {
                "code": {"type": "string", "example": "VALIDATION_ERROR"},
                "message": {"type": "string"},
                "details": {"type": "object", "nullable": True, "additionalProperties": True},
                "request_id": {"type": "string"},
            },
        },
    },
}

_ERROR_DESCRIPTIONS = {
    "400": "VALIDATION_ERROR or MALFORMED_REQUEST",
    "401": "NOT_AUTHENTICATED or AUTHENTICATION_FAILED",
    "403": "PERMISSION_DENIED",
    "404": "NOT_FOUND",
    "405": "METHOD_NOT_ALLOWED",
    "409": "Conflict: SESSION_LIMIT_REACHED, RUN_IN_PROGRESS, RUN_NOT_ACTIVE",
    "413": "PAYLOAD_TOO_LARGE",
    "415": "UNSUPPORTED_MEDIA_TYPE",
    "429": "THROTTLED (with Retry-After)",
    "500": "INTERNAL_ERROR",
    "503": "SERVICE_UNAVAILABLE (with Retry-After)",
}

_PUBLIC_PATHS = ("/api/v1/auth/register", "/api/v1/auth/token", "/api/v1/auth/logout")
_CONFLICTS = {("/api/v1/chatkit/sessions", "post")}


def _error_statuses(path: str, method: str) -> list[str]:
    statuses = ["400", "500", "503"]
    if not path.startswith(_PUBLIC_PATHS):
        statuses.append("401")
    if path.startswith("/api/v1/auth/register"):
        statuses.append("403")
    if "{" in path:
        statuses.append("404")
    if method in ("post", "patch"):
        statuses += ["413", "415"]
    if (path, method) in _CONFLICTS:
        statuses.append("409")
    return sorted(statuses)


def envelope_postprocessing_hook(result: dict[str, Any], generator, request, public) -> dict:
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if not status.startswith("2"):
                    continue
                media = response.get("content", {}).get("application/json")
                if media is None or "success" in media.get("schema", {}).get("properties", {}):
                    continue
                media["schema"] = {
                    "type": "object",
                    "required": ["success", "data"],
                    "properties": {
                        "success": {"type": "boolean", "enum": [True]},
                        "data": media["schema"],
                    },
                }
            for status in _error_statuses(path, method):
                responses.setdefault(
                    status,
                    {
                        "description": _ERROR_DESCRIPTIONS[status],
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                )
    return result
