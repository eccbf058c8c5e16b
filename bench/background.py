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

from harness import new_threads, new_user, request, running_stack

PIECES = 50
DELAY_MS = 40


def submit(port: int, token: str, url: str, text: str, results: list, index: int, barrier) -> None:
    barrier.wait()
    status, body = request(port, "POST", url, {"input": text, "background": True}, token)
    results[index] = (status, url + "/" + body["data"]["id"] if status == 202 else None)


def wait_all(port: int, token: str, run_urls: list[str], deadline: float) -> dict[str, int]:
    """Poll until every run has ended; return the count of each final status."""
    pending = set(run_urls)
    final: dict[str, int] = {}
    while pending and time.monotonic() < deadline:
        for url in list(pending):
            _, body = request(port, "GET", url, token=token)
            status = body["data"]["status"]
            if status not in ("queued", "in_progress"):
                pending.discard(url)
                final[status] = final.get(status, 0) + 1
        if pending:
            time.sleep(0.05)
    if pending:
        final["still active"] = len(pending)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description="background runs at once")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--port", type=int, default=8813)
    args = parser.parse_args()
    text = " ".join(f"word{i}" for i in range(PIECES - 1))

    with running_stack(args.port, {"ECHO_DELAY_MS": str(DELAY_MS)}, worker=True):
        token = new_user(args.port)
        urls = new_threads(args.port, token, args.runs + 1)

        started = time.monotonic()
        _, body = request(args.port, "POST", urls[-1], {"input": text, "background": True}, token)
        single = wait_all(args.port, token, [urls[-1] + "/" + body["data"]["id"]], started + 60)
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
        run_urls = [url for status, url in results if status == 202]
        final = wait_all(args.port, token, run_urls, started + 300)
        all_seconds = time.monotonic() - started

    print(f"provider: {PIECES} pieces over {(PIECES - 1) * DELAY_MS / 1000:.2f} s")
    print(f"single background run: {single_seconds:.2f} s ({single})")
    print(f"{args.runs} runs: accepted {len(run_urls)} (202) in {submitted:.2f} s")
    print(f"all ended after {all_seconds:.2f} s: {final}")
    print(
        f"ratio to a single run: {all_seconds / single_seconds:.2f} (target < 3); "
        f"left active: {final.get('still active', 0)}"
    )


if __name__ == "__main__":
    main()
