"""Load benchmark: the API against a bare Django view, under wrk.

Starts the production stack (gunicorn with gunicorn.conf.py) on DATABASE_URL
(default PostgreSQL at 127.0.0.1/chatbot), throttles off (bench/harness.py), and drives each
endpoint with wrk (Debian package `wrk`) at a fixed concurrency, one user
and token per wrk connection:

- POST /api/v1/chatkit/sessions   vs  POST /bench/sessions (same insert, no DRF, no auth)
- GET  /api/v1/chatkit/sessions   vs  GET  /bench/sessions (same page of 20)
- POST .../runs                   a synchronous run with the echo provider

    .venv/bin/python bench/load.py [--connections 16] [--seconds 10] [--port 8814]

Prints requests/s, p50, p99 and p99/p50 for each (target: p99 within 3x
p50), and the API/bare throughput ratio (target: the API at least 60% of the
bare view).
"""

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import new_threads, new_user, request, running_stack

LUA = r"""
local targets = {}
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("target", counter)
  table.insert(threads, thread)
end

function init(args)
  local spec = TARGETS[target]
  wrk.method = METHOD
  wrk.path = spec.path
  wrk.body = BODY
  wrk.headers["Content-Type"] = "application/json"
  for name, value in pairs(spec.headers) do wrk.headers[name] = value end
  errors = 0
end

function response(status, headers, body)
  if status >= 300 then errors = errors + 1 end
end

function done(summary, latency, requests)
  local errs = 0
  for _, thread in ipairs(threads) do errs = errs + thread:get("errors") end
  io.write(string.format(
    "RESULT {\"requests\": %d, \"seconds\": %f, \"p50_ms\": %f, \"p99_ms\": %f, "
    .. "\"bad_status\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, errs,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def run_wrk(port: int, connections: int, seconds: int, method: str, targets: list, body: str):
    lua_targets = ",\n".join(
        "{path = "
        + json.dumps(path)
        + ", headers = {"
        + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
        + "}}"
        for path, headers in targets
    )
    script = (
        f"TARGETS = {{{lua_targets}}}\nMETHOD = {json.dumps(method)}\n"
        f"BODY = {json.dumps(body) if body else 'nil'}\n{LUA}"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as handle:
        handle.write(script)
        handle.flush()
        output = subprocess.run(
            [
                shutil.which("wrk") or "wrk",
                f"-t{connections}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                handle.name,
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def show(name: str, result: dict) -> None:
    print(
        f"{name:<34} {result['rps']:8.0f} req/s   p50 {result['p50_ms']:7.1f} ms   "
        f"p99 {result['p99_ms']:7.1f} ms   p99/p50 {result['p99_ms'] / result['p50_ms']:5.1f}"
        f"   non-2xx {result['bad_status']}"
        f"   socket errors {result['socket_errors']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="API vs bare Django under wrk")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--port", type=int, default=8814)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")

    # The product's settings with the bare views mounted (bench/bare.py).
    env = {"DJANGO_SETTINGS_MODULE": "bench.settings"}
    with running_stack(args.port, env, worker=False):
        # Separate users for the API and the bare view, each with 20 sessions:
        # the rows the bare view inserts must not swell the API's quota count.
        tokens, users, run_urls = [], [], []
        for _ in range(args.connections):
            token = new_user(args.port)
            tokens.append(token)
            run_urls.extend(new_threads(args.port, token, 1))
            bare_token = new_user(args.port)
            _, me = request(args.port, "GET", "/api/v1/auth/me", token=bare_token)
            users.append(me["data"]["id"])
            for each in (token, bare_token):
                for _ in range(20):
                    request(args.port, "POST", "/api/v1/chatkit/sessions", {"title": "seed"}, each)

        api = [("/api/v1/chatkit/sessions", {"Authorization": f"Bearer {t}"}) for t in tokens]
        bare = [("/bench/sessions", {"X-Bench-User": u}) for u in users]
        runs = [
            (url, {"Authorization": f"Bearer {t}"}) for url, t in zip(run_urls, tokens, strict=True)
        ]
        body = json.dumps({"title": "load"})
        c, s, p = args.connections, args.seconds, args.port

        results = {
            "bare POST sessions": run_wrk(p, c, s, "POST", bare, body),
            "API POST sessions": run_wrk(p, c, s, "POST", api, body),
            "bare GET sessions": run_wrk(p, c, s, "GET", bare, ""),
            "API GET sessions": run_wrk(p, c, s, "GET", api, ""),
            "API POST run (sync, echo)": run_wrk(
                p, c, s, "POST", runs, json.dumps({"input": "hello there"})
            ),
        }

    print(f"wrk: {c} connections, {s} s each; gunicorn.conf.py defaults; {Path.cwd().name}")
    for name, result in results.items():
        show(name, result)
    for verb in ("POST", "GET"):
        ratio = results[f"API {verb} sessions"]["rps"] / results[f"bare {verb} sessions"]["rps"]
        print(f"{verb} sessions: API / bare throughput = {ratio:.2f} (target >= 0.60)")


if __name__ == "__main__":
    main()
