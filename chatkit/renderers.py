from typing import Any

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

_fallback = JSONEncoder()


class EnvelopeJSONRenderer(JSONRenderer):
    """Wrap successful payloads as ``{"success": true, "data": ...}``, rendered by orjson.

    Error bodies are built whole by the exception handler, and paginated
    responses by the paginator (they add ``pagination``); both set
    ``response.enveloped`` or are errors, and pass through unchanged.
    orjson renders several times faster than the standard library; DRF's
    encoder still handles what orjson does not know (lazy strings, Decimal).
    """

    def render(self, data: Any, accepted_media_type=None, renderer_context=None) -> bytes:
        if data is None:
            return b""
        response = (renderer_context or {}).get("response")
        if (
            response is not None
            and response.status_code < 400
            and not getattr(response, "enveloped", False)
        ):
            data = {"success": True, "data": data}
        return orjson.dumps(data, default=_fallback.default)
