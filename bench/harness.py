"""Shared pieces of the benchmarks: start the production server and worker, call the API.

The server is started the way the README's production section says
(gunicorn with gunicorn.conf.py, `manage.py worker`), on the database in
DATABASE_URL (PostgreSQL for published numbers; DEFAULT_DATABASE_URL when it
is unset). Every benchmark migrates its database first, and one that cannot
run on it stops with a message that names DATABASE_URL.
"""

import contextlib
import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/chatbot"


def _shown(url: str) -> str:
    """``url`` without its password, to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def database_url(*, postgresql_only: bool = False) -> str:
    """DATABASE_URL, else DEFAULT_DATABASE_URL; with ``postgresql_only``, refuses others."""
    url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    if postgresql_only and not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit(
            f"{Path(sys.argv[0]).name} needs PostgreSQL: set DATABASE_URL to a PostgreSQL "
            f"database (now {_shown(url)}; unset, {DEFAULT_DATABASE_URL})"
        )
    return url


def setup_django(*, postgresql_only: bool = False, **defaults: str) -> None:
    """Django in this process, on the benchmark's database; ``defaults`` for other settings."""
    os.environ["DATABASE_URL"] = database_url(postgresql_only=postgresql_only)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_project.settings")
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def migrate_database() -> str:
    """After ``setup_django()``: migrate the benchmark's database; what to print of it."""
    from django.core.management import call_command
    from django.db import OperationalError, connection

    try:
        call_command("migrate", interactive=False, verbosity=0)
    except OperationalError as exc:
        raise SystemExit(
            f"Could not migrate the benchmark's database: {exc}\nSet DATABASE_URL to a "
            f"database that exists (unset, {DEFAULT_DATABASE_URL})"
        ) from None
    return f"{connection.vendor}: {connection.settings_dict['NAME']}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _process_tree(pids: list[int]) -> Iterator[int]:
    """The given processes and all their descendants that still exist."""
    seen = set()
    queue = list(pids)
    while queue:
        pid = queue.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(FileNotFoundError):
            queue.extend(
                int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            )
            yield pid


def rss_mb(pids: list[int]) -> float:
    """Resident memory of the given processes and their children, in MiB."""
    total_kb = 0
    for pid in _process_tree(pids):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the given processes and their children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in _process_tree(pids):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def server_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SECRET_KEY", "benchmark-only-" + secrets.token_hex(16))
    env["DATABASE_URL"] = database_url()
    env.setdefault("ALLOWED_HOSTS", HOST)
    # Benchmarks measure capacity, not the limits: throttles off, no quota,
    # no per-user caps (their one user stands for many).
    for name in ("THROTTLE_AUTH", "THROTTLE_RUNS", "THROTTLE_USER"):
        env.setdefault(name, "")
    env.setdefault("MAX_SESSIONS_PER_USER", "1000000000")
    env.setdefault("MAX_STREAMS_PER_USER", "0")
    env.setdefault("MAX_ACTIVE_RUNS_PER_USER", "0")
    env.update(extra)
    return env


@contextlib.contextmanager
def running_stack(
    port: int,
    extra_env: dict[str, str],
    worker: bool,
    *,
    root: Path = ROOT,
    server_args: tuple[str, ...] = (),
    worker_args: tuple[str, ...] = (),
) -> Iterator[list[int]]:
    """gunicorn (and the worker) as in production, from the code in ``root``; yields their pids."""
    env = server_env(extra_env)
    print(f"database: {_shown(env['DATABASE_URL'])}", flush=True)
    migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]
    if subprocess.run(migrate, cwd=root, env=env, check=False).returncode != 0:
        raise SystemExit(
            "Could not migrate the benchmark's database (the error is above): set "
            f"DATABASE_URL to a database that exists (unset, {DEFAULT_DATABASE_URL})"
        )
    procs = [
        subprocess.Popen(
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"{HOST}:{port}",
                "--access-logfile",
                "/dev/null",
                *server_args,
                "chatbot_project.wsgi",
            ],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    if worker:
        procs.append(
            subprocess.Popen(
                [sys.executable, "manage.py", "worker", *worker_args],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = request(port, "GET", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        yield [proc.pid for proc in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def request(
    port: int, method: str, path: str, body: dict | None = None, token: str | None = None
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, (json.loads(data) if data else {})


def new_user(port: int) -> str:
    """Register a throwaway user; return an access token."""
    username = "bench-" + secrets.token_hex(6)
    password = secrets.token_urlsafe(16)
    request(port, "POST", "/api/v1/auth/register", {"username": username, "password": password})
    _, body = request(
        port, "POST", "/api/v1/auth/token", {"username": username, "password": password}
    )
    return body["data"]["access"]


def new_threads(port: int, token: str, count: int) -> list[str]:
    """``count`` threads (one active run per thread), as run URLs."""
    urls = []
    session_id = None
    for index in range(count):
        if index % 50 == 0:
            _, body = request(port, "POST", "/api/v1/chatkit/sessions", {}, token)
            session_id = body["data"]["id"]
        _, body = request(port, "POST", f"/api/v1/chatkit/sessions/{session_id}/threads", {}, token)
        urls.append(f"/api/v1/chatkit/sessions/{session_id}/threads/{body['data']['id']}/runs")
    return urls
