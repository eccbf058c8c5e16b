"""Run the background worker of the configured task engine."""

import logging
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from ...runs import runs_expire_stale
from ...tasks import (
    configured_huey,
    maintenance,
    prepare_task_queue,
    prune_task_results,
    worker_starting,
)
from ...workers import worker_heartbeat_record, worker_heartbeats_prune

logger = logging.getLogger(__name__)


# Some records are looked for hourly, not every round: expired refresh
# tokens, say, whose table has no index on their expiry.
HOURLY = 3600


def maintain_forever(interval: float, stop: threading.Event) -> None:
    """Every ``interval`` seconds until ``stop``: beat, expire stale runs, drop old records.

    The heartbeat (``chatbot_worker_last_heartbeat_timestamp_seconds``) says
    this loop, and so the database, is reachable from the worker. The other
    apps' records go through the ``maintenance`` signal (sent with
    ``hourly`` True in the first round that gets that far, then every
    ``HOURLY`` seconds), so the domain does not import them.
    """
    hourly_due = time.monotonic()
    while not stop.wait(interval):
        try:
            worker_heartbeat_record()
            runs_expire_stale()
            prune_task_results()
            hourly = time.monotonic() >= hourly_due
            maintenance.send(sender=None, hourly=hourly)
            if hourly:
                worker_heartbeats_prune()
                hourly_due = time.monotonic() + HOURLY
        except Exception:
            # The database may be briefly away; the next round tries again.
            logger.exception("Worker maintenance failed")
        finally:
            connection.close()


class Command(BaseCommand):
    help = (
        "Start the worker that carries out background runs (huey with thread workers "
        "by default; WORKER_THREADS at once). Expires stale runs at start and then "
        "periodically, so runs of a crashed worker end as expired; drops expired "
        "idempotency records and refresh tokens; records its heartbeat; serves its "
        "metrics on WORKER_METRICS_BIND when that and METRICS_TOKEN are set."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--threads", type=int, help="Runs carried out at once (default WORKER_THREADS)."
        )

    def handle(self, *args, **options) -> None:
        huey = configured_huey()
        if huey is None:
            raise CommandError(
                f"TASKS backend {settings.TASKS['default']['BACKEND']} brings its own worker "
                "(for RQ: `manage.py rqworker`); run that, and `manage.py reap_runs` from cron."
            )
        prepare_task_queue()
        worker_heartbeat_record()
        expired = runs_expire_stale()
        connection.close()
        self.stdout.write(f"Expired {expired} stale run(s) left by earlier workers.")

        for _receiver, said in worker_starting.send(sender=None):
            if said:
                self.stdout.write(said)

        stop = threading.Event()
        interval = max(5.0, min(60.0, settings.RUN_TIMEOUT_SECONDS / 2))
        threading.Thread(
            target=maintain_forever, args=(interval, stop), name="maintenance", daemon=True
        ).start()

        consumer_options = dict(settings.HUEY.get("consumer", {}))
        if options["threads"]:
            consumer_options["workers"] = options["threads"]
        self.stdout.write(
            f"Worker: {consumer_options.get('workers', 1)} thread(s), "
            f"queue {type(huey.storage).__name__}."
        )
        try:
            huey.create_consumer(**consumer_options).run()
        finally:
            stop.set()
