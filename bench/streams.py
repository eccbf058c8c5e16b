"""Benchmark: many clients streaming runs at once.

Starts gunicorn and the worker as in production, on DATABASE_URL (default
PostgreSQL at 127.0.0.1/chatbot), with the echo provider imitating a model
that takes 2 s and streams 50 pieces (ECHO_DELAY_MS=40 between pieces). Then
N clients POST `stream: true` at once and read every event.

    .venv/bin/python bench/streams.py [--clients 200] [--port 8811]

Prints completed streams, errors, time to first delta (the provider's own is
0 ms: its first piece is immediate), stream durations against the ideal 2 s
(target p99 <= 1.3x), and server memory before and after.
"""

import argparse
import http.client
import json
import os
import statistics
import threading
import time

from harness import HOST, cpu_seconds, new_threads, new_user, percentile, rss_mb, running_stack

PIECES = 50
DELAY_MS = 40
IDEAL_SECONDS = (PIECES - 1) * DELAY_MS / 1000


def stream_once(port: int, token: str, url: str, text: str, barrier, results, index) -> None:
    barrier.wait()
    started = time.perf_counter()
    first_delta = None
    deltas = []
    events = []
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        conn.request(
            "POST",
            url,
            body=json.dumps({"input": text, "stream": True}),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        event = None
        while True:
            line = response.fp.readline()
            if not line:
                break
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
                events.append(event)
            elif line.startswith("data: ") and event == "message.delta":
                if first_delta is None:
                    first_delta = time.perf_counter() - started
                deltas.append(json.loads(line[6:])["delta"])
            elif line.startswith("data: ") and event == "done":
                break
        conn.close()
        ok = events[-2:] == ["run.completed", "done"] and "".join(deltas) == f"Echo: {text}"
        results[index] = {
            "ok": ok,
            "ttfd": first_delta,
            "duration": time.perf_counter() - started,
            "error": None if ok else f"events ended {events[-2:]}",
        }
    except Exception as exc:  # a failed client is counted, not fatal
        results[index] = {"ok": False, "error": repr(exc)}


def main() -> None:
    parser = argparse.ArgumentParser(description="concurrent streaming runs")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--port", type=int, default=8811)
    args = parser.parse_args()
    text = " ".join(f"word{i}" for i in range(PIECES - 1))

    with running_stack(args.port, {"ECHO_DELAY_MS": str(DELAY_MS)}, worker=False) as pids:
        token = new_user(args.port)
        urls = new_threads(args.port, token, args.clients)
        memory_before = rss_mb(pids)
        barrier = threading.Barrier(args.clients)
        results: list[dict | None] = [None] * args.clients
        threads = [
            threading.Thread(
                target=stream_once, args=(args.port, token, urls[i], text, barrier, results, i)
            )
            for i in range(args.clients)
        ]
        cpu_before = cpu_seconds(pids)
        client_cpu_before = sum(os.times()[:2])
        wall = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall
        server_cpu = cpu_seconds(pids) - cpu_before
        client_cpu = sum(os.times()[:2]) - client_cpu_before
        memory_after = rss_mb(pids)

    done = [r for r in results if r and r["ok"]]
    errors = [r["error"] for r in results if not r or not r["ok"]]
    ttfd = [r["ttfd"] * 1000 for r in done]
    durations = [r["duration"] for r in done]
    print(f"clients: {args.clients}; provider: {PIECES} pieces over {IDEAL_SECONDS:.2f} s")
    print(f"completed streams: {len(done)}; errors: {len(errors)}")
    for error in sorted(set(errors))[:5]:
        print(f"  error: {error}")
    if done:
        print(
            f"time to first delta: median {statistics.median(ttfd):.0f} ms, "
            f"p99 {percentile(ttfd, 0.99):.0f} ms (provider's own: 0 ms)"
        )
        p99 = percentile(durations, 0.99)
        print(
            f"stream duration: median {statistics.median(durations):.2f} s, p99 {p99:.2f} s; "
            f"ideal {IDEAL_SECONDS:.2f} s; p99/ideal {p99 / IDEAL_SECONDS:.2f} (target <= 1.3)"
        )
    print(
        f"wall time for all: {wall:.2f} s; "
        f"CPU: server {server_cpu:.1f} s, client {client_cpu:.1f} s"
    )
    print(f"server memory (RSS): before {memory_before:.0f} MiB, after {memory_after:.0f} MiB")


if __name__ == "__main__":
    main()
