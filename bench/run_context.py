"""Benchmark: does a run cost more on a long thread?

Times synchronous echo runs over the full request path (in-process test
client, real database) on an empty thread and on one with 10,000 messages,
and prints the ratio of the medians. Target: at most 1.2.

    .venv/bin/python bench/run_context.py [--runs 50] [--history 10000]

On DATABASE_URL (default PostgreSQL at 127.0.0.1/chatbot; SQLite works too),
migrated first. It creates its own user and deletes it (with everything it
owns) at the end.
"""

import argparse
import statistics
import time
import uuid

from harness import migrate_database, setup_django

setup_django(
    DEBUG="1",
    ALLOWED_HOSTS="testserver",
    THROTTLE_RUNS="",
    THROTTLE_USER="",
)

from rest_framework.test import APIClient  # noqa: E402
from rest_framework_simplejwt.tokens import RefreshToken  # noqa: E402

from accounts.models import User  # noqa: E402
from conversations.models import Message, MessageRole  # noqa: E402
from conversations.services import conversation_create, thread_create  # noqa: E402


def time_runs(client: APIClient, session_id, thread_id, count: int) -> list[float]:
    url = f"/api/v1/chatkit/sessions/{session_id}/threads/{thread_id}/runs"
    timings = []
    for index in range(count):
        started = time.perf_counter()
        response = client.post(url, {"input": f"benchmark message {index}"}, format="json")
        timings.append(time.perf_counter() - started)
        assert response.status_code == 201, response.status_code
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--history", type=int, default=10_000)
    args = parser.parse_args()
    database = migrate_database()

    user = User.objects.create_user(username=f"bench-{uuid.uuid4().hex[:8]}", password=None)
    try:
        client = APIClient()
        token = RefreshToken.for_user(user).access_token
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        session = conversation_create(user=user, title="bench")
        empty = thread_create(conversation=session, title="empty")
        long = thread_create(conversation=session, title="long")
        Message.objects.bulk_create(
            [
                Message(
                    thread=long,
                    role=MessageRole.USER if i % 2 == 0 else MessageRole.ASSISTANT,
                    content=f"history message {i} " + "lorem ipsum " * 20,
                )
                for i in range(args.history)
            ],
            batch_size=2000,
        )
        # Warm up both paths (connections, caches) before measuring.
        time_runs(client, session.id, empty.id, 3)
        time_runs(client, session.id, long.id, 3)
        empty_times = time_runs(client, session.id, empty.id, args.runs)
        long_times = time_runs(client, session.id, long.id, args.runs)
    finally:
        user.delete()

    empty_median = statistics.median(empty_times) * 1000
    long_median = statistics.median(long_times) * 1000
    print(f"database: {database}")
    print(f"runs per thread: {args.runs}; history on the long thread: {args.history} messages")
    print(f"empty thread: median {empty_median:.2f} ms")
    print(f"long thread:  median {long_median:.2f} ms")
    print(f"ratio long/empty: {long_median / empty_median:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
