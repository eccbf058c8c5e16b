"""The runs' metrics (Prometheus): defined here, moved where a run starts, ends,
gets its first piece of text, or fails at its provider.

Counters and histograms are per process (in gunicorn's multiprocess mode,
one file per process that the scrape adds up). What the database holds for
every process and host alike (runs waiting for a worker, the workers'
heartbeats) is not a per-process gauge: ``RunStateCollector`` reads it at
scrape time, one query each, so any web process of any host reports the
same numbers and nothing on a run's path writes them. The HTTP layer
serves all of it (``chatkit/metrics.py``).

Labels are bounded: ``provider`` is the name of a provider adapter,
``mode`` one of ``RunMode`` (``unknown`` for runs from before it was
stored), ``status`` a run status, ``code`` a provider error code.
"""

import logging
from collections.abc import Iterator
from datetime import datetime

from django.db import DatabaseError
from django.db.models import Count, Max, Min
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from .models import ACTIVE_RUN_STATUSES, Run, RunStatus, WorkerHeartbeat

logger = logging.getLogger(__name__)

# Seconds, from a fast local model's first token to a slow remote one's.
FIRST_DELTA_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

RUNS_STARTED = Counter(
    "chatbot_runs_started",
    "Runs started (stored, queued or in progress).",
    ["provider", "mode"],
)
RUNS_ENDED = Counter(
    "chatbot_runs_ended",
    "Runs ended, counted by the process that stored the end.",
    ["provider", "mode", "status"],
)
RUN_FIRST_DELTA = Histogram(
    "chatbot_run_first_delta_seconds",
    "From a run's start (in progress) to the first piece of its reply from the provider.",
    ["provider", "mode"],
    buckets=FIRST_DELTA_BUCKETS,
)
RUN_DURATION = Histogram(
    "chatbot_run_duration_seconds",
    "From a run's start (in progress) to its end; runs ended while queued are not observed.",
    ["provider", "mode", "status"],
    buckets=DURATION_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    "chatbot_provider_errors",
    "Runs failed by their provider, by error code.",
    ["provider", "code"],
)


def _mode(run: Run) -> str:
    return run.mode or "unknown"


def _seconds_since(start: datetime | None, end: datetime) -> float | None:
    # Both ends are read off one process's clock, except for a run claimed
    # on one host and ended (cancelled, expired) on another.
    if start is None:
        return None
    return max(0.0, (end - start).total_seconds())


def run_started(run: Run) -> None:
    """Count a run that was just stored."""
    RUNS_STARTED.labels(run.provider, _mode(run)).inc()


def run_ended(run: Run) -> None:
    """Count the end of ``run``, just stored by this process, and observe its duration."""
    mode = _mode(run)
    RUNS_ENDED.labels(run.provider, mode, run.status).inc()
    duration = _seconds_since(run.started_at, run.completed_at)
    if duration is not None:
        RUN_DURATION.labels(run.provider, mode, run.status).observe(duration)


def run_first_delta(run: Run) -> None:
    """Observe the time to the first piece of ``run``'s reply, as it arrives."""
    waited = _seconds_since(run.started_at, timezone.now())
    if waited is not None:
        RUN_FIRST_DELTA.labels(run.provider, _mode(run)).observe(waited)


def provider_error(run: Run, code: str) -> None:
    """Count a provider failure of ``run``."""
    PROVIDER_ERRORS.labels(run.provider, code).inc()


class RunStateCollector:
    """What the database says at scrape time: active runs and the workers' heartbeat.

    Two small queries per scrape: the active runs are few, and counted
    through their partial index. Without a database the scrape still
    answers, without these.
    """

    def describe(self) -> list[Metric]:
        # Nothing to check at registration; and describing must not query.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            active = list(
                Run.objects.filter(status__in=ACTIVE_RUN_STATUSES)
                .values("status")
                .annotate(count=Count("id"), oldest=Min("created_at"))
                .order_by()
            )
            heartbeat = WorkerHeartbeat.objects.aggregate(last=Max("seen_at"))["last"]
        except DatabaseError:
            logger.warning("Metrics: the database did not answer", exc_info=True)
            return
        by_status = {row["status"]: row for row in active}
        queued = by_status.get(RunStatus.QUEUED, {"count": 0, "oldest": None})
        yield GaugeMetricFamily(
            "chatbot_runs_queued", "Runs waiting for a worker.", value=queued["count"]
        )
        yield GaugeMetricFamily(
            "chatbot_runs_queued_oldest_age_seconds",
            "How long the oldest queued run has waited (0 when none waits).",
            value=_seconds_since(queued["oldest"], timezone.now()) or 0.0,
        )
        in_progress = by_status.get(RunStatus.IN_PROGRESS, {"count": 0})
        yield GaugeMetricFamily(
            "chatbot_runs_in_progress",
            "Runs being carried out, by any process.",
            value=in_progress["count"],
        )
        if heartbeat is not None:
            yield GaugeMetricFamily(
                "chatbot_worker_last_heartbeat_timestamp_seconds",
                "When a background worker last showed it was alive (Unix time).",
                value=heartbeat.timestamp(),
            )
