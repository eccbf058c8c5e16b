"""Several instances working together: a fleet behind nginx, on one PostgreSQL and one Redis.

One fleet for the module (``deploy/fleet.py``, the script the README's
"Running a fleet" gives): two web instances (gunicorn, one process each) and
two workers (``manage.py worker``, two threads each) behind nginx, on the test
database, with the task queue and the cache in a Redis database of their own.
Each test proves one thing the issue names, over real HTTP. A test reaches
one instance through the balancer, or one instance exactly through its own
port. Which instance served a request is read from the instances' access
logs (each logs the request's X-Request-ID); which worker carried a run, from
the workers' logs ("Carrying out run ...").

Tests that kill a member (SIGKILL to its process group, as a host that dies)
replace it before they end, so the others find two of each in any order.
PostgreSQL only: the fleet shares one database between processes.
"""

import itertools
import json
import shutil
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection

from conversations.models import Message, Run, RunEvent
from deploy.fleet import DEFAULT_REDIS, Fleet
from tests.conftest import PASSWORD, make_user
from tests.db import fetch_row, fetch_rows
from tests.sse import SESSIONS, SSEStream, bearer, delta_text, wait_until, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

# How long a run may go without progress before it is expired, hence how
# soon a killed worker's run ends: the one place to change when the carrier's
# heartbeat gets a window of its own.
LEASE = {"RUN_TIMEOUT_SECONDS": "3"}
# A surviving worker sweeps every max(5, RUN_TIMEOUT_SECONDS / 2) s (manage.py
# worker): the lease, one sweep, and room for a loaded machine.
EXPIRY_WITHIN = 3 + 5 + 20

