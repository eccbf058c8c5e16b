"""gunicorn's access log as one JSON object per line (LOG_FORMAT=json)."""

import json
import time

from gunicorn import glogging


class JSONAccessLogger(glogging.Logger):
    """Each access record is built as a dict and dumped by ``json``, so no path,
    header or control character can break the line or forge another."""

    def access(self, resp, req, environ, request_time) -> None:
        if not self.cfg.accesslog:
            return
        headers = dict((name.lower(), value) for name, value in resp.headers)
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or None,
            "status": int(status),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "request_id": headers.get("x-request-id"),
        }
        self.access_log.info(json.dumps(entry, ensure_ascii=False))
