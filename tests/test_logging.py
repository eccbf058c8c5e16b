"""Logs: JSON lines (LOG_FORMAT=json) and the request id on every record of a request."""

import json
import logging
import os
import re
import runpy
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO
from types import SimpleNamespace

import pytest
from django.conf import settings as django_settings
from gunicorn.config import Config

from chatkit.logging import JSONFormatter, RequestIDFilter, request_id_var

SESSIONS = "/api/v1/chatkit/sessions"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def request_id():
    """Set the request id for the duration of a test, as the middleware would."""
    token = request_id_var.set("req-42.test_id")
    yield "req-42.test_id"
    request_id_var.reset(token)


def failing_record(logger: str = "chatkit.test") -> logging.LogRecord:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        exc_info = sys.exc_info()
    return logging.getLogger(logger).makeRecord(
        logger, logging.ERROR, __file__, 1, "Run %s failed: %s", ("r1", "naïve ☃"), exc_info
    )


def test_json_formatter_renders_one_object_on_one_line(request_id):
    record = failing_record()
    RequestIDFilter().filter(record)

    line = JSONFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message", "request_id", "exception"}
    assert TIME.fullmatch(entry["time"]), entry["time"]
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "chatkit.test"
    assert entry["message"] == "Run r1 failed: naïve ☃"
    assert entry["request_id"] == request_id
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: boom\nsecond line")


def test_json_formatter_time_is_utc_with_milliseconds():
    record = logging.makeLogRecord({"msg": "tick", "levelname": "INFO", "levelno": 20})
    record.created = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC).timestamp()
    record.msecs = 123.456

    entry = json.loads(JSONFormatter().format(record))

    assert entry["time"] == "2024-02-29T23:59:58.123Z"


def test_json_formatter_without_request_id_or_exception():
    record = logging.makeLogRecord({"name": "x", "msg": "plain", "levelname": "INFO"})

    entry = json.loads(JSONFormatter().format(record))

    assert entry["request_id"] == "-"
    assert "exception" not in entry
    assert entry["message"] == "plain"


def test_request_id_filter_stamps_the_current_id(request_id):
    record = logging.makeLogRecord({"msg": "x"})

    assert RequestIDFilter().filter(record) is True
    assert record.request_id == request_id


def console_handler() -> logging.Handler:
    """The root's handler configured by settings.LOGGING."""
    return next(h for h in logging.getLogger().handlers if h.name == "console")


def test_configured_console_handler_stamps_request_ids():
    handler = console_handler()

    assert any(isinstance(f, RequestIDFilter) for f in handler.filters)
    assert django_settings.LOGGING["handlers"]["console"]["filters"] == ["request_id"]


@pytest.fixture
def json_log():
    """The root's console handler, switched to JSON into a buffer for the test."""
    handler = console_handler()
    buffer = StringIO()
    old_stream, old_formatter = handler.setStream(buffer), handler.formatter
    handler.setFormatter(JSONFormatter())
    yield buffer
    handler.setFormatter(old_formatter)
    handler.setStream(old_stream)


def test_a_request_logs_with_the_request_id_it_sent(api, caplog, json_log):
    caplog.handler.addFilter(RequestIDFilter())
    caplog.set_level(logging.INFO)
    sent = f"ops-{uuid.uuid4().hex}"

    response = api.get(f"{SESSIONS}/{uuid.uuid4()}", HTTP_X_REQUEST_ID=sent)

    assert response.status_code == 404
    assert response["X-Request-ID"] == sent
    records = [r for r in caplog.records if r.name == "django.request"]
    assert records, caplog.text
    assert {r.request_id for r in records} == {sent}
    # The same record, through the configured handler, as a JSON line.
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    logged = [entry for entry in lines if entry["logger"] == "django.request"]
    assert len(logged) == len(records)
    assert logged[0]["request_id"] == sent
    assert logged[0]["level"] == "WARNING"
    assert SESSIONS in logged[0]["message"]


def test_a_request_without_an_id_logs_the_one_it_was_given(api, caplog):
    caplog.handler.addFilter(RequestIDFilter())
    caplog.set_level(logging.INFO)

    response = api.get(f"{SESSIONS}/{uuid.uuid4()}")

    records = [r for r in caplog.records if r.name == "django.request"]
    assert records
    assert {r.request_id for r in records} == {response["X-Request-ID"]}


