"""Benchmark: does a deep page cost more than the first?

Keyset paging cuts pages on (created_at, id) through an index, so a page
50,000 items deep should cost what the first page costs. Times GET of the
user's sessions (in-process test client, real database): the first page,
the second (an `after` cursor 20 items deep) and pages whose `after` cursor
sits 50,000 items deep, and prints the ratios of the medians. Target: the
deep page at most 1.2 times the first. The second page shows what a cursor
costs at any depth.

    .venv/bin/python bench/paging_depth.py [--depth 50000] [--requests 200]

On DATABASE_URL (default PostgreSQL at 127.0.0.1/chatbot), migrated first;
PostgreSQL only (it numbers the rows with a window function).
"""

import argparse
import statistics
import time
import uuid
from datetime import timedelta

from harness import migrate_database, setup_django

setup_django(
    postgresql_only=True,
    DEBUG="1",
    ALLOWED_HOSTS="testserver",
    THROTTLE_USER="",  # hundreds of requests from one user
)

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402
from rest_framework_simplejwt.tokens import RefreshToken  # noqa: E402

from accounts.models import User  # noqa: E402
from conversations.models import Conversation  # noqa: E402

URL = "/api/v1/chatkit/sessions"


def time_pages(client: APIClient, params: dict, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(URL, params)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.status_code
        assert len(response.json()["data"]) == 20
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    database = migrate_database()

    user = User.objects.create_user(username=f"bench-{uuid.uuid4().hex[:8]}", password=None)
    try:
        start = timezone.now() - timedelta(days=1)
        Conversation.objects.bulk_create(
            (Conversation(user=user, title=f"s{i}") for i in range(args.depth + 40)),
            batch_size=5000,
        )
        # auto_now_add ignored the given created_at: give every row its own
        # second, as rows created through the API have their own microsecond.
        table = Conversation._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET created_at = %s + numbered.n * interval '1 second' "  # noqa: S608
                f"FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM {table} "
                "WHERE user_id = %s) AS numbered "
                f"WHERE {table}.id = numbered.id",
                [start, user.pk],
            )
            # Fresh statistics and no dead rows from the update, as a table in
            # service would have: otherwise the planner guesses.
            cursor.execute(f"VACUUM ANALYZE {table}")
        newest_first = Conversation.objects.filter(user=user).order_by("-created_at", "-id")
        deep_cursor = newest_first.values_list("id", flat=True)[args.depth - 1]
        second_cursor = newest_first.values_list("id", flat=True)[19]

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
        pages = {"first": {}, "second": {"after": second_cursor}, "deep": {"after": deep_cursor}}
        for params in pages.values():
            time_pages(client, params, 10)
        # Interleaved, so that drift on a shared machine touches all three alike.
        timings = {name: [] for name in pages}
        for _ in range(args.requests):
            for name, params in pages.items():
                timings[name] += time_pages(client, params, 1)
        first, second, deep = timings["first"], timings["second"], timings["deep"]
    finally:
        user.delete()

    first_ms = statistics.median(first) * 1000
    second_ms = statistics.median(second) * 1000
    deep_ms = statistics.median(deep) * 1000
    print(f"database: {database}; {args.depth + 40} sessions of one user")
    print(f"first page:            median {first_ms:.2f} ms")
    print(f"second page (cursor):  median {second_ms:.2f} ms")
    print(f"page at depth {args.depth}: median {deep_ms:.2f} ms")
    print(f"ratio deep/first: {deep_ms / first_ms:.3f} (target <= 1.2)")
    print(f"ratio deep/second: {deep_ms / second_ms:.3f} (the depth alone)")


if __name__ == "__main__":
    main()
