"""MAX_STREAMS_PER_USER: a user's open event streams, over real HTTP (live_server).

Streams of both kinds (``POST runs`` streamed and ``GET .../events``, and a
stream replayed for an ``Idempotency-Key``) share one budget per user. Past
it: 429 ``THROTTLED`` with ``Retry-After`` (``details.reason`` ``streams``)
before anything starts, while other users, and the same user's other
requests, are served. A slot comes back when its stream ends, when its client
vanishes, and, for a process that died, when its lease runs out; a live
stream renews its lease for as long as it lasts. The last test holds slots
in another process through Redis, and kills it.
"""

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack

import pytest
import redis
from django.core.cache.backends.redis import RedisCache

from chatkit import stream_slots
from conversations import runs
from conversations.models import Conversation, Message, Run, Thread
from tests.conftest import client_for
from tests.sse import PROJECT_DIR, SSEStream, bearer, runs_path, wait_until, worker_env

LIMIT = 3

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.MAX_STREAMS_PER_USER = LIMIT
    settings.MAX_ACTIVE_RUNS_PER_USER = 10
    # A server notices a client that went away when it next writes: soon.
    settings.SSE_PING_SECONDS = 1
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.dummy.DummyBackend"}}


def new_thread(user) -> Thread:
    return Thread.objects.create(conversation=Conversation.objects.create(user=user))


def queued_run(user) -> Run:
    """A run no worker takes: its events stream stays open until it ends."""
    return runs.run_start(
        thread=new_thread(user), input="wait", provider="echo", model="echo-1", queued=True
    )


def follow(live_server, user, run: Run) -> SSEStream:
    """GET the run's events; when it is a stream, read until it is under way."""
    url = f"{live_server.url}{runs_path(run.thread)}/{run.pk}/events"
    stream = SSEStream(url, headers=bearer(user))
    if stream.status == 200:
        stream.read_until(lambda event: event.event == "message.created")
    return stream


def post_stream(live_server, user, thread, text: str, headers=None) -> SSEStream:
    return SSEStream(
        live_server.url + runs_path(thread),
        method="POST",
        headers={**bearer(user), **(headers or {})},
        body={"input": text, "stream": True},
    )


def assert_stream_limit(stream: SSEStream) -> None:
    assert stream.status == 429
    assert stream.content_type.startswith("application/json")
    retry_after = stream.response.getheader("Retry-After")
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    error = stream.json()["error"]
    assert error["code"] == "THROTTLED"
    assert error["details"] == {
        "reason": "streams",
        "limit": LIMIT,
        "retry_after_seconds": int(retry_after),
    }


def assert_refused(live_server, user, run: Run) -> None:
    with follow(live_server, user, run) as stream:
        assert_stream_limit(stream)


def free_slots(user) -> int:
    """How many stream slots the user has free, looked at without holding any."""
    taken = []
    try:
        while True:
            taken.append(stream_slots.acquire(user_id=user.pk))
    except stream_slots.StreamLimitReached:
        return len(taken)
    finally:
        for slot in taken:
            slot.release()


def test_past_the_cap_streams_are_429_and_everyone_else_is_served(live_server, owner, stranger):
    run = queued_run(owner)
    with ExitStack() as held:
        streams = [held.enter_context(follow(live_server, owner, run)) for _ in range(LIMIT)]
        assert [stream.status for stream in streams] == [200] * LIMIT

        assert_refused(live_server, owner, run)
        # A streamed POST past the cap creates nothing.
        thread = new_thread(owner)
        with post_stream(live_server, owner, thread, "one too many") as post:
            assert_stream_limit(post)
        assert not Run.objects.filter(thread=thread).exists()
        assert not Message.objects.filter(thread=thread).exists()

        # Another user streams; both users' other requests are answered,
        # the owner's cancel too, which ends the streams that follow the run.
        with follow(live_server, stranger, queued_run(stranger)) as theirs:
            assert theirs.status == 200
        assert client_for(stranger).get("/api/v1/chatkit/sessions").status_code == 200
        assert client_for(owner).get("/api/v1/chatkit/sessions").status_code == 200
        cancel = client_for(owner).post(f"{runs_path(run.thread)}/{run.pk}/cancel")
        assert cancel.status_code == 200
        for stream in streams:
            assert stream.read_all()[-1].event == "done"

    # Streams that ended gave their slots back.
    wait_until(lambda: free_slots(owner) == LIMIT, what="every slot back")
    with follow(live_server, owner, queued_run(owner)) as again:
        assert again.status == 200


