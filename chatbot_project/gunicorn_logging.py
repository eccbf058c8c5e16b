"""gunicorn's access log as one JSON object per line (LOG_FORMAT=json)."""

import json

from gunicorn import glogging


class JSONAccessLogger(glogging.Logger):
    """Escapes every value for a JSON string, so a path with quotes, backslashes
    or control characters cannot break the line the format in gunicorn.conf.py
    builds."""

    def atoms(self, resp, req, environ, request_time) -> dict:
        return {
            key: json.dumps(value)[1:-1] if isinstance(value, str) else value
            for key, value in super().atoms(resp, req, environ, request_time).items()
        }
