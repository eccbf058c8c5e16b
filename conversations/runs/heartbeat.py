"""The carrier heartbeat: "this process is alive and carries these runs", every few seconds.

A run's heartbeat (``Run.heartbeat_at``) used to be renewed only by its
stored pieces, so a run whose carrier died (a killed worker, a crashed web
process streaming it) looked the same as a run whose provider was slow, and
both were given ``RUN_TIMEOUT_SECONDS``: five minutes of a dead reply. Here
they are told apart. Whatever carries a run (``run_execute``, for every
mode) holds it in ``run_carried`` for as long as it does; one thread per
process renews the heartbeat of every run it holds, in one statement, every
``RUN_HEARTBEAT_SECONDS``, whatever the provider is doing. A run whose
carrier died stops beating, and the reaper expires it once its heartbeat is
older than ``RUN_HEARTBEAT_WINDOW_SECONDS``; a slow provider is bounded by
its own timeout (``LLM_TIMEOUT_SECONDS``) while its carrier keeps beating.

A carrier that stopped making progress (no piece from its provider for
``RUN_TIMEOUT_SECONDS``: a thread stuck somewhere) is not beaten for any
more, so even a live process cannot keep a run active forever.
"""

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import Error, connection, transaction
from django.utils import timezone

from ..models import Run, RunStatus

logger = logging.getLogger(__name__)


class Carried:
    """A run this process carries; ``progressed()`` whenever its provider gives something."""

    def __init__(self, run_id: Any) -> None:
        self.run_id = run_id
        self.progress_at = time.monotonic()

    def progressed(self) -> None:
        self.progress_at = time.monotonic()


_lock = threading.Lock()
_carried: set[Carried] = set()
_beating: threading.Thread | None = None
# Set when a run comes to be carried: the beat's wait is measured again, with
# the settings of now (tests change them).
_carrying_more = threading.Event()


def _forget() -> None:
    global _lock, _carried, _beating, _carrying_more
    _lock = threading.Lock()
    _carried = set()
    _beating = None
    _carrying_more = threading.Event()


# A forked child (a server worker) carries its own runs, with its own thread.
os.register_at_fork(after_in_child=_forget)


@contextmanager
def run_carried(run_id: Any) -> Iterator[Carried]:
    """Beat for ``run_id`` for the duration of the block (this process carries it)."""
    global _beating
    carried = Carried(run_id)
    with _lock:
        _carried.add(carried)
        if _beating is None or not _beating.is_alive():
            _beating = threading.Thread(target=_beat_forever, name="run-heartbeat", daemon=True)
            _beating.start()
    _carrying_more.set()
    try:
        yield carried
    finally:
        with _lock:
            _carried.discard(carried)


def carried_run_ids() -> list[Any]:
    """The runs this process carries that made progress within ``RUN_TIMEOUT_SECONDS``."""
    cutoff = time.monotonic() - settings.RUN_TIMEOUT_SECONDS
    with _lock:
        return [carried.run_id for carried in _carried if carried.progress_at > cutoff]


def runs_beat(*, run_ids: list[Any]) -> int:
    """Renew the heartbeat of the given runs still in progress, in one statement; how many.

    A run whose row is locked is skipped rather than waited for: whoever
    holds it is storing its pieces (which renews the heartbeat too) or
    ending it. Waiting could deadlock with this process's delta writer,
    whose one statement locks many runs' rows in its own order.
    """
    if not run_ids:
        return 0
    beating = (
        Run.objects.select_for_update(skip_locked=True, no_key=True)
        .filter(pk__in=run_ids, status=RunStatus.IN_PROGRESS)
        .values("pk")
    )
    with transaction.atomic(durable=True):
        return Run.objects.filter(pk__in=beating).update(heartbeat_at=timezone.now())


def _beat_forever() -> None:
    """Every ``RUN_HEARTBEAT_SECONDS``: renew the heartbeat of the runs carried here."""
    beat_at = time.monotonic()
    while True:
        left = beat_at + settings.RUN_HEARTBEAT_SECONDS - time.monotonic()
        if left > 0:
            _carrying_more.wait(left)
            _carrying_more.clear()
            continue
        beat_at = time.monotonic()
        run_ids = carried_run_ids()
        if not run_ids:
            continue
        try:
            runs_beat(run_ids=run_ids)
        except Error:
            # The database may be briefly away: the next beat tries again,
            # and a run that misses the whole window is expired, as it
            # could not store its pieces meanwhile either.
            logger.exception("Renewing the heartbeat of %d run(s) failed", len(run_ids))
        finally:
            # Hold no connection between beats.
            connection.close()
