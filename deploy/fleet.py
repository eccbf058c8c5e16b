"""A fleet on one machine: web instances and workers behind nginx, sharing PostgreSQL and Redis.

    python deploy/fleet.py --web 2 --workers 2        (or: make fleet)

What several hosts would run, started here the way the README's Production
section says: each web instance is ``gunicorn -c gunicorn.conf.py`` on a free
port of its own, each worker ``manage.py worker``, each in a process group of
its own (so one can be killed whole, as a host that dies). They share one
PostgreSQL database (``DATABASE_URL``), migrated once before anything starts,
and one Redis: the task queue (``TASKS_QUEUE=redis``) and the cache that
holds throttle counters and stream slots (``CACHE_URL``), in a database
number the fleet takes for itself on a shared server (an empty one, emptied
again when it stops) unless ``--redis-url`` names one. nginx, from the system
packages, balances them round robin, with a configuration written into the
fleet's directory (see ``nginx_config``). Every member gets the same
``SECRET_KEY`` (one is made for the fleet when the environment has none).

The script prints the balancer's URL and runs until Ctrl-C or SIGTERM, then
stops everything it started. Tests use it as a context manager::

    with Fleet(web=2, workers=2, database_url=url) as fleet:
        fleet.url, fleet.webs, fleet.workers, fleet.kill(fleet.webs[0]), ...

Only the standard library, and redis-py (a dependency of the project) to
take a Redis database number.
"""

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/chatbot"
DEFAULT_REDIS = "redis://127.0.0.1:6379"
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
# The line a worker logs when it has claimed a run (conversations/tasks.py).
CARRYING = "Carrying out run {run_id}"
# Members get this long to stop after SIGTERM before their group is killed.
STOP_SECONDS = 15.0


class FleetError(RuntimeError):
    """The fleet could not be started as asked; the message says why and where to look."""


def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; FleetError after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise FleetError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A port the OS has free now (nginx needs one named in its configuration)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def shown(url: str) -> str:
    """``url`` without its password, to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def http_get(url: str, *, headers: dict[str, str] | None = None, timeout: float = 5.0) -> int:
    """The status of a GET, 0 when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


# Members ---------------------------------------------------------------------


@dataclass(eq=False)
class Member:
    """One process group of the fleet: a web instance, a worker or the balancer."""

    name: str
    process: subprocess.Popen
    log_path: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """What it printed so far (access log and application log)."""
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal_group(self, signum: int) -> None:
        # start_new_session made the process the leader of its group: the
        # signal reaches its children (gunicorn's workers) too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL to the whole group: no cleanup of any kind, as a host that dies."""
        self.signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)


def _start(name: str, command: list[str], env: dict[str, str], workdir: Path) -> Member:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Member(name, process, log_path)


def _stop(members: list[Member]) -> None:
    """SIGTERM to every group, then SIGKILL to what is left after STOP_SECONDS."""
    for member in members:
        if member.alive():
            member.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for member in members:
        with contextlib.suppress(subprocess.TimeoutExpired):
            member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Also whatever the leader left behind in its group.
        member.signal_group(signal.SIGKILL)
        member.process.wait(timeout=10)


# Redis -----------------------------------------------------------------------


