"""GET /metrics in one process (Django's test client): who gets it, and what moves it.

Counters are the process's own and other tests move them too, so each test
compares a scrape after what it did with one before. The database's state
(queued runs, the workers' heartbeat) is read at scrape time: those are
absolute.
"""

import http.client
import re
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from rest_framework.throttling import SimpleRateThrottle

from conversations import runs
from conversations.models import Conversation, Run, Thread, WorkerHeartbeat
from conversations.workers import worker_heartbeat_record, worker_heartbeats_prune
from tests.db import fetch_row
from tests.metrics_scrape import TOKEN, Scrape
from tests.openai_server import Fail
from tests.sse import runs_path, streamed_events, worker_process

pytest_plugins = ["tests.conftest_openai"]

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
ADDRESS = "10.0.0.7:8000"


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.ALLOWED_HOSTS = ["testserver", "api.example.com"]


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def scrape(client) -> Scrape:
    response = client.get("/metrics", HTTP_HOST=ADDRESS, **AUTH)
    assert response.status_code == 200, response.content
    return Scrape.parse(response.content.decode())


# Who gets it ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "head", "post"])
def test_without_a_token_setting_metrics_is_the_404_of_a_missing_path(anon, settings, method):
    settings.METRICS_TOKEN = ""
    missing = getattr(anon, method)("/no-such-page", **AUTH)

    response = getattr(anon, method)("/metrics", **AUTH)

    assert response.status_code == missing.status_code == 404
    assert response["Content-Type"] == missing["Content-Type"]
    assert response.content == missing.content


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"bearer {TOKEN}",
        f"Basic {TOKEN}",
        TOKEN,
    ],
)
def test_without_the_token_metrics_is_the_404_of_a_missing_path(anon, metrics_on, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    missing = anon.get("/no-such-page", HTTP_HOST="api.example.com", **headers)

    response = anon.get("/metrics", HTTP_HOST="api.example.com", **headers)

    assert response.status_code == 404
    assert response.content == missing.content
    assert b"chatbot_" not in response.content


def test_without_the_token_a_foreign_host_is_refused_as_anywhere(anon, metrics_on):
    assert anon.get("/no-such-page", HTTP_HOST=ADDRESS).status_code == 400
    assert anon.get("/metrics", HTTP_HOST=ADDRESS).status_code == 400


def test_with_the_token_metrics_answers_by_address(anon, metrics_on):
    response = anon.get("/metrics", HTTP_HOST=ADDRESS, **AUTH)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response["Content-Length"] == str(len(response.content))
    assert response["X-Request-ID"]
    assert response["Cache-Control"] == "no-store"
    assert b"# TYPE chatbot_runs_started_total counter" in response.content


def test_with_the_token_metrics_answers_over_plain_http_despite_the_https_redirect(
    anon, metrics_on, settings
):
    settings.SECURE_SSL_REDIRECT = True

    assert anon.get("/no-such-page", HTTP_HOST="api.example.com").status_code == 301
    assert anon.get("/metrics", HTTP_HOST="api.example.com").status_code == 301
    assert anon.get("/metrics", HTTP_HOST=ADDRESS, **AUTH).status_code == 200


def test_head_with_the_token_is_200_without_a_body(anon, metrics_on):
    response = anon.head("/metrics", HTTP_HOST=ADDRESS, **AUTH)

    assert response.status_code == 200
    assert response.content == b""
    assert int(response["Content-Length"]) > 0


def test_other_methods_with_the_token_are_405(anon, metrics_on):
    response = anon.post("/metrics", HTTP_HOST=ADDRESS, **AUTH)

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_metrics_is_not_throttled(anon, metrics_on, monkeypatch):
    for scope in ("auth", "user"):
        monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, scope, "1/min")
    # The address's one sign-in attempt of the minute, then the API refuses it.
    token = "/api/v1/auth/token"
    assert anon.post(token, {"username": "x", "password": "y"}, format="json").status_code == 401
    assert anon.post(token, {"username": "x", "password": "y"}, format="json").status_code == 429

    statuses = [anon.get("/metrics", HTTP_HOST=ADDRESS, **AUTH).status_code for _ in range(3)]

    assert statuses == [200, 200, 200]


def test_metrics_is_not_in_the_openapi_document(anon):
    document = anon.get("/api/schema/?format=json").json()

    assert not [path for path in document["paths"] if "metrics" in path]


# What moves it ----------------------------------------------------------------


