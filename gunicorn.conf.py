"""gunicorn settings for `make run` and production (`gunicorn -c gunicorn.conf.py ...`).

gthread workers: each request holds a thread, and a streamed run holds one
for as long as the reply takes, waiting on I/O. Many threads per process keep
slow streams from starving other requests, while the GIL is released during
that waiting; two processes use both cores. Each process uses at most
DB_POOL_MAX_SIZE database connections, however many threads it has.
MAX_STREAMS_PER_USER (8) and MAX_ACTIVE_RUNS_PER_USER (4) keep one user from
holding more than a few of the 2 x 128 threads; keep them well below
WEB_CONCURRENCY x WEB_THREADS.

Metrics (README, Metrics): with METRICS_TOKEN set, the worker processes
write their metrics to files in PROMETHEUS_MULTIPROC_DIR, which any one of
them adds up when scraped. The directory is this server's alone: it is
emptied at start, and each dead worker's live gauges are dropped. Unset, a
temporary directory is made for this server and removed when it stops.
"""

import os
import shutil
import tempfile
from pathlib import Path

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "128"))
# gthread workers heartbeat from their main loop, so a long stream does not
# trip this; it bounds a stuck worker.
timeout = int(os.environ.get("WEB_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5
# gunicorn 27's control socket sits at one path per user (~/.gunicorn), so a
# second instance on the host (benchmarks, tests, several instances behind one
# balancer) collides with the first; nothing here uses it.
control_socket_disable = True
accesslog = "-"
if os.environ.get("LOG_FORMAT") == "json":
    # One JSON object per line, built in chatbot_project/gunicorn_logging.py.
    logger_class = "chatbot_project.gunicorn_logging.JSONAccessLogger"
else:
    access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'


def when_ready(server) -> None:
    # Server-sent events are many small writes: without TCP_NODELAY, Nagle's
    # algorithm holds each one back until the client acknowledges the last.
    # Accepted sockets inherit the option from the listening socket.
    import socket

    for listener in server.LISTENERS:
        if listener.sock.family in (socket.AF_INET, socket.AF_INET6):
            listener.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def post_worker_init(worker) -> None:
    # A full (generation 2) garbage collection walks every object the process
    # holds: some 200,000 once Django, DRF and the SDKs are loaded, about 90 ms
    # during which no thread of this worker runs. Those are what made the p99
    # of cheap requests 9x their p50 (bench/load.py). Load the URLconf (and with
    # it every view module) now, then move everything alive into the permanent
    # generation, which collections skip; a full collection then walks only
    # what requests made since (about 10 ms).
    import gc
    from importlib import import_module

    from django.conf import settings

    import_module(settings.ROOT_URLCONF)
    gc.collect()
    gc.freeze()


_METRICS_DIR_PREFIX = "chatbot-metrics-"


def on_starting(server) -> None:
    # Before any worker is forked (and imports prometheus_client, which
    # reads the variable once): every worker writes to the same directory.
    if not os.environ.get("METRICS_TOKEN"):
        return
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_METRICS_DIR_PREFIX)
        return
    # A previous run's files would be added to this one's: its live gauges
    # for good (their processes are gone without a child_exit).
    Path(directory).mkdir(parents=True, exist_ok=True)
    for stale in Path(directory).glob("*.db"):
        stale.unlink()


def child_exit(server, worker) -> None:
    # A dead worker's counters and histograms stay in the sums; its live
    # gauges (open event streams) must not.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    # Only the directory on_starting made.
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    if directory.parent == Path(tempfile.gettempdir()) and directory.name.startswith(
        _METRICS_DIR_PREFIX
    ):
        shutil.rmtree(directory, ignore_errors=True)
