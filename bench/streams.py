"""Benchmark: many clients streaming runs at once, over REST and over ChatKit.

Starts gunicorn as in production, on DATABASE_URL (default PostgreSQL at
127.0.0.1/chatbot), with the echo provider imitating a model that takes 2 s
and streams 50 pieces (ECHO_DELAY_MS=40 between pieces). Then N clients start
a streamed run at once and read every event: over REST (POST .../runs with
`stream: true`), then over the ChatKit endpoint (`threads.add_user_message`
on POST .../sessions/{id}/chatkit), on the same server, so that both figures
are of the same day and the same machine.

    .venv/bin/python bench/streams.py [--clients 200] [--port 8811] [--surface both]

Prints, for each surface, completed streams, errors, time to first delta (the
provider's own is 0 ms: its first piece is immediate), stream durations
against the ideal 2 s (target p99 <= 1.3x), server CPU and memory; then the
ChatKit figures against the REST ones.
"""

import argparse
import http.client
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator

from harness import HOST, cpu_seconds, new_threads, new_user, percentile, rss_mb, running_stack

PIECES = 50
DELAY_MS = 40
IDEAL_SECONDS = (PIECES - 1) * DELAY_MS / 1000


class Rest:
    """POST .../runs with `stream: true`; SSE events named by `event:` lines."""

    name = "REST"

    @staticmethod
    def request(run_url: str, text: str) -> tuple[str, dict]:
        return run_url, {"input": text, "stream": True}

    @staticmethod
    def read(lines: Iterator[str]) -> Iterator[tuple[str, str | None]]:
        """(event kind, delta or None) for each event, until the stream's end."""
        event = None
        for line in lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "done":
                    return
                delta = json.loads(line[6:])["delta"] if event == "message.delta" else None
                yield event, delta

    @staticmethod
    def completed(kinds: list[str]) -> bool:
        return kinds[-1:] == ["run.completed"]


class ChatKit:
    """`threads.add_user_message` on the session's ChatKit endpoint; `data:` frames only."""

    name = "ChatKit"

    @staticmethod
    def request(run_url: str, text: str) -> tuple[str, dict]:
        session_url, thread_id = run_url.removesuffix("/runs").split("/threads/")
        params = {
            "thread_id": thread_id,
            "input": {
                "content": [{"type": "input_text", "text": text}],
                "attachments": [],
                "inference_options": {},
            },
        }
        return f"{session_url}/chatkit", {"type": "threads.add_user_message", "params": params}

    @staticmethod
    def read(lines: Iterator[str]) -> Iterator[tuple[str, str | None]]:
        for line in lines:
            if line.startswith("data: "):
                event = json.loads(line[6:])
                kind = event["type"]
                update = event.get("update") or {}
                if update.get("type"):
                    kind = update["type"]
                delta = update.get("delta") if kind.endswith(".text_delta") else None
                yield kind, delta

    @staticmethod
    def completed(kinds: list[str]) -> bool:
        # The stream's last event is the reply done, or the thread's new title after it.
        return "thread.item.done" in kinds[-2:] and "error" not in kinds


def stream_once(surface, port: int, token: str, url: str, text: str, barrier, results, index):
    path, body = surface.request(url, text)
    barrier.wait()
    started = time.perf_counter()
    first_delta = None
    deltas = []
    kinds = []
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        lines = (line.decode().rstrip("\n") for line in iter(response.readline, b""))
        for kind, delta in surface.read(lines):
            kinds.append(kind)
            if delta is not None:
                if first_delta is None:
                    first_delta = time.perf_counter() - started
                deltas.append(delta)
        conn.close()
        ok = surface.completed(kinds) and "".join(deltas) == f"Echo: {text}"
        results[index] = {
            "ok": ok,
            "ttfd": first_delta,
            "duration": time.perf_counter() - started,
            "error": None if ok else f"events ended {kinds[-2:]}",
        }
    except Exception as exc:  # a failed client is counted, not fatal
        results[index] = {"ok": False, "error": repr(exc)}


def run_surface(surface, port: int, pids: list[int], clients: int, text: str) -> dict:
    """``clients`` streams of ``surface`` at once, each on its own new thread; their figures."""
    token = new_user(port)
    urls = new_threads(port, token, clients)
    memory_before = rss_mb(pids)
    barrier = threading.Barrier(clients)
    results: list[dict | None] = [None] * clients
    threads = [
        threading.Thread(
            target=stream_once, args=(surface, port, token, urls[i], text, barrier, results, i)
        )
        for i in range(clients)
    ]
    cpu_before = cpu_seconds(pids)
    client_cpu_before = sum(os.times()[:2])
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    figures = {
        "server_cpu": cpu_seconds(pids) - cpu_before,
        "client_cpu": sum(os.times()[:2]) - client_cpu_before,
        "memory": (memory_before, rss_mb(pids)),
        "wall": wall,
    }
    done = [r for r in results if r and r["ok"]]
    errors = [r["error"] for r in results if not r or not r["ok"]]
    print(f"== {surface.name}: {clients} clients")
    print(f"completed streams: {len(done)}; errors: {len(errors)}")
    for error in sorted(set(errors))[:5]:
        print(f"  error: {error}")
    if done:
        ttfd = [r["ttfd"] * 1000 for r in done]
        durations = [r["duration"] for r in done]
        figures["ttfd_p99"] = percentile(ttfd, 0.99)
        figures["p99"] = p99 = percentile(durations, 0.99)
        print(
            f"time to first delta: median {statistics.median(ttfd):.0f} ms, "
            f"p99 {figures['ttfd_p99']:.0f} ms (provider's own: 0 ms)"
        )
        print(
            f"stream duration: median {statistics.median(durations):.2f} s, p99 {p99:.2f} s; "
            f"ideal {IDEAL_SECONDS:.2f} s; p99/ideal {p99 / IDEAL_SECONDS:.2f} (target <= 1.3)"
        )
    print(
        f"wall time for all: {wall:.2f} s; "
        f"CPU: server {figures['server_cpu']:.1f} s, client {figures['client_cpu']:.1f} s"
    )
    before, after = figures["memory"]
    print(f"server memory (RSS): before {before:.0f} MiB, after {after:.0f} MiB", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="concurrent streaming runs")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--surface", choices=("rest", "chatkit", "both"), default="both")
    args = parser.parse_args()
    text = " ".join(f"word{i}" for i in range(PIECES - 1))
    surfaces = {"rest": [Rest], "chatkit": [ChatKit], "both": [Rest, ChatKit]}[args.surface]

    print(f"provider: {PIECES} pieces over {IDEAL_SECONDS:.2f} s")
    with running_stack(args.port, {"ECHO_DELAY_MS": str(DELAY_MS)}, worker=False) as pids:
        figures = {
            surface.name: run_surface(surface, args.port, pids, args.clients, text)
            for surface in surfaces
        }
    rest, chatkit = figures.get("REST"), figures.get("ChatKit")
    if rest and chatkit and "p99" in rest and "p99" in chatkit:
        print(
            f"== ChatKit against REST, same server: stream p99 {chatkit['p99']:.2f} s against "
            f"{rest['p99']:.2f} s ({chatkit['p99'] / rest['p99']:.2f}x); first delta p99 "
            f"{chatkit['ttfd_p99']:.0f} ms against {rest['ttfd_p99']:.0f} ms; server CPU "
            f"{chatkit['server_cpu']:.1f} s against {rest['server_cpu']:.1f} s"
        )


if __name__ == "__main__":
    main()
