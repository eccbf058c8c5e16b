"""Fuzzing: schemathesis against the API's own OpenAPI document, over real HTTP.

The app is served by pytest-django's ``live_server``; two users, each with a
session, a thread and runs of their own, are the fuzzer's identities
("peers"), so ``object_level_authorization`` checks that neither can read
the other's objects. Every check runs (schemathesis's default; server errors, status codes, content
types, headers and bodies against the schema, negative data rejected, valid
data accepted, auth not ignored, deleted objects gone, created ones there),
with a fixed seed and a time budget. The test fails on any failure and shows
schemathesis's report.

Select it with ``-m fuzz`` (or leave it out with ``-m "not fuzz"``).

A few statuses depend on state the schema cannot express, so the check that
valid data is accepted also expects them on the operations concerned:

- lists: 400 for an ``after``/``before`` id that is not in the list (contract);
- register: 400 for a username already taken or a password that Django's
  validators refuse as common or too like the username;
- the ChatKit endpoint: 400 for an ``after`` not in the list, and for a
  message whose parts join into only whitespace or more than 32,000
  characters (a rule across parts, which a schema cannot state); and its
  404 for a thread or item id of the body that is not the session's is not
  "a resource just created is missing" (the session of its path is there).

``tests/fuzz_hooks.py`` makes each valid ``Idempotency-Key`` unique, so a key
the generator happens to repeat is not replayed (see there).
"""

import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from rest_framework import exceptions
from rest_framework.throttling import SimpleRateThrottle
from rest_framework_simplejwt.tokens import RefreshToken

from chatkit.exceptions import api_exception_handler
from tests.conftest import client_for, make_user

pytestmark = pytest.mark.django_db(transaction=True)

SEED = 20260207
# Schemathesis's own budget; the subprocess is killed if it overstays by far.
MAX_TIME_SECONDS = int(os.environ.get("FUZZ_MAX_TIME", "45"))
HARD_TIMEOUT_SECONDS = MAX_TIME_SECONDS + 30
ST = Path(sys.executable).with_name("st")
ROOT = Path(__file__).resolve().parent.parent
HOOKS = "tests.fuzz_hooks"

PEERS = ("alice", "bob")
SESSIONS = "/api/v1/chatkit/sessions"

# Statuses schemathesis's positive_data_acceptance expects by default, and the
# state-dependent ones (see the module docstring) added per operation.
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
CHATKIT = "chatkit_sessions_chatkit_create"
LISTS = [
    "chatkit_sessions_list",
    "chatkit_sessions_threads_list",
    "chatkit_sessions_threads_messages_list",
    "chatkit_sessions_threads_runs_list",
]


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


def _config(auth_file: Path) -> str:
    def accepted(operation_ids: list[str], extra: str, *more: str) -> str:
        return (
            "[[operations]]\n"
            f"include-operation-id = {_toml_list(operation_ids)}\n"
            "checks.positive_data_acceptance.expected-statuses = "
            f"{_toml_list(sorted([*_ACCEPTED, extra]))}\n"
        ) + "".join(f"{line}\n" for line in more)

    return "\n".join(
        [
            f"hooks = {json.dumps(HOOKS)}",
            "",
            "[auth.wfc]",
            f"path = {json.dumps(str(auth_file))}",
            f"peers = {_toml_list(list(PEERS))}",
            "",
            accepted(LISTS, "400"),
            # The session in its path is there; a 404 names the thread or item
            # of its body (another session's, or made up), which no link gives.
            accepted([CHATKIT], "400", "checks.ensure_resource_availability.enabled = false"),
            accepted(["auth_register_create"], "400"),
        ]
    )


@pytest.fixture
def no_throttling(monkeypatch):
    # The throttle classes read this dict, captured when DRF was imported.
    rates = {scope: "1000000/min" for scope in SimpleRateThrottle.THROTTLE_RATES}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)


@pytest.fixture
def background_runs_inline(settings):
    # No worker runs here: background runs are carried out as they are handed
    # over, so that every run ends and its event stream with it.
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}