def test_a_sync_run_moves_its_series(api, anon, metrics_on, thread):
    before = scrape(anon)

    response = api.post(runs_path(thread), {"input": "hello"}, format="json")

    assert response.status_code == 201
    after = scrape(anon)
    run = {"provider": "echo", "mode": "wait"}
    assert after.moved(before, "chatbot_runs_started_total", **run) == 1
    assert after.moved(before, "chatbot_runs_ended_total", **run, status="completed") == 1
    assert after.moved(before, "chatbot_runs_ended_total", **run, status="failed") == 0
    assert after.moved(before, "chatbot_run_first_delta_seconds_count", **run) == 1
    duration = {**run, "status": "completed"}
    assert after.moved(before, "chatbot_run_duration_seconds_count", **duration) == 1
    assert after.moved(before, "chatbot_run_duration_seconds_bucket", **duration, le="+Inf") == 1
    assert after.moved(before, "chatbot_runs_started_total", provider="echo", mode="stream") == 0
    request = {"route": "run-list", "method": "POST"}
    assert after.moved(before, "chatbot_http_requests_total", **request, status="201") == 1
    assert after.moved(before, "chatbot_http_request_duration_seconds_count", **request) == 1


def test_a_streamed_run_moves_its_series(api, anon, metrics_on, thread):
    before = scrape(anon)

    response = api.post(runs_path(thread), {"input": "hello", "stream": True}, format="json")
    during = scrape(anon)
    events = streamed_events(response)

    assert events[-2].event == "run.completed"
    after = scrape(anon)
    run = {"provider": "echo", "mode": "stream"}
    assert after.moved(before, "chatbot_runs_started_total", **run) == 1
    assert after.moved(before, "chatbot_runs_ended_total", **run, status="completed") == 1
    assert after.moved(before, "chatbot_run_first_delta_seconds_count", **run) == 1
    assert after.moved(before, "chatbot_run_duration_seconds_count", **run, status="completed") == 1
    assert after.moved(before, "chatbot_runs_started_total", provider="echo", mode="wait") == 0
    request = {"route": "run-list", "method": "POST", "status": "200"}
    assert after.moved(before, "chatbot_http_requests_total", **request) == 1
    assert during.moved(before, "chatbot_http_streams_active") == 1
    assert after.value("chatbot_http_streams_active") == before.value("chatbot_http_streams_active")


def test_a_failed_run_moves_its_series(api, anon, metrics_on, thread, openai_settings):
    openai_settings.queue(Fail(500))
    before = scrape(anon)

    response = api.post(runs_path(thread), {"input": "hello"}, format="json")

    assert response.status_code == 201
    assert response.json()["data"]["status"] == "failed"
    after = scrape(anon)
    run = {"provider": "openai", "mode": "wait"}
    assert after.moved(before, "chatbot_runs_started_total", **run) == 1
    assert after.moved(before, "chatbot_runs_ended_total", **run, status="failed") == 1
    assert after.moved(before, "chatbot_runs_ended_total", **run, status="completed") == 0
    assert after.moved(before, "chatbot_run_first_delta_seconds_count", **run) == 0
    assert after.moved(before, "chatbot_run_duration_seconds_count", **run, status="failed") == 1
    errors = "chatbot_provider_errors_total"
    assert after.moved(before, errors, provider="openai", code="PROVIDER_ERROR") == 1
    assert after.moved(before, errors, provider="openai", code="PROVIDER_TIMEOUT") == 0


def test_a_cancelled_queued_run_ends_without_a_duration(anon, metrics_on, thread):
    run = runs.run_start(thread=thread, input="later", provider="echo", model="", queued=True)
    before = scrape(anon)

    runs.run_cancel(run_id=run.pk)

    after = scrape(anon)
    labels = {"provider": "echo", "mode": "background", "status": "cancelled"}
    assert after.moved(before, "chatbot_runs_ended_total", **labels) == 1
    assert after.moved(before, "chatbot_run_duration_seconds_count", **labels) == 0


def test_an_expired_run_is_counted_by_the_reaper(anon, metrics_on, thread, settings):
    run = runs.run_start(thread=thread, input="stuck", provider="echo", model="", mode="stream")
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    before = scrape(anon)

    assert runs.runs_expire_stale() == 1

    after = scrape(anon)
    labels = {"provider": "echo", "mode": "stream", "status": "expired"}
    assert after.moved(before, "chatbot_runs_ended_total", **labels) == 1
    assert after.moved(before, "chatbot_run_duration_seconds_count", **labels) == 1


def test_a_run_stores_how_it_was_asked_for(api, thread):
    api.post(runs_path(thread), {"input": "one"}, format="json")
    streamed = api.post(runs_path(thread), {"input": "two", "stream": True}, format="json")
    b"".join(streamed.streaming_content)
    api.post(runs_path(thread), {"input": "three", "background": True}, format="json")

    modes = Run.objects.filter(thread=thread).order_by("created_at").values_list("mode", flat=True)
    assert list(modes) == ["wait", "stream", "background"]