def test_a_stream_that_ends_gives_its_slot_back(live_server, owner):
    followed = [queued_run(owner) for _ in range(LIMIT)]
    with ExitStack() as held:
        streams = [held.enter_context(follow(live_server, owner, run)) for run in followed]
        assert_refused(live_server, owner, followed[0])

        runs.run_cancel(run_id=followed[0].pk)
        assert streams[0].read_all()[-1].event == "done"

        wait_until(lambda: free_slots(owner) == 1, what="the ended stream's slot")
        with follow(live_server, owner, followed[1]) as again:
            assert again.status == 200
            assert_refused(live_server, owner, followed[1])


def test_the_slot_of_a_client_that_vanished_comes_back(live_server, owner):
    run = queued_run(owner)
    with ExitStack() as held:
        streams = [held.enter_context(follow(live_server, owner, run)) for _ in range(LIMIT)]
        assert_refused(live_server, owner, run)

        # Gone without a word: the server finds out when it next writes.
        streams[0].close()

        wait_until(lambda: free_slots(owner) == 1, what="the vanished client's slot")
        with follow(live_server, owner, run) as again:
            assert again.status == 200
            assert_refused(live_server, owner, run)


def test_a_streamed_post_holds_a_slot_while_it_streams(live_server, owner, settings):
    settings.ECHO_DELAY_MS = 200
    thread = new_thread(owner)
    with post_stream(live_server, owner, thread, " ".join(["slowly"] * 100)) as post:
        assert post.status == 200
        post.read_until(lambda event: event.event == "message.delta")
        run = queued_run(owner)
        with ExitStack() as held:
            for _ in range(LIMIT - 1):
                assert held.enter_context(follow(live_server, owner, run)).status == 200
            assert_refused(live_server, owner, run)

            runs.run_cancel(run_id=Run.objects.get(thread=thread).pk)
            assert post.read_all()[-1].event == "done"
            wait_until(lambda: free_slots(owner) == 1, what="the POST stream's slot")


def test_a_streamed_post_refused_for_another_reason_gives_its_slot_back(live_server, owner):
    busy = queued_run(owner)

    for _ in range(LIMIT + 1):
        with post_stream(live_server, owner, busy.thread, "the thread is busy") as post:
            assert post.status == 409
            assert post.json()["error"]["code"] == "RUN_IN_PROGRESS"

    with ExitStack() as held:
        for _ in range(LIMIT):
            assert held.enter_context(follow(live_server, owner, busy)).status == 200
        assert_refused(live_server, owner, busy)


def test_a_replayed_stream_counts(live_server, owner):
    thread = new_thread(owner)
    key = {"Idempotency-Key": "replay-me"}
    with post_stream(live_server, owner, thread, "once", key) as first:
        assert first.read_all()[-1].event == "done"
    wait_until(lambda: free_slots(owner) == LIMIT, what="the first stream's slot")
    run = queued_run(owner)
    with ExitStack() as held:
        for _ in range(LIMIT):
            assert held.enter_context(follow(live_server, owner, run)).status == 200

        with post_stream(live_server, owner, thread, "once", key) as replay:
            assert_stream_limit(replay)


def test_zero_turns_the_cap_off(live_server, owner, settings):
    run = queued_run(owner)
    with ExitStack() as held:
        for _ in range(LIMIT):
            assert held.enter_context(follow(live_server, owner, run)).status == 200
        assert_refused(live_server, owner, run)

        settings.MAX_STREAMS_PER_USER = 0

        for _ in range(LIMIT):
            assert held.enter_context(follow(live_server, owner, run)).status == 200


