"""The background workers' heartbeat: one row per host, read by the metrics scrape."""

import socket
from datetime import timedelta

from django.utils import timezone

from .models import WorkerHeartbeat

# A host whose worker has not beaten for this long is gone (a container
# replaced by another with a new host name): its row goes.
FORGET_AFTER = timedelta(days=7)


def worker_heartbeat_record(*, host: str | None = None) -> None:
    """Record that this host's worker is alive now."""
    WorkerHeartbeat.objects.update_or_create(
        host=host or socket.gethostname(), defaults={"seen_at": timezone.now()}
    )


def worker_heartbeats_prune() -> int:
    """Forget the hosts whose worker has been silent past ``FORGET_AFTER``; how many."""
    deleted, _ = WorkerHeartbeat.objects.filter(seen_at__lt=timezone.now() - FORGET_AFTER).delete()
    return deleted