class RedisDatabase:
    """A database number on a shared Redis server, taken by the fleet for its queue and cache.

    Two fleets on one server must not share a number: each one's workers
    would take the other's runs. A fleet takes the highest empty number from
    15 down to 2 (0 and 1 are the settings' and the README's defaults) by
    setting a claim key there, and empties it when it stops. The claim
    expires on its own, should the fleet be killed without stopping.
    """

    CLAIM_KEY = "chatbot-fleet:claim"
    CLAIM_SECONDS = 6 * 3600

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.token = secrets.token_hex(8)
        self.client: redis.Redis | None = None
        self.url = ""

    def claim(self) -> str:
        for number in range(15, 1, -1):
            client = redis.Redis.from_url(self.server_url, db=number, socket_connect_timeout=2)
            try:
                taken = client.set(self.CLAIM_KEY, self.token, nx=True, ex=self.CLAIM_SECONDS)
            except redis.exceptions.ConnectionError as exc:
                raise FleetError(
                    f"Redis does not answer at {self.server_url} ({exc}): start it "
                    "(redis-server --daemonize yes) or pass --redis-url"
                ) from None
            if taken and client.dbsize() == 1:
                self.client = client
                self.url = f"{self.server_url.rstrip('/')}/{number}"
                return self.url
            if taken:
                client.delete(self.CLAIM_KEY)
            client.close()
        raise FleetError(f"No empty Redis database number at {self.server_url}")

    def renew(self) -> None:
        """Keep the claim for another CLAIM_SECONDS (a fleet may run for days)."""
        if self.client is not None and self.client.get(self.CLAIM_KEY) == self.token.encode():
            self.client.expire(self.CLAIM_KEY, self.CLAIM_SECONDS)

    def release(self) -> None:
        if self.client is not None and self.client.get(self.CLAIM_KEY) == self.token.encode():
            self.client.flushdb()
        if self.client is not None:
            self.client.close()
        self.client = None


# nginx -----------------------------------------------------------------------


