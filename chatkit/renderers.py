from typing import Any

from rest_framework.renderers import JSONRenderer


class EnvelopeJSONRenderer(JSONRenderer):
    """Wrap successful payloads as ``{"success": true, "data": ...}``.

    Error bodies are built whole by the exception handler, and paginated
    responses by the paginator (they add ``pagination``); both set
    ``response.enveloped`` or are errors, and pass through unchanged.
    """

    def render(self, data: Any, accepted_media_type=None, renderer_context=None) -> bytes:
        response = (renderer_context or {}).get("response")
        if (
            response is not None
            and data is not None
            and response.status_code < 400
            and not getattr(response, "enveloped", False)
        ):
            data = {"success": True, "data": data}
        return super().render(data, accepted_media_type, renderer_context)