def _seed(user) -> None:
    """A session with a thread and runs (completed, streamed, background)."""
    api = client_for(user)
    session = api.post(SESSIONS, {"title": f"{user.username}'s chat"}, format="json")
    assert session.status_code == 201, session.content
    threads = f"{SESSIONS}/{session.json()['data']['id']}/threads"
    thread = api.post(threads, {"title": "first"}, format="json")
    assert thread.status_code == 201, thread.content
    runs = f"{threads}/{thread.json()['data']['id']}/runs"
    for body in ({"input": "Hello"}, {"input": "Later", "background": True}):
        run = api.post(runs, body, format="json")
        assert run.status_code in (201, 202), run.content


def _auth_file(path: Path, users) -> Path:
    entries = [
        {
            "name": user.username,
            "fixedHeaders": [
                {
                    "name": "Authorization",
                    "value": f"Bearer {RefreshToken.for_user(user).access_token}",
                }
            ],
        }
        for user in users
    ]
    path.write_text(json.dumps({"auth": entries}, indent=2))
    return path


@pytest.mark.fuzz
def test_schemathesis_finds_nothing(
    live_server, tmp_path, caplog, no_throttling, background_runs_inline, plain_static
):
    # Thousands of 4xx answers are the point here; server errors still show.
    caplog.set_level(logging.ERROR, logger="django.request")
    users = [make_user(name) for name in PEERS]
    for user in users:
        _seed(user)
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(_auth_file(tmp_path / "auth.json", users)))

    command = [
        str(ST),
        "--config-file",
        str(config),
        "run",
        f"{live_server.url}/api/schema/?format=json",
        "--seed",
        str(SEED),
        "--max-time",
        str(MAX_TIME_SECONDS),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        "--no-color",
    ]
    started = time.monotonic()
    try:
        finished = subprocess.run(
            command,
            cwd=tmp_path,  # schemathesis keeps its caches in the working directory
            capture_output=True,
            text=True,
            timeout=HARD_TIMEOUT_SECONDS,
            env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)},
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace")
        pytest.fail(f"schemathesis overstayed {HARD_TIMEOUT_SECONDS} s:\n{output}")
    elapsed = time.monotonic() - started
    report = finished.stdout + finished.stderr
    summary = re.search(r"Test cases:\s*\n\s*(.+)", report)
    print(f"schemathesis: {summary.group(1) if summary else '?'} in {elapsed:.0f} s")

    assert finished.returncode == 0, report
    # Whatever else the fuzzer asked (its probes of the base URL too), no answer was a 500.
    server_errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not server_errors, server_errors
    assert summary is not None, report
    assert " passed" in summary.group(1), report
    # Every operation of the document was exercised.
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert selected is not None, report
    assert selected.group(1) == selected.group(2) == selected.group(3), report


def test_a_post_to_an_unknown_api_route_is_a_json_404(live_server):
    # Found by the fuzzer: the catch-all view under /api/ got Django's CSRF check.
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/chatkit/sessions/not.an.id/threads",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)

    assert error.value.code == 404
    assert json.loads(error.value.read())["error"]["code"] == "NOT_FOUND"


def test_a_bad_last_event_id_query_is_400_even_beside_a_good_header():
    # Found by the fuzzer: the header won, so a bad ?last_event_id= went unchecked.
    owner = make_user("owner")
    _seed(owner)
    api = client_for(owner)
    session = api.get(SESSIONS).json()["data"][0]["id"]
    thread = api.get(f"{SESSIONS}/{session}/threads").json()["data"][0]["id"]
    runs = f"{SESSIONS}/{session}/threads/{thread}/runs"
    run = api.get(runs).json()["data"][0]["id"]

    response = api.get(f"{runs}/{run}/events?last_event_id=x", HTTP_LAST_EVENT_ID="1")

    assert response.status_code == 400
    assert "last_event_id" in response.json()["error"]["details"]


def test_every_429_has_retry_after():
    # The schema requires Retry-After on 429; DRF leaves wait unset when a
    # throttle has recorded more requests than it allows.
    response = api_exception_handler(exceptions.Throttled(wait=None), {})

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert response.data["error"]["details"]["retry_after_seconds"] == int(response["Retry-After"])
