"""Benchmark: many background runs submitted at once.

Starts gunicorn and `manage.py worker` as in production, on DATABASE_URL
(default PostgreSQL at 127.0.0.1/chatbot), with the echo provider imitating
a model that takes 2 s and streams 50 pieces (ECHO_DELAY_MS=40). Times one
background run alone (the baseline), then N runs POSTed at once, until every
one has ended. Target: all N within 3x the single run's time, none left
active.

    .venv/bin/python bench/background.py [--runs 200] [--port 8813]
"""

import argparse
import threading
import time

import psycopg
from harness import database_url, new_threads, new_user, request, running_stack

PIECES = 50
DELAY_MS = 40
ACTIVE = {"queued", "in_progress"}


def submit(port: int, token: str, url: str, text: str, results: list, index: int, barrier) -> None:
    barrier.wait()
    status, body = request(port, "POST", url, {"input": text, "background": True}, token)
    results[index] = (status, body["data"]["id"] if status == 202 else None)


def wait_all(run_ids: list[str], deadline: float) -> dict[str, int]:
    """Watch the runs in the database until every one has ended.

    Straight from PostgreSQL, every 50 ms: polling 200 runs over the API
    would load the very server being measured.
    """
    with psycopg.connect(database_url(), autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT status, count(*) FROM conversations_run WHERE id = ANY(%s) GROUP BY status",
                [run_ids],
            ).fetchall()
            final = dict(rows)
            if not final.keys() & ACTIVE or time.monotonic() > deadline:
                return final
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description="background runs at once")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--port", type=int, default=8813)
    args = parser.parse_args()
    # It watches the runs straight from PostgreSQL.
    database_url(postgresql_only=True)
    text = " ".join(f"word{i}" for i in range(PIECES - 1))

    with running_stack(args.port, {"ECHO_DELAY_MS": str(DELAY_MS)}, worker=True):
        token = new_user(args.port)
        urls = new_threads(args.port, token, args.runs + 1)

        started = time.monotonic()
        _, body = request(args.port, "POST", urls[-1], {"input": text, "background": True}, token)
        single = wait_all([body["data"]["id"]], started + 60)
        single_seconds = time.monotonic() - started

        results: list = [None] * args.runs
        barrier = threading.Barrier(args.runs)
        threads = [
            threading.Thread(
                target=submit, args=(args.port, token, urls[i], text, results, i, barrier)
            )
            for i in range(args.runs)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        submitted = time.monotonic() - started
        run_ids = [run_id for status, run_id in results if status == 202]
        final = wait_all(run_ids, started + 300)
        all_seconds = time.monotonic() - started

    print(f"provider: {PIECES} pieces over {(PIECES - 1) * DELAY_MS / 1000:.2f} s")
    print(f"single background run: {single_seconds:.2f} s ({single})")
    print(f"{args.runs} runs: accepted {len(run_ids)} (202) in {submitted:.2f} s")
    print(f"all ended after {all_seconds:.2f} s: {final}")
    print(
        f"ratio to a single run: {all_seconds / single_seconds:.2f} (target < 3); "
        f"left active: {sum(final.get(status, 0) for status in ACTIVE)}"
    )


if __name__ == "__main__":
    main()