THROTTLE_PER_MINUTE = 60
# Each piece of the echo reply (a word) comes this long after the last, so a
# reply of N words has a middle to act in, N times this long.
ECHO_DELAY_MS = 40
WORKER_THREADS = 2
FLEET_ENV = {
    **LEASE,
    "ECHO_DELAY_MS": str(ECHO_DELAY_MS),
    "THROTTLE_USER": f"{THROTTLE_PER_MINUTE}/min",
    # A stream waiting on the reaper says it is alive more often than every
    # socket read's timeout (tests/sse.py, 15 s).
    "SSE_PING_SECONDS": "5",
    "WEB_THREADS": "16",
    "DB_POOL_MIN_SIZE": "1",
    "DB_POOL_MAX_SIZE": "4",
}
FINAL = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def fleet(django_db_setup) -> Iterator[Fleet]:
    """Two instances and two workers behind nginx, on the test database, for the module."""
    if connection.vendor != "postgresql":
        pytest.skip("a fleet shares one PostgreSQL database: run with DATABASE_URL=postgres://...")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run does)")
    try:
        redis.Redis.from_url(DEFAULT_REDIS, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {DEFAULT_REDIS} (.ci/run starts one)")
    with Fleet(web=2, workers=2, env=worker_env(**FLEET_ENV), worker_threads=WORKER_THREADS) as f:
        yield f


# HTTP ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Any
    body: dict


def call(
    base: str,
    method: str,
    path: str,
    user=None,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One JSON request to ``base`` (the balancer or an instance), as ``user`` when given."""
    all_headers = {**(bearer(user) if user is not None else {}), **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            raw, status, response_headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as error:
        raw, status, response_headers = error.read(), error.code, error.headers
    return Reply(status, response_headers, json.loads(raw) if raw else {})


def new_thread(base: str, user) -> str:
    """A session and a thread of ``user``; the thread's runs path."""
    session = call(base, "POST", SESSIONS, user, body={})
    assert session.status == 201, session.body
    session_path = f"{SESSIONS}/{session.body['data']['id']}/threads"
    thread = call(base, "POST", session_path, user, body={})
    assert thread.status == 201, thread.body
    return f"{session_path}/{thread.body['data']['id']}/runs"


def words(count: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(count))


def fleet_wait(fleet: Fleet, condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """``wait_until``, with who runs where and their logs in the failure message."""
    try:
        return wait_until(condition, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{fleet.describe()}") from None


def ended(fleet: Fleet, run_id: str, timeout: float = 30.0) -> dict:
    def final():
        row = fetch_row(Run, run_id)
        return row if row["status"] in FINAL else None

    return fleet_wait(fleet, final, timeout=timeout, what=f"run {run_id} to end")


def reply_of(row: dict) -> dict:
    return fetch_row(Message, row["output_message_id"])


def assert_numbered_in_order(events) -> None:
    """Ids 1, 2, 3, ... with nothing missing or repeated; ``done`` last, without one."""
    assert [event.id for event in events[:-1]] == list(range(1, len(events))), [
        (event.id, event.event) for event in events
    ]
    assert events[-1].event == "done"


# The balancer ----------------------------------------------------------------


def test_requests_are_balanced_round_robin_over_the_instances(fleet):
    user = make_user("balanced")
    request_ids = [f"balance-{uuid.uuid4().hex}" for _ in range(8)]

    for request_id in request_ids:
        reply = call(
            fleet.url, "GET", "/api/v1/auth/me", user, headers={"X-Request-ID": request_id}
        )
        assert reply.status == 200, reply.body
        assert reply.headers["X-Request-ID"] == request_id

    served = [fleet.served_by(request_id) for request_id in request_ids]
    assert all(len(webs) == 1 for webs in served), served
    names = [webs[0].name for webs in served]
    assert set(names) == {web.name for web in fleet.webs}
    # Round robin: one, then the other.
    assert all(first != second for first, second in itertools.pairwise(names)), names
    assert Counter(names)[fleet.webs[0].name] == len(request_ids) / 2


def test_the_balancer_names_a_request_without_an_id_and_the_instance_keeps_the_name(fleet):
    reply = call(fleet.url, "GET", "/healthz")

    assert reply.status == 200
    request_id = reply.headers["X-Request-ID"]
    assert len(request_id) == 32, request_id
    [web] = fleet.served_by(request_id)
    # The balancer's own log names the instance it chose, with the same id.
    line = f"upstream=127.0.0.1:{web.port} request_id={request_id}"
    fleet_wait(
        fleet,
        lambda: line in (fleet.workdir / "nginx-access.log").read_text(),
        timeout=10,
        what=f"nginx to log {line}",
    )


def test_a_stream_through_the_balancer_arrives_piece_by_piece(fleet):
    user = make_user("streamer")
    runs = new_thread(fleet.url, user)
    text = words(40, "live")

    with SSEStream(
        fleet.url + runs, method="POST", headers=bearer(user), body={"input": text, "stream": True}
    ) as stream:
        assert stream.status == 200
        stream.read_until(lambda event: event.event == "message.delta")
        run_id = stream.events()[0].data["id"]
        # The client has a piece while the reply is still being written: the
        # balancer did not hold the stream back.
        assert fetch_row(Run, run_id)["status"] == "in_progress"
        events = stream.read_all()

    assert [event.event for event in events[-3:]] == ["message.completed", "run.completed", "done"]
    assert_numbered_in_order(events)
    assert delta_text(events) == reply_of(ended(fleet, run_id))["content"] == f"Echo: {text}"


# Shared state ----------------------------------------------------------------


def test_a_commit_through_one_instance_is_read_at_once_through_the_other(fleet):
    a, b = fleet.webs
    credentials = {"username": "committer", "password": PASSWORD}
    registered = call(b.url, "POST", "/api/v1/auth/register", body=credentials)
    assert registered.status == 201, registered.body
    # Registered through one instance, signed in through the other, and the
    # token it signed accepted by both: one signing key for the fleet.
    tokens = call(a.url, "POST", "/api/v1/auth/token", body=credentials)
    assert tokens.status == 200, tokens.body
    auth = {"Authorization": f"Bearer {tokens.body['data']['access']}"}

    created_ids = []
    for index in range(4):
        writer, reader = (a, b) if index % 2 == 0 else (b, a)
        created = call(writer.url, "POST", SESSIONS, headers=auth, body={"title": f"t{index}"})
        assert created.status == 201, created.body
        session = created.body["data"]
        created_ids.append(session["id"])
        read = call(reader.url, "GET", f"{SESSIONS}/{session['id']}", headers=auth)
        assert read.status == 200, read.body
        assert read.body["data"] == session
        renamed = call(
            reader.url,
            "PATCH",
            f"{SESSIONS}/{session['id']}",
            headers=auth,
            body={"title": f"renamed {index}"},
        )
        assert renamed.status == 200, renamed.body
        again = call(writer.url, "GET", f"{SESSIONS}/{session['id']}", headers=auth)
        assert again.body["data"]["title"] == f"renamed {index}"

    for web in (a, b):
        listed = call(web.url, "GET", f"{SESSIONS}?order=asc", headers=auth)
        assert [session["id"] for session in listed.body["data"]] == created_ids


def test_the_user_throttle_holds_across_instances(fleet):
    user = make_user("throttled")
    a, b = fleet.webs
    statuses = {a.name: Counter(), b.name: Counter()}

    # Each instance alone sees fewer requests than the rate allows.
    for index in range(THROTTLE_PER_MINUTE + 20):
        web = (a, b)[index % 2]
        reply = call(web.url, "GET", "/api/v1/auth/me", user)
        statuses[web.name][reply.status] += 1
        if reply.status == 429:
            assert reply.body["error"]["code"] == "THROTTLED"
            assert int(reply.headers["Retry-After"]) > 0

    assert sum(counts[200] for counts in statuses.values()) == THROTTLE_PER_MINUTE, statuses
    assert all(counts[429] > 0 and counts[200] > 0 for counts in statuses.values()), statuses
    assert sum(counts.total() for counts in statuses.values()) == THROTTLE_PER_MINUTE + 20


def test_a_cancel_through_one_instance_stops_a_stream_served_by_the_other(fleet):
    user = make_user("canceller")
    a, b = fleet.webs
    runs = new_thread(a.url, user)
    text = words(60, "cut")

    with SSEStream(
        b.url + runs, method="POST", headers=bearer(user), body={"input": text, "stream": True}
    ) as stream:
        assert stream.status == 200
        stream.read_until(lambda event: event.event == "message.delta")
        run_id = stream.events()[0].data["id"]
        cancelled = call(a.url, "POST", f"{runs}/{run_id}/cancel", user)
        assert cancelled.status == 200, cancelled.body
        assert cancelled.body["data"]["status"] == "cancelled"
        events = stream.read_all()

    assert [event.event for event in events[-3:]] == ["message.completed", "run.cancelled", "done"]
    assert_numbered_in_order(events)
    row = ended(fleet, run_id)
    assert row["status"] == "cancelled"
    reply = reply_of(row)
    assert reply["status"] == "incomplete"
    assert delta_text(events) == reply["content"] == events[-3].data["content"]
    # Stopped in the middle: the provider had more to say.
    assert len(reply["content"]) < len(f"Echo: {text}")


# Workers ---------------------------------------------------------------------


def test_background_runs_are_split_over_both_workers(fleet):
    user = make_user("splitter")
    # Each worker carries WORKER_THREADS runs at once: as many runs at once
    # as the two together carry need both.
    count = WORKER_THREADS * len(fleet.worker_members)
    texts = [words(40, f"split{index}-") for index in range(count)]
    run_ids = []
    for text in texts:
        queued = call(
            fleet.url,
            "POST",
            new_thread(fleet.url, user),
            user,
            body={"input": text, "background": True},
        )
        assert queued.status == 202, queued.body
        run_ids.append(queued.body["data"]["id"])

    for run_id, text in zip(run_ids, texts, strict=True):
        row = ended(fleet, run_id)
        assert row["status"] == "completed", row
        assert reply_of(row)["content"] == f"Echo: {text}"
    carriers = [fleet.carrier_of(run_id) for run_id in run_ids]
    assert None not in carriers, fleet.describe()
    assert {carrier.name for carrier in carriers} == {w.name for w in fleet.worker_members}


def test_a_stream_whose_instance_is_killed_resumes_on_the_other_losing_and_repeating_nothing(fleet):
    user = make_user("resumer")
    victim, survivor = fleet.webs
    runs = new_thread(survivor.url, user)
    text = words(60, "resume")
    queued = call(survivor.url, "POST", runs, user, body={"input": text, "background": True})
    assert queued.status == 202, queued.body
    run_id = queued.body["data"]["id"]
    events_path = f"{runs}/{run_id}/events"

    try:
        with SSEStream(victim.url + events_path, headers=bearer(user)) as first:
            assert first.status == 200
            while len([e for e in first.events() if e.event == "message.delta"]) < 3:
                first.read_until(lambda event: event.event == "message.delta")
            before = first.events()
            fleet.kill(victim)
        assert fetch_row(Run, run_id)["status"] == "in_progress"

        request_id = f"resume-{uuid.uuid4().hex}"
        headers = {**bearer(user), "Last-Event-ID": str(before[-1].id), "X-Request-ID": request_id}
        with SSEStream(fleet.url + events_path, headers=headers) as resumed:
            assert resumed.status == 200
            after = resumed.read_all()
        assert fleet.served_by(request_id) == [survivor]
    finally:
        fleet.replace(victim)

    assert after[0].id == before[-1].id + 1
    events = before + after
    assert_numbered_in_order(events)
    assert [event.event for event in events[-3:]] == ["message.completed", "run.completed", "done"]
    assert delta_text(events) == reply_of(ended(fleet, run_id))["content"] == f"Echo: {text}"


def test_a_killed_workers_run_is_expired_and_its_thread_usable_again(fleet):
    user = make_user("orphaned")
    runs = new_thread(fleet.url, user)
    queued = call(
        fleet.url, "POST", runs, user, body={"input": words(150, "slow"), "background": True}
    )
    assert queued.status == 202, queued.body
    run_id = queued.body["data"]["id"]
    carrier = fleet.carrier_of(run_id)
    assert carrier is not None, fleet.describe()

    try:
        with SSEStream(fleet.url + f"{runs}/{run_id}/events", headers=bearer(user)) as follower:
            follower.read_until(lambda event: event.event == "message.delta")
            fleet.kill(carrier)
            expired = fleet_wait(
                fleet,
                lambda: (row := fetch_row(Run, run_id))["status"] != "in_progress" and row,
                timeout=EXPIRY_WITHIN,
                what="the killed worker's run to be expired",
            )
            followed = follower.read_all()

        assert expired["status"] == "expired"
        assert expired["error_code"] == "RUN_EXPIRED"
        # By the sweep of the worker still there.
        [survivor] = [worker for worker in fleet.worker_members if worker is not carrier]
        fleet_wait(
            fleet,
            lambda: "Expired 1 stale run(s)" in survivor.log(),
            timeout=10,
            what=f"{survivor.name} to log its sweep",
        )
        reply = reply_of(expired)
        assert reply["status"] == "incomplete"
        names = [event.event for event in followed]
        assert names[-3:] == ["message.completed", "run.expired", "done"]
        assert_numbered_in_order(followed)
        assert delta_text(followed) == reply["content"]

        # The thread takes a new run, carried out by the worker still there.
        again = call(fleet.url, "POST", runs, user, body={"input": "after", "background": True})
        assert again.status == 202, again.body
        row = ended(fleet, again.body["data"]["id"])
        assert row["status"] == "completed"
        assert reply_of(row)["content"] == "Echo: after"
        assert fleet.carrier_of(again.body["data"]["id"]) not in (carrier, None)
        assert len(fetch_rows(RunEvent, run=run_id, event="run.expired")) == 1
    finally:
        fleet.replace(carrier)
