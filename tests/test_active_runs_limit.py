"""MAX_ACTIVE_RUNS_PER_USER: a user's queued and in-progress runs, across all their threads.

Past it a run POST gets 429 ``THROTTLED`` with ``Retry-After`` (and
``details.reason`` ``active_runs``) and nothing is stored; two starts at once
never take the same last slot; other users are not affected. With a real
worker, a user flooding it with background runs holds at most the limit of
its threads, and another user's run is carried out at once.
"""

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from conversations import runs
from conversations.models import Conversation, Message, Run, Thread
from tests.conftest import client_for
from tests.db import count_rows, fetch_row
from tests.sse import runs_path, worker_process

LIMIT = 3
ACTIVE = ("queued", "in_progress")


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.MAX_ACTIVE_RUNS_PER_USER = LIMIT
    # No worker takes these runs unless a test starts one: they stay queued.
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.dummy.DummyBackend"}}


def new_threads(user, count: int, *, sessions: int = 1) -> list[Thread]:
    made = [Conversation.objects.create(user=user) for _ in range(sessions)]
    return [Thread.objects.create(conversation=made[n % sessions]) for n in range(count)]


def post_background(api, thread, text: str = "later"):
    return api.post(runs_path(thread), {"input": text, "background": True}, format="json")


def assert_limit_reached(response) -> None:
    assert response.status_code == 429, response.content
    assert response["Retry-After"].isdigit()
    assert int(response["Retry-After"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "THROTTLED"
    assert error["details"] == {
        "reason": "active_runs",
        "limit": LIMIT,
        "retry_after_seconds": int(response["Retry-After"]),
    }
    assert error["request_id"] == response["X-Request-ID"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"background": True}, id="background"),
        pytest.param({}, id="wait"),
        pytest.param({"stream": True}, id="stream"),
    ],
)
def test_run_past_the_limit_is_429_and_stores_nothing(api, owner, body):
    # The user's active runs are spread over two sessions.
    *busy, spare = new_threads(owner, LIMIT + 1, sessions=2)
    for thread in busy:
        assert post_background(api, thread).status_code == 202

    response = api.post(runs_path(spare), {"input": "one too many", **body}, format="json")

    assert_limit_reached(response)
    assert not Run.objects.filter(thread=spare).exists()
    assert not Message.objects.filter(thread=spare).exists()
    assert Run.objects.filter(status__in=ACTIVE).count() == LIMIT


@pytest.mark.django_db
def test_other_users_are_not_affected(api, owner, stranger):
    for thread in new_threads(owner, LIMIT):
        assert post_background(api, thread).status_code == 202
    assert_limit_reached(post_background(api, new_threads(owner, 1)[0]))

    stranger_api = client_for(stranger)
    [theirs] = new_threads(stranger, 1)
    assert post_background(stranger_api, theirs).status_code == 202
    done = stranger_api.post(runs_path(new_threads(stranger, 1)[0]), {"input": "hi"}, format="json")
    assert done.status_code == 201, done.json()


@pytest.mark.django_db
def test_a_run_that_ends_frees_its_slot(api, owner):
    threads = new_threads(owner, LIMIT + 1)
    # Finished runs do not count.
    for thread in threads:
        assert api.post(runs_path(thread), {"input": "hi"}, format="json").status_code == 201
    started = [post_background(api, thread).json()["data"] for thread in threads[:LIMIT]]
    assert_limit_reached(post_background(api, threads[LIMIT]))

    cancelled = api.post(f"{runs_path(threads[0])}/{started[0]['id']}/cancel")
    assert cancelled.status_code == 200

    assert post_background(api, threads[LIMIT]).status_code == 202
    assert_limit_reached(post_background(api, threads[0]))


@pytest.mark.django_db
def test_zero_turns_the_limit_off(api, owner, settings):
    threads = new_threads(owner, LIMIT + 2)
    for thread in threads[:LIMIT]:
        assert post_background(api, thread).status_code == 202
    assert_limit_reached(post_background(api, threads[LIMIT]))

    settings.MAX_ACTIVE_RUNS_PER_USER = 0

    for thread in threads[LIMIT:]:
        assert post_background(api, thread).status_code == 202


