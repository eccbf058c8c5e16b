"""Benchmark: idle followers of background runs, and how soon a stored piece reaches them.

Starts gunicorn and `manage.py worker` as in production, on DATABASE_URL
(PostgreSQL; default 127.0.0.1/chatbot), from this checkout. The
echo provider is made slow (ECHO_DELAY_MS, --piece-after): a background run
gives its first piece at once, then nothing for that long. N followers
(``GET .../runs/{id}/events``) of those runs read the stored events, and
then wait. Measured, while they all wait:

- database work per second: transactions (``xact_commit`` + ``xact_rollback``
  of ``pg_stat_database`` for the database; every query of a follower is a
  transaction of its own, autocommit) and rows read (``tup_returned``);
- the server's CPU time (gunicorn and the worker).

Then each run's second piece is stored, and each follower records when it
gets it: the delay from the piece stored (its row's ``created_at``) to the
follower reading it, on this machine's one clock.

    .venv/bin/python bench/idle_followers.py [--followers 1000] [--runs 250]
        [--baseline /tmp/main-clone] [--port 8815]

``--baseline DIR`` measures a checkout of other code first (a clean clone
of main, say, using this virtualenv), then this one, and prints both.

Sizing: each follower holds a gunicorn thread for as long as it follows, and
the kernel need not share connections evenly between the two processes, so
each gets as many threads (and worker connections) as there are followers:
2 x N threads. The worker gets one thread per run. Throttles and per-user
caps are off (harness.server_env).
"""

import argparse
import http.client
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import psycopg
from harness import (
    HOST,
    ROOT,
    cpu_seconds,
    database_url,
    new_threads,
    new_user,
    percentile,
    request,
    running_stack,
)

# Event seqs of a background run: run.created 1, message.created 2,
# run.in_progress 3 (claimed), the first piece ("Echo: ") 4, the second 5.
FIRST_PIECE = 4


class Follower(threading.Thread):
    """One ``GET .../events`` client: reads until the run's second piece, then stops."""

    def __init__(self, port: int, token: str, url: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.url, self.run_id = port, token, url, run_id
        self.caught_up = threading.Event()
        self.live: tuple[int, float] | None = None  # (seq, wall-clock time read)
        self.error: str | None = None

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=600)
            conn.request(
                "GET",
                f"{self.url}/{self.run_id}/events",
                headers={"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"},
            )
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            seq = None
            while True:
                line = response.fp.readline()
                if not line:
                    raise RuntimeError("stream ended")
                if line.startswith(b"id: "):
                    seq = int(line[4:])
                elif line.startswith(b"event: message.delta"):
                    if seq > FIRST_PIECE:
                        self.live = (seq, time.time())
                        break
                    if seq == FIRST_PIECE:
                        self.caught_up.set()
            conn.close()
        except Exception as exc:  # a failed follower is counted, not fatal
            self.error = repr(exc)
            self.caught_up.set()