def test_a_live_stream_keeps_its_slot_past_its_lease(live_server, owner, settings):
    settings.STREAM_SLOT_TTL_SECONDS = 3
    run = queued_run(owner)
    with ExitStack() as held:
        for _ in range(LIMIT):
            assert held.enter_context(follow(live_server, owner, run)).status == 200

        # Two leases later the streams still hold every slot: renewed.
        end = time.monotonic() + 2 * settings.STREAM_SLOT_TTL_SECONDS
        while time.monotonic() < end:
            assert_refused(live_server, owner, run)
            # Paced: a tight loop would meet the user throttle's 429 instead.
            time.sleep(0.2)


def test_slots_nobody_renews_expire_by_themselves(live_server, owner, settings):
    settings.STREAM_SLOT_TTL_SECONDS = 2
    run = queued_run(owner)
    # Taken for responses this process then lost without closing them:
    # nothing gives them back or renews them, as with a process that died.
    lost = [stream_slots.acquire(user_id=owner.pk) for _ in range(LIMIT)]
    assert_refused(live_server, owner, run)
    # Renewed once while they were held: the keeper has looked at them.
    taken_at = time.monotonic()
    wait_until(lambda: all(slot.renewed_at > taken_at for slot in lost), what="a renewal")
    lost.clear()

    wait_until(lambda: free_slots(owner) == LIMIT, timeout=15, what="the leases to run out")
    with follow(live_server, owner, run) as again:
        assert again.status == 200


# The cache: per process (locmem) and shared (Redis) -------------------------

REDIS_URL = "redis://127.0.0.1:6379/13"


def use_redis(monkeypatch) -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    # Not settings.CACHES: the tests' cache clearing would empty a shared Redis.
    monkeypatch.setattr(stream_slots, "cache", RedisCache(REDIS_URL, {}))


@pytest.fixture(params=["locmem", "redis"])
def slot_cache(request, monkeypatch) -> None:
    """The cache the slots live in; Redis only where one runs (skipped otherwise)."""
    if request.param == "redis":
        use_redis(monkeypatch)


@pytest.fixture
def redis_slots(monkeypatch) -> None:
    use_redis(monkeypatch)


@pytest.mark.usefixtures("slot_cache")
def test_concurrent_takers_never_pass_the_cap():
    user_id = uuid.uuid4()  # keys of its own on a shared Redis
    barrier = threading.Barrier(4 * LIMIT)
    outcomes: list[str] = []
    taken: list[stream_slots.StreamSlot] = []

    def take() -> None:
        barrier.wait()
        try:
            taken.append(stream_slots.acquire(user_id=user_id))
            outcomes.append("taken")
        except stream_slots.StreamLimitReached:
            outcomes.append("refused")

    takers = [threading.Thread(target=take) for _ in range(4 * LIMIT)]
    for taker in takers:
        taker.start()
    for taker in takers:
        taker.join()
    for slot in taken:
        slot.release()

    assert Counter(outcomes) == {"taken": LIMIT, "refused": 3 * LIMIT}


HOLDER = """
import sys, time, django
django.setup()
from chatkit import stream_slots
held = [stream_slots.acquire(user_id=sys.argv[1]) for _ in range(int(sys.argv[2]))]
print("held", flush=True)
time.sleep(600)
"""


def test_a_crashed_process_holds_its_slots_only_until_their_lease_runs_out(redis_slots, settings):
    settings.STREAM_SLOT_TTL_SECONDS = 2
    user_id = uuid.uuid4()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(user_id), str(LIMIT)],
        cwd=PROJECT_DIR,
        env=worker_env(
            DJANGO_SETTINGS_MODULE="chatbot_project.settings",
            CACHE_URL=REDIS_URL,
            STREAM_SLOT_TTL_SECONDS="2",
            MAX_STREAMS_PER_USER=str(LIMIT),
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"

        # The other process holds every slot, and renews them past their lease.
        end = time.monotonic() + 3 * settings.STREAM_SLOT_TTL_SECONDS
        while time.monotonic() < end:
            with pytest.raises(stream_slots.StreamLimitReached):
                stream_slots.acquire(user_id=user_id)

        holder.kill()
        holder.wait(timeout=10)
        slot = wait_until(
            lambda: _try_acquire(user_id), timeout=15, what="the dead process's slots to expire"
        )
        slot.release()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def _try_acquire(user_id) -> stream_slots.StreamSlot | None:
    try:
        return stream_slots.acquire(user_id=user_id)
    except stream_slots.StreamLimitReached:
        return None