@pytest.mark.django_db
def test_runs_whose_lease_ran_out_are_expired_instead_of_counted(api, owner, settings):
    threads = new_threads(owner, LIMIT + 1)
    stale = [post_background(api, thread).json()["data"]["id"] for thread in threads[:LIMIT]]
    # A crashed web process or worker left these behind.
    lease_ago = timezone.now() - timedelta(seconds=settings.RUN_TIMEOUT_SECONDS + 1)
    Run.objects.filter(pk__in=stale[:1]).update(heartbeat_at=lease_ago)

    response = post_background(api, threads[LIMIT])

    assert response.status_code == 202, response.json()
    assert Run.objects.get(pk=stale[0]).status == "expired"
    assert Run.objects.filter(status__in=ACTIVE).count() == LIMIT


def _post_all_at_once(user, threads: list[Thread]) -> list[tuple[int, str | None]]:
    """POST a background run on each of ``threads`` from as many clients, released together."""
    token = str(AccessToken.for_user(user))
    barrier = threading.Barrier(len(threads))
    results: list[tuple[int, str | None]] = [(0, "not run")] * len(threads)

    def post(index: int) -> None:
        try:
            client = APIClient(raise_request_exception=False)
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
            barrier.wait()
            response = post_background(client, threads[index])
            code = response.json()["error"]["code"] if response.status_code >= 400 else None
            results[index] = (response.status_code, code)
        except Exception as exc:  # reported through results, asserted below
            results[index] = (-1, repr(exc))
        finally:
            connection.close()

    clients = [threading.Thread(target=post, args=(i,)) for i in range(len(threads))]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    return results


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("existing", [0, LIMIT - 1])
def test_concurrent_starts_never_pass_the_limit(api, owner, existing):
    for thread in new_threads(owner, existing):
        assert post_background(api, thread).status_code == 202
    threads = new_threads(owner, 12, sessions=3)

    results = _post_all_at_once(owner, threads)

    assert Counter(results) == {
        (202, None): LIMIT - existing,
        (429, "THROTTLED"): len(threads) - (LIMIT - existing),
    }, results
    assert count_rows(Run, status="queued") == LIMIT
    # Refused starts left nothing behind: one user message per run.
    assert count_rows(Message) == LIMIT


# With a real worker ---------------------------------------------------------

WORKER_THREADS = LIMIT + 1
# 400 words at 100 ms a piece: about 40 s, far longer than a short run waits.
LONG_INPUT = " ".join(f"word{i}" for i in range(400))


@pytest.mark.django_db(transaction=True)
def test_a_flooding_user_does_not_delay_another_users_run(settings, owner, stranger):
    settings.TASKS = {"default": {"BACKEND": "huey.contrib.djhuey.tasks_backend.HueyBackend"}}
    flooder, other = client_for(owner), client_for(stranger)
    with worker_process(threads=WORKER_THREADS, ECHO_DELAY_MS="100") as worker:
        worker.wait_ready()
        # One long run per thread, many threads: only LIMIT are accepted.
        answers = [post_background(flooder, t, LONG_INPUT) for t in new_threads(owner, 10)]
        accepted = [a.json()["data"]["id"] for a in answers if a.status_code == 202]
        assert Counter(a.status_code for a in answers) == {202: LIMIT, 429: 10 - LIMIT}
        worker.wait_for(
            lambda: all(fetch_row(Run, run_id)["status"] == "in_progress" for run_id in accepted),
            timeout=30,
            what="the flooder's runs to start",
        )

        [thread] = new_threads(stranger, 1)
        mine = post_background(other, thread, "hi").json()["data"]["id"]
        worker.wait_for(
            lambda: fetch_row(Run, mine)["status"] == "completed",
            timeout=30,
            what="the other user's run to be carried out",
        )

        # It did not wait for the flood: those runs are still going.
        assert {fetch_row(Run, run_id)["status"] for run_id in accepted} == {"in_progress"}
        for run_id in accepted:
            runs.run_cancel(run_id=run_id)
        assert "Traceback" not in worker.output()