def test_routes_are_url_patterns_never_raw_paths(api, anon, metrics_on, thread):
    session_id = thread.conversation_id
    before = scrape(anon)

    api.get(f"/api/v1/chatkit/sessions/{session_id}")
    api.get(f"/api/v1/chatkit/sessions/{uuid.uuid4()}")
    anon.get(f"/no-such-page/{uuid.uuid4()}")
    anon.generic("PROPFIND", "/healthz")

    after = scrape(anon)
    detail = {"route": "session-detail", "method": "GET"}
    assert after.moved(before, "chatbot_http_requests_total", **detail, status="200") == 1
    assert after.moved(before, "chatbot_http_requests_total", **detail, status="404") == 1
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert after.moved(before, "chatbot_http_requests_total", **unmatched) == 1
    other = {"route": "healthz", "method": "other", "status": "405"}
    assert after.moved(before, "chatbot_http_requests_total", **other) == 1
    routes = {labels["route"] for labels in after.labels_of("chatbot_http_requests_total")}
    assert str(session_id) not in "".join(routes)
    assert not [route for route in routes if route.startswith("/")]


def test_queued_and_in_progress_runs_are_read_from_the_database(anon, metrics_on, owner):
    threads = [
        Thread.objects.create(conversation=Conversation.objects.create(user=owner))
        for _ in range(3)
    ]
    for thread in threads[:2]:
        runs.run_start(thread=thread, input="later", provider="echo", model="", queued=True)
    runs.run_start(thread=threads[2], input="now", provider="echo", model="")
    Run.objects.filter(status="queued").update(created_at=timezone.now() - timedelta(minutes=5))

    state = scrape(anon)

    assert state.value("chatbot_runs_queued") == 2
    assert state.value("chatbot_runs_in_progress") == 1
    assert 300 <= state.value("chatbot_runs_queued_oldest_age_seconds") < 330


def test_nothing_queued_reads_zero(anon, metrics_on, db):
    state = scrape(anon)

    assert state.value("chatbot_runs_queued") == 0
    assert state.has("chatbot_runs_queued_oldest_age_seconds")
    assert state.value("chatbot_runs_queued_oldest_age_seconds") == 0


def test_the_newest_worker_heartbeat_is_reported(anon, metrics_on, db):
    assert not scrape(anon).has("chatbot_worker_last_heartbeat_timestamp_seconds")
    worker_heartbeat_record(host="worker-a")
    WorkerHeartbeat.objects.filter(host="worker-a").update(
        seen_at=timezone.now() - timedelta(minutes=3)
    )
    worker_heartbeat_record(host="worker-b")
    newest = WorkerHeartbeat.objects.get(host="worker-b").seen_at

    state = scrape(anon)

    assert state.value("chatbot_worker_last_heartbeat_timestamp_seconds") == pytest.approx(
        newest.timestamp()
    )


def test_heartbeats_of_hosts_gone_for_a_week_are_forgotten(db):
    worker_heartbeat_record(host="gone")
    worker_heartbeat_record(host="here")
    WorkerHeartbeat.objects.filter(host="gone").update(seen_at=timezone.now() - timedelta(days=8))

    assert worker_heartbeats_prune() == 1
    assert list(WorkerHeartbeat.objects.values_list("host", flat=True)) == ["here"]


def worker_get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_the_worker_beats_and_serves_the_metrics_of_its_runs(api, anon, metrics_on, thread):
    started = timezone.now()
    env = {"METRICS_TOKEN": TOKEN, "WORKER_METRICS_BIND": "127.0.0.1:0"}

    with worker_process(threads=2, **env) as worker:
        worker.wait_ready()
        url = worker.wait_for(
            lambda: re.search(r"Metrics on (http://\S+)", worker.output()),
            timeout=10,
            what="the worker's metrics address",
        )[1]
        response = api.post(
            runs_path(thread), {"input": "later", "background": True}, format="json"
        )
        run_id = response.json()["data"]["id"]
        worker.wait_for(
            lambda: fetch_row(Run, run_id)["status"] == "completed", timeout=30, what="the run"
        )
        status, text = worker_get(url, {"Authorization": f"Bearer {TOKEN}"})
        refused = [
            worker_get(url, headers)[0] for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"})
        ] + [worker_get(url.replace("/metrics", "/"), {"Authorization": f"Bearer {TOKEN}"})[0]]

    assert status == 200
    assert refused == [404, 404, 404]
    # A process of its own: its counts are the worker's runs alone.
    counts = Scrape.parse(text)
    run = {"provider": "echo", "mode": "background"}
    assert counts.value("chatbot_runs_ended_total", **run, status="completed") == 1
    assert counts.value("chatbot_run_first_delta_seconds_count", **run) == 1
    assert counts.value("chatbot_runs_started_total", **run) == 0
    beat = WorkerHeartbeat.objects.get()
    assert beat.seen_at >= started
    assert counts.value("chatbot_worker_last_heartbeat_timestamp_seconds") == pytest.approx(
        beat.seen_at.timestamp()
    )
    assert scrape(anon).value("chatbot_worker_last_heartbeat_timestamp_seconds") == pytest.approx(
        beat.seen_at.timestamp()
    )