def nginx_config(
    *, listen_port: int, upstreams: list[int], workdir: Path, read_timeout: int
) -> str:
    """The balancer's configuration: round robin over ``upstreams``, fit for event streams."""
    temp = workdir / "nginx-temp"
    servers = "\n".join(
        f"        server {HOST}:{port} max_fails=1 fail_timeout=5s;" for port in upstreams
    )
    # As root, nginx's workers would run as the packaged default user, who
    # cannot write request bodies into this directory; the fleet's own user
    # can.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# Written by deploy/fleet.py for one fleet; rewritten when an instance is replaced.
{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log notice;
daemon off;

events {{
    worker_connections 4096;
}}

http {{
    # Every temporary path in the fleet's directory: no root-owned defaults.
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

    # The client's X-Request-ID, or one made here: the same id is in this log,
    # in the instance's log and on the response.
    map $http_x_request_id $fleet_request_id {{
        default $http_x_request_id;
        "" $request_id;
    }}
    log_format fleet '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                     'upstream=$upstream_addr request_id=$fleet_request_id $request_time';
    access_log {workdir}/nginx-access.log fleet;

    # Above MAX_BODY_BYTES (1 MiB), so the API refuses a large body in its
    # own envelope (413 PAYLOAD_TOO_LARGE) instead of nginx's HTML page.
    client_max_body_size 2m;

    upstream chatbot {{
{servers}
        # HTTP/1.1 connections kept open to the instances, closed before
        # gunicorn's own keep-alive (5 s) would close them under a request.
        keepalive 32;
        keepalive_timeout 4s;
    }}

    server {{
        listen {HOST}:{listen_port};

        location / {{
            proxy_pass http://chatbot;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-ID $fleet_request_id;
            # Event streams go to the client piece by piece (the API also
            # says X-Accel-Buffering: no on them).
            proxy_buffering off;
            proxy_cache off;
            # Longer than the silence of an idle stream (a ping every
            # SSE_PING_SECONDS) and of a waited-for run (no byte until the
            # reply is done).
            proxy_read_timeout {read_timeout}s;
            proxy_send_timeout {read_timeout}s;
        }}
    }}
}}
"""


def read_timeout_for(env: dict[str, str]) -> int:
    """The balancer's idle timeout: above the ping interval and the longest waited-for run."""
    ping = int(env.get("SSE_PING_SECONDS") or 15)
    provider = float(env.get("LLM_TIMEOUT_SECONDS") or 60) * (
        int(env.get("LLM_MAX_RETRIES") or 2) + 1
    )
    return int(max(2 * ping, provider)) + 10


# The fleet -------------------------------------------------------------------


@dataclass(eq=False)
class Fleet:
    """Web instances and workers behind nginx, on one database and one Redis (see the module)."""

    web: int = 2
    workers: int = 2
    database_url: str = ""
    # The members' environment (default: this process's); the fleet adds
    # the shared database, queue, cache and key.
    env: dict[str, str] | None = None
    # Balancer port; 0: a free one.
    port: int = 0
    # A Redis URL with a database number to use as is; empty: take one on
    # redis_server (see RedisDatabase).
    redis_url: str = ""
    redis_server: str = DEFAULT_REDIS
    worker_threads: int = 0
    # Where configuration and logs go; None: a temporary directory removed at stop.
    workdir: Path | None = None

    webs: list[Member] = field(default_factory=list, init=False)
    worker_members: list[Member] = field(default_factory=list, init=False)
    retired: list[Member] = field(default_factory=list, init=False)
    balancer: Member | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._counts = {"web": 0, "worker": 0}
        self._own_workdir = self.workdir is None
        self._redis: RedisDatabase | None = None
        self.member_env: dict[str, str] = {}

    # Life cycle --------------------------------------------------------------

    def __enter__(self) -> "Fleet":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Migrate once, then start the instances and workers, then the balancer."""
        try:
            self._prepare()
            self._migrate()
            # All at once: each waits on its own boot, not on the others'.
            self.webs.extend(self._spawn_web() for _ in range(self.web))
            self.worker_members.extend(self._spawn_worker() for _ in range(self.workers))
            for web in self.webs:
                self._wait_web(web)
            for worker in self.worker_members:
                self._wait_worker(worker)
            self._start_balancer()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the balancer, the instances and the workers; give back the Redis database."""
        members = [self.balancer] if self.balancer else []
        members += self.webs + self.worker_members + self.retired
        _stop([member for member in members if member is not None])
        if self._redis is not None:
            self._redis.release()
            self._redis = None
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _prepare(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        url = self.database_url or env.get("DATABASE_URL") or DEFAULT_DATABASE_URL
        if not url.startswith(("postgres://", "postgresql://")):
            raise FleetError(
                "A fleet shares one PostgreSQL database: set DATABASE_URL to one "
                f"(now {shown(url)})"
            )
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            raise FleetError("nginx is not installed (apt-get install nginx-light)")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="fleet-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.redis_url:
            redis_url = self.redis_url
        else:
            self._redis = RedisDatabase(self.redis_server)
            redis_url = self._redis.claim()
        env.setdefault("SECRET_KEY", "")
        if not env["SECRET_KEY"]:
            # Tokens signed by one instance are checked by another: one key for all.
            env["SECRET_KEY"] = "fleet-" + secrets.token_urlsafe(32)
        env.update(
            DATABASE_URL=url,
            CACHE_URL=redis_url,
            TASKS_QUEUE="redis",
            REDIS_URL=redis_url,
            PYTHONUNBUFFERED="1",
        )
        # One process per instance: each instance stands for a host.
        env.setdefault("WEB_CONCURRENCY", "1")
        # One proxy (nginx) in front: the client address is its X-Forwarded-For.
        env.setdefault("NUM_PROXIES", "1")
        self.member_env = env
        self.database_url = url
        self.redis_url = redis_url

    def _migrate(self) -> None:
        # Once, before any instance starts, as a deployment does before a rollout.
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=self.member_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise FleetError(f"migrate failed on {shown(self.database_url)}:\n{done.stderr}")

    # Members -----------------------------------------------------------------

    def _name(self, kind: str) -> str:
        self._counts[kind] += 1
        return f"{kind}{self._counts[kind]}"

    def _spawn_web(self) -> Member:
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"{HOST}:0",
            "--graceful-timeout",
            "10",
            "chatbot_project.wsgi",
        ]
        return _start(self._name("web"), command, self.member_env, self.workdir)

    def _spawn_worker(self) -> Member:
        command = [sys.executable, "manage.py", "worker"]
        if self.worker_threads:
            command += ["--threads", str(self.worker_threads)]
        return _start(self._name("worker"), command, self.member_env, self.workdir)

    def _wait_web(self, web: Member, timeout: float = 60.0) -> None:
        def listening():
            if not web.alive():
                raise FleetError(f"{web.name} exited:\n{web.tail()}")
            return _LISTENING.search(web.log())

        web.port = int(wait_for(listening, timeout=timeout, what=f"{web.name} to listen")[1])
        wait_for(
            lambda: http_get(f"{web.url}/healthz") == 200,
            timeout=timeout,
            what=f"{web.name} to answer /healthz",
            interval=0.1,
        )

    def _wait_worker(self, worker: Member, timeout: float = 60.0) -> None:
        def ready():
            if not worker.alive():
                raise FleetError(f"{worker.name} exited:\n{worker.tail()}")
            return "Worker:" in worker.log()

        wait_for(ready, timeout=timeout, what=f"{worker.name} to start")

    def add_web(self) -> Member:
        """One more web instance, behind the balancer once this returns."""
        web = self._spawn_web()
        try:
            self._wait_web(web)
        finally:
            self.webs.append(web)
        self._reload_balancer()
        return web

    def add_worker(self) -> Member:
        """One more worker, taking tasks once this returns."""
        worker = self._spawn_worker()
        try:
            self._wait_worker(worker)
        finally:
            self.worker_members.append(worker)
        return worker

    def kill(self, member: Member) -> None:
        """SIGKILL ``member``'s process group (it stays listed, and behind the balancer)."""
        member.kill()

    def replace(self, member: Member) -> Member:
        """Stop ``member`` (if it still runs) and start another in its place."""
        if member.alive():
            _stop([member])
        if member in self.webs:
            self.webs.remove(member)
            self.retired.append(member)
            return self.add_web()
        self.worker_members.remove(member)
        self.retired.append(member)
        return self.add_worker()

    # The balancer ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The balancer's URL: what clients use."""
        return self.balancer.url if self.balancer else ""

    def _write_balancer_config(self, port: int) -> Path:
        (self.workdir / "nginx-temp").mkdir(exist_ok=True)
        path = self.workdir / "nginx.conf"
        path.write_text(
            nginx_config(
                listen_port=port,
                upstreams=[web.port for web in self.webs],
                workdir=self.workdir,
                read_timeout=read_timeout_for(self.member_env),
            )
        )
        return path

    def _start_balancer(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        attempts = 1 if self.port else 5
        for _ in range(attempts):
            port = self.port or free_port()
            config = self._write_balancer_config(port)
            # -e: the error log before the configuration is read, which by
            # default is a root-owned path.
            command = [
                nginx,
                "-p",
                str(self.workdir),
                "-c",
                str(config),
                "-e",
                str(self.workdir / "nginx-error.log"),
            ]
            balancer = _start("nginx", command, self.member_env, self.workdir)
            balancer.port = port
            self.balancer = balancer

            def up(balancer=balancer):
                return not balancer.alive() or http_get(f"{balancer.url}/healthz") == 200

            wait_for(up, timeout=30, what="nginx to answer", interval=0.1)
            if balancer.alive():
                self.wait_balanced()
                return
            errors = (self.workdir / "nginx-error.log").read_text(errors="replace")
            if "Address already in use" not in errors:
                break
        raise FleetError(f"nginx did not start:\n{self.balancer.tail()}\n{errors[-2000:]}")

    def _reload_balancer(self) -> None:
        """Point the balancer at the current instances (nginx re-reads its configuration)."""
        self._write_balancer_config(self.balancer.port)
        self.balancer.process.send_signal(signal.SIGHUP)
        self.wait_balanced()

    def wait_balanced(self, timeout: float = 30.0) -> None:
        """Until every current web instance has answered a request through the balancer."""
        pending = set(self.webs)
        probes: list[str] = []

        def all_seen():
            probes.append(f"fleet-probe-{secrets.token_hex(6)}-{len(probes)}")
            http_get(f"{self.url}/healthz", headers={"X-Request-ID": probes[-1]})
            # Any probe so far: an instance logs a request just after answering it.
            for web in list(pending):
                log = web.log()
                if any(probe in log for probe in probes):
                    pending.discard(web)
            return not pending

        wait_for(all_seen, timeout=timeout, what="every instance to answer through nginx")

    # Who did what ------------------------------------------------------------

    def served_by(self, request_id: str, *, wait: float = 10.0) -> list[Member]:
        """The web instances whose log names ``request_id`` (polled up to ``wait`` s).

        gunicorn logs a request when its response is done, so a client may
        have it a moment before the line is written.
        """

        def found():
            return [web for web in self.webs + self.retired if request_id in web.log()]

        with contextlib.suppress(FleetError):
            return wait_for(found, timeout=wait, what=f"a log naming {request_id}")
        return []

    def carrier_of(self, run_id: str, *, wait: float = 10.0) -> Member | None:
        """The worker that claimed run ``run_id`` (from its log), polled up to ``wait`` s."""
        line = CARRYING.format(run_id=run_id)

        def found():
            return next((w for w in self.worker_members + self.retired if line in w.log()), None)

        with contextlib.suppress(FleetError):
            return wait_for(found, timeout=wait, what=f"the worker of run {run_id}")
        return None

    def describe(self) -> str:
        """Who runs where, and the end of each log: for failure messages."""
        lines = [f"balancer {self.url}, database {shown(self.database_url)}, {self.redis_url}"]
        for member in [self.balancer, *self.webs, *self.worker_members, *self.retired]:
            if member is None:
                continue
            state = "up" if member.alive() else f"exited {member.process.returncode}"
            lines.append(f"--- {member.name} (pid {member.pid}, port {member.port}, {state})")
            lines.append(member.tail(15))
        return "\n".join(lines)

    def watch(self, interval: float = 1.0) -> None:
        """Until interrupted: say when a member exits, and keep the Redis claim."""
        reported: set[str] = set()
        renewed = time.monotonic()
        while True:
            time.sleep(interval)
            for member in [self.balancer, *self.members()]:
                if member is not None and not member.alive() and member.name not in reported:
                    reported.add(member.name)
                    print(
                        f"{member.name} exited with {member.process.returncode}; "
                        f"see {member.log_path}",
                        file=sys.stderr,
                        flush=True,
                    )
            if self._redis is not None and time.monotonic() - renewed > 60:
                self._redis.renew()
                renewed = time.monotonic()

    def members(self) -> Iterator[Member]:
        yield from self.webs
        yield from self.worker_members


# The command line --------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Start a fleet, print where it is, stop it on Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--web", type=int, default=2, help="web instances (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    parser.add_argument("--port", type=int, default=0, help="balancer port (default: a free one)")
    parser.add_argument(
        "--redis-url",
        default="",
        help="Redis URL with a database number to use as is (default: take an empty one on "
        f"{DEFAULT_REDIS}, emptied at the end)",
    )
    parser.add_argument("--worker-threads", type=int, default=0, help="default WORKER_THREADS")
    parser.add_argument(
        "--logs", type=Path, help="keep configuration and logs here (default: a temporary dir)"
    )
    args = parser.parse_args(argv)
    if args.web < 1 or args.workers < 0:
        parser.error("--web must be at least 1 and --workers at least 0")

    fleet = Fleet(
        web=args.web,
        workers=args.workers,
        port=args.port,
        redis_url=args.redis_url,
        worker_threads=args.worker_threads,
        workdir=args.logs,
    )
    # SIGINT too: a shell starts a background job with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        fleet.start()
        print(f"Balancer (nginx, round robin): {fleet.url}")
        for member in fleet.members():
            where = f" {member.url}" if member.port else ""
            print(f"  {member.name:<8} pid {member.pid}{where}  log {member.log_path}")
        print(f"  database {shown(fleet.database_url)}, Redis {fleet.redis_url}")
        print("Ctrl-C stops the fleet.", flush=True)
        fleet.watch()
    except FleetError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not leave half the fleet running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fleet.stop()
        print("Fleet stopped.", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