def _django_process(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatbot_project.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "test-only-key-" + "x" * 40,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=django_settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("value", ["bogus", "JSON", "text "])
def test_unknown_log_format_is_refused_at_settings_import(value):
    result = _django_process("import django; django.setup()", LOG_FORMAT=value)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "LOG_FORMAT" in result.stderr


def test_log_format_json_writes_json_lines_to_stderr():
    code = (
        "import django, logging; django.setup()\n"
        "from chatkit.logging import request_id_var\n"
        "request_id_var.set('from-subprocess')\n"
        "log = logging.getLogger('ops.check')\n"
        "log.info('hello %s', 'world')\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    log.exception('failed')\n"
    )
    result = _django_process(code, LOG_FORMAT="json", LOG_LEVEL="INFO")

    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(e["logger"], e["level"], e["message"]) for e in entries] == [
        ("ops.check", "INFO", "hello world"),
        ("ops.check", "ERROR", "failed"),
    ]
    assert {e["request_id"] for e in entries} == {"from-subprocess"}
    assert "exception" not in entries[0]
    assert entries[1]["exception"].rstrip().endswith("ZeroDivisionError: division by zero")


# gunicorn's access log with LOG_FORMAT=json -----------------------------------


@pytest.fixture
def access_log(monkeypatch, tmp_path):
    """Log one request the way gunicorn does with gunicorn.conf.py; return its lines."""
    monkeypatch.setenv("LOG_FORMAT", "json")
    conf = runpy.run_path(str(django_settings.BASE_DIR / "gunicorn.conf.py"))
    target = tmp_path / "access.log"
    cfg = Config()
    # The file's logging settings, as gunicorn -c applies them; the log goes to a file.
    for name in ("access_log_format", "logger_class"):
        if name in conf:
            cfg.set(name, conf[name])
    cfg.set("accesslog", str(target))
    logger = cfg.logger_class(cfg)

    def log(path: str, raw_uri: str, status: str = "404 Not Found") -> list[str]:
        environ = {
            "REQUEST_METHOD": "GET",
            "RAW_URI": raw_uri,
            "PATH_INFO": path,  # gunicorn percent-decodes it, as WSGI wants
            "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "10.0.0.7",
        }
        response = SimpleNamespace(status=status, headers=[("X-Request-ID", "req-7")], sent=179)
        logger.access(response, SimpleNamespace(headers=[]), environ, timedelta(milliseconds=12))
        for handler in logger.access_log.handlers:
            handler.flush()
        return target.read_text(encoding="utf-8").splitlines()

    yield log
    for handler in list(logger.access_log.handlers):
        handler.close()
        logger.access_log.removeHandler(handler)


def test_gunicorn_access_log_line_is_json(access_log):
    (line,) = access_log("/api/v1/chatkit/sessions", "/api/v1/chatkit/sessions", "200 OK")

    entry = json.loads(line)
    assert entry["method"] == "GET"
    assert entry["path"] == "/api/v1/chatkit/sessions"
    assert entry["status"] == 200
    assert entry["duration_ms"] == 12
    assert entry["request_id"] == "req-7"
    assert entry["remote"] == "10.0.0.7"


@pytest.mark.parametrize(
    ("raw_uri", "path"),
    [
        ("/a%22b", '/a"b'),
        ("/a%5Cb", "/a\\b"),
        ("/x%0A%7B%22forged%22:true%7D", '/x\n{"forged":true}'),
        ("/tab%09and%01ctl", "/tab\tand\x01ctl"),
    ],
    ids=["quote", "backslash", "newline", "control"],
)
def test_gunicorn_access_log_line_stays_one_json_object_for_any_path(access_log, raw_uri, path):
    # Any client can request such a path; the line must stay one valid JSON
    # object with the path as sent, or a log shipper drops it, or takes the
    # client's text for a second, forged record.
    lines = access_log(path, raw_uri)

    assert len(lines) == 1, lines
    assert json.loads(lines[0])["path"] == path