def database_counters(conn: psycopg.Connection) -> tuple[int, int]:
    """(transactions, rows returned) of the benchmark's database so far."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        "SELECT xact_commit + xact_rollback, tup_returned FROM pg_stat_database "
        "WHERE datname = current_database()"
    ).fetchone()


def stored_at(conn: psycopg.Connection, run_id: str, seq: int) -> float:
    row = conn.execute(
        "SELECT created_at FROM conversations_runevent "
        "WHERE run_id = %s AND seq <= %s AND last_seq >= %s",
        [run_id, seq, seq],
    ).fetchone()
    return row[0].astimezone(UTC).timestamp()


def measure(code: Path, args: argparse.Namespace) -> dict:
    """Serve ``code``; the idle followers' costs and the delays of the second piece."""
    url = database_url(postgresql_only=True)
    env = {
        "ECHO_DELAY_MS": str(int(args.piece_after * 1000)),
        "WEB_CONCURRENCY": "2",
        "WEB_THREADS": str(args.followers + 16),
        "WORKER_THREADS": str(args.runs),
        "LOG_LEVEL": "WARNING",
    }
    stack = running_stack(
        args.port,
        env,
        worker=True,
        root=code,
        server_args=("--worker-connections", str(args.followers + 64)),
        worker_args=("--threads", str(args.runs)),
    )
    with stack as pids, psycopg.connect(url, autocommit=True) as db:
        token = new_user(args.port)
        urls = new_threads(args.port, token, args.runs)

        def start(run_url: str) -> str:
            body = {"input": "x y", "background": True}
            status, answer = request(args.port, "POST", run_url, body, token)
            assert status == 202, (status, answer)
            return answer["data"]["id"]

        with ThreadPoolExecutor(8) as pool:
            run_ids = list(pool.map(start, urls))
        deadline = time.monotonic() + 120
        while True:
            running = db.execute(
                "SELECT count(*) FROM conversations_run WHERE id = ANY(%s) "
                "AND status = 'in_progress' AND last_event_seq >= %s",
                [run_ids, FIRST_PIECE],
            ).fetchone()[0]
            if running == len(run_ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # What earlier runs left in the runs table's indexes (dead entries of
        # ended runs) would be read by every query of the reaper: vacuumed,
        # as autovacuum keeps it in production.
        db.execute("VACUUM ANALYZE conversations_run")
        started_at = time.monotonic()

        followers = [
            Follower(args.port, token, urls[i % args.runs], run_ids[i % args.runs])
            for i in range(args.followers)
        ]
        for follower in followers:
            follower.start()
        for follower in followers:
            follower.caught_up.wait(120)
        connected = time.monotonic() - started_at
        # Settle: the last followers' first reads are done, and counted: a
        # backend reports its counts to pg_stat_database within 10 s of
        # going idle (PostgreSQL 15's PGSTAT_IDLE_INTERVAL).
        time.sleep(12)

        cpu_before = cpu_seconds(pids)
        xacts_before, rows_before = database_counters(db)
        measured = time.monotonic()
        time.sleep(args.window)
        xacts_after, rows_after = database_counters(db)
        cpu_after = cpu_seconds(pids)
        measured = time.monotonic() - measured

        for follower in followers:
            left = args.piece_after + 60 - (time.monotonic() - started_at)
            follower.join(timeout=max(1.0, left))
        delays = [
            (follower.live[1] - stored_at(db, follower.run_id, follower.live[0])) * 1000
            for follower in followers
            if follower.live is not None
        ]
        errors = [f.error or "no second piece" for f in followers if f.live is None]

        def cancel(run: tuple[str, str]) -> None:
            run_url, run_id = run
            request(args.port, "POST", f"{run_url}/{run_id}/cancel", {}, token)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(cancel, zip(urls, run_ids, strict=True)))
    return {
        "running": running,
        "connected": connected,
        "seconds": measured,
        "xacts": (xacts_after - xacts_before) / measured,
        "rows": (rows_after - rows_before) / measured,
        "cpu": (cpu_after - cpu_before) / measured,
        "delays": delays,
        "errors": errors,
        "threads": env["WEB_THREADS"],
    }


def report(label: str, code: Path, args: argparse.Namespace, result: dict) -> None:
    print(f"\n{label}: {code}")
    print(
        f"  {args.followers} followers of {result['running']}/{args.runs} running background "
        f"runs; gunicorn 2 x {result['threads']} threads, worker {args.runs} threads; all "
        f"caught up {result['connected']:.1f} s after the first connected"
    )
    print(
        f"  idle, over {result['seconds']:.1f} s: {result['xacts']:.0f} transactions/s, "
        f"{result['rows']:.0f} rows read/s (pg_stat_database); "
        f"server CPU {result['cpu']:.2f} s/s"
    )
    delays = result["delays"]
    if delays:
        print(
            f"  piece stored -> follower: median {statistics.median(delays):.0f} ms, "
            f"p99 {percentile(delays, 0.99):.0f} ms, max {max(delays):.0f} ms "
            f"({len(delays)} followers)"
        )
    errors = result["errors"]
    print(f"  followers without the second piece: {len(errors)}")
    for error in sorted(set(errors))[:5]:
        print(f"    {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description="idle followers of background runs")
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=250)
    parser.add_argument("--window", type=float, default=30.0, help="idle seconds measured")
    parser.add_argument(
        "--piece-after", type=float, default=90.0, help="seconds between a run's two pieces"
    )
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of the code to compare with, measured first"
    )
    parser.add_argument("--port", type=int, default=8815)
    args = parser.parse_args()
    database_url(postgresql_only=True)
    measured = []
    if args.baseline is not None:
        measured.append(("baseline", args.baseline.resolve()))
    measured.append(("this checkout", ROOT))
    results = [(label, code, measure(code, args)) for label, code in measured]
    for label, code, result in results:
        report(label, code, args, result)


if __name__ == "__main__":
    main()
