"""/metrics on real gunicorn with two worker processes: the scrape adds up every process.

The provider is the real OpenAI adapter against tests/openai_server.py, so a
run fails the way it would in production (an HTTP 500 from the provider).
Which worker serves a request is the kernel's choice; what proves that the
scrape sums processes is that the counts survive the death of every worker
that made them, and that the open streams of dead workers stop counting.
"""

import http.client
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conversations.models import Conversation, Thread
from tests.gunicorn_server import GunicornServer, gunicorn_process
from tests.metrics_scrape import AUTH, TOKEN, Scrape
from tests.openai_server import TEST_API_KEY, TEST_MODEL, Fail, FakeOpenAIServer, Reply
from tests.sse import SSEStream, bearer, runs_path, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(django_db_setup, provider) -> Iterator[GunicornServer]:
    """Two workers; gunicorn.conf.py makes their metrics directory."""
    env = {
        "WEB_CONCURRENCY": "2",
        "METRICS_TOKEN": TOKEN,
        "LLM_PROVIDER": "openai",
        "LLM_MODEL": TEST_MODEL,
        "OPENAI_BASE_URL": provider.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "LLM_MAX_RETRIES": "0",
        "LLM_TIMEOUT_SECONDS": "10",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    with gunicorn_process(**env) as running:
        yield running


@pytest.fixture
def thread(owner) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=owner))


def call(server, method: str, path: str, headers: dict, body=None) -> tuple[int, bytes]:
    """One request on a connection of its own, so the kernel may give it to either worker."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {"Connection": "close", **headers}
        if payload is not None:
            all_headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def series(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


def scrape(server) -> Scrape:
    status, body = call(server, "GET", "/metrics", AUTH)
    assert status == 200, body
    return Scrape.parse(body.decode())


def workers_of(server) -> set[int]:
    """The pids of the master's children (its workers), from /proc."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == server.process.pid:
            children.add(int(stat.parent.name))
    return children


def kill_every_worker(server) -> None:
    """SIGKILL each worker, as a crash would; wait for gunicorn to boot new ones."""
    old = workers_of(server)
    assert len(old) == 2, old
    for pid in old:
        os.kill(pid, signal.SIGKILL)

    def replaced():
        now = workers_of(server)
        return len(now) == 2 and not now & old

    wait_until(replaced, timeout=30, what="gunicorn to replace its workers")
    wait_until(
        lambda: call(server, "GET", "/healthz", {})[0] == 200,
        timeout=30,
        what="a new worker to answer",
    )


@pytest.mark.parametrize(
    "authorization", [None, "Bearer", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}0", TOKEN]
)
def test_metrics_without_the_token_is_404(server, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}

    status, body = call(server, "GET", "/metrics", headers)

    assert status == 404
    assert b"chatbot_" not in body


def test_sync_streamed_and_failed_runs_are_summed_over_the_workers(server, provider, owner):
    threads = [
        Thread.objects.create(conversation=Conversation.objects.create(user=owner))
        for _ in range(3)
    ]
    before = scrape(server)

    status, body = call(server, "POST", runs_path(threads[0]), bearer(owner), {"input": "sync"})
    assert status == 201, body
    assert json.loads(body)["data"]["status"] == "completed"
    provider.queue(Reply(text="streamed in pieces", chunks=3))
    with SSEStream(
        f"http://127.0.0.1:{server.port}{runs_path(threads[1])}",
        method="POST",
        headers=bearer(owner),
        body={"input": "stream", "stream": True},
    ) as stream:
        assert "run.completed" in [event.event for event in stream.read_all()]
    provider.queue(Fail(500))
    status, body = call(server, "POST", runs_path(threads[2]), bearer(owner), {"input": "fail"})
    assert status == 201, body
    assert json.loads(body)["data"]["status"] == "failed"

    after = scrape(server)
    wait = {"provider": "openai", "mode": "wait"}
    streamed = {"provider": "openai", "mode": "stream"}
    expected = {
        series("chatbot_runs_started_total", **wait): 2,
        series("chatbot_runs_started_total", **streamed): 1,
        series("chatbot_runs_ended_total", **wait, status="completed"): 1,
        series("chatbot_runs_ended_total", **wait, status="failed"): 1,
        series("chatbot_runs_ended_total", **streamed, status="completed"): 1,
        series("chatbot_run_first_delta_seconds_count", **wait): 1,
        series("chatbot_run_first_delta_seconds_count", **streamed): 1,
        series("chatbot_run_duration_seconds_count", **wait, status="failed"): 1,
        series("chatbot_provider_errors_total", provider="openai", code="PROVIDER_ERROR"): 1,
    }
    moved = {key: after.samples.get(key, 0) - before.samples.get(key, 0) for key in expected}
    assert moved == expected
    run_posts = {"route": "run-list", "method": "POST"}
    assert after.moved(before, "chatbot_http_requests_total", **run_posts, status="201") == 2
    assert after.moved(before, "chatbot_http_requests_total", **run_posts, status="200") == 1

    # Every process that counted those is gone: the new ones report them all.
    kill_every_worker(server)
    survived = scrape(server)
    assert {key: survived.samples.get(key, 0) for key in expected} == {
        key: after.samples[key] for key in expected
    }


def test_open_streams_are_counted_while_their_process_lives(server, provider, owner, thread):
    held = threading.Event()
    provider.queue(Reply(gate=held))
    try:
        with SSEStream(
            f"http://127.0.0.1:{server.port}{runs_path(thread)}",
            method="POST",
            headers=bearer(owner),
            body={"input": "held open", "stream": True},
        ) as stream:
            stream.read_until(lambda event: event.event == "run.in_progress")
            assert scrape(server).value("chatbot_http_streams_active") == 1

            kill_every_worker(server)

        assert scrape(server).value("chatbot_http_streams_active") == 0
    finally:
        held.set()
