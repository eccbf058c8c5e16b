"""Wake-ups: a stream following a run wakes when the run's events are stored, not on a timer.

Every write that stores a run's events notifies its followers in the same
transaction (``store``: PostgreSQL ``NOTIFY``), so the notice comes on
commit, when the events can be read. One thread per process listens on a
connection of its own and wakes the streams of this process that watch
that run (``run_watch``). The stored events stay the truth: a woken stream
reads them, and a notice that never comes costs latency, never data. The
same thread looks at every watched run once per ``SSE_SAFETY_POLL_SECONDS``,
in one query for all of them, and wakes the streams whose run moved on
without a notice, ended, was deleted or lost its carrier; when its
connection comes back after a loss, it wakes every stream.

Where no notice can come (SQLite, ``SSE_NOTIFY`` off, the listener not
connected, a test's uncommitted transaction) a stream polls, every
``SSE_POLL_MS``, as it did before.
"""

import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import Error, connection
from django.utils import timezone

from ..models import ACTIVE_RUN_STATUSES, Run
from . import store
from .ending import is_stale

logger = logging.getLogger(__name__)

# After a lost connection, the listener tries again this often.
RECONNECT_SECONDS = 1.0
# The longest the listener waits for notices at a time, so that it stops
# promptly when asked to.
LISTEN_SLICE_SECONDS = 1.0


class Watch:
    """A stream's interest in one run: ``wait`` for news of it, ``close`` when done."""

    def __init__(self, run_id: str, *, ends_only: bool, wake: Callable[[], None] | None) -> None:
        self.run_id = run_id
        self.ends_only = ends_only
        # The last event seq the stream has read: news is anything after it.
        self.seen_seq = 0
        self._woken = threading.Event()
        self._on_wake = wake

    def wake(self) -> None:
        self._woken.set()
        if self._on_wake is not None:
            self._on_wake()

    @property
    def pushed(self) -> bool:
        """Whether news of the run comes as notices now; if not, the stream must poll."""
        return listening() and not connection.in_atomic_block

    def wait(self, timeout: float) -> bool:
        """True when the run may have news to read; False when ``timeout`` passed first.

        News: a notice, or without notices the poll interval (``SSE_POLL_MS``).
        """
        pushed = self.pushed
        poll = settings.SSE_POLL_MS / 1000
        # Polling, a wake-up still cuts the wait short: the listener's return.
        woken = self._woken.wait(timeout if pushed else min(poll, timeout))
        # Cleared before the stream reads: a notice that comes after this
        # wakes it again, one that came before is for events it will read.
        self._woken.clear()
        return woken or (not pushed and poll <= timeout)

    def close(self) -> None:
        with _lock:
            watches = _watches.get(self.run_id)
            if watches is not None:
                watches.discard(self)
                if not watches:
                    del _watches[self.run_id]


def run_watch(
    *, run_id: Any, ends_only: bool = False, wake: Callable[[], None] | None = None
) -> Watch:
    """Watch a run for news, until ``close()``: before reading its events, to miss nothing.

    ``ends_only``: only its end by someone other than its carrier (a cancel,
    the reaper, a deletion) is news, for a live stream, which gets the
    rest from the carrier itself. ``wake`` is called with each piece of news
    (from the listener's thread), besides waking ``wait``.
    """
    watch = Watch(str(uuid.UUID(str(run_id))), ends_only=ends_only, wake=wake)
    with _lock:
        _watches.setdefault(watch.run_id, weakref.WeakSet()).add(watch)
    if settings.SSE_NOTIFY and store.notices_supported():
        _listener.ensure_running()
    return watch


_lock = threading.Lock()
# Weak: a stream dropped without closing its watch (a response never closed)
# stops being watched for.
_watches: dict[str, "weakref.WeakSet[Watch]"] = {}


def _watched() -> dict[str, list[Watch]]:
    with _lock:
        watched = {run_id: list(watches) for run_id, watches in _watches.items()}
        for run_id, watches in watched.items():
            if not watches:
                del _watches[run_id]
    return {run_id: watches for run_id, watches in watched.items() if watches}


def _dispatch(payload: str) -> None:
    run_id, ended = store.parse_notice(payload)
    with _lock:
        watches = list(_watches.get(run_id, ()))
    for watch in watches:
        if ended or not watch.ends_only:
            watch.wake()


def _wake_all() -> None:
    for watches in _watched().values():
        for watch in watches:
            watch.wake()


def _safety_round() -> None:
    """One query for every watched run; wake the watches with news that no notice brought."""
    watched = _watched()
    if not watched:
        return
    try:
        rows = Run.objects.filter(pk__in=list(watched)).values_list(
            "pk", "status", "heartbeat_at", "last_event_seq"
        )
        found = {str(pk): (status, heartbeat, seq) for pk, status, heartbeat, seq in rows}
    finally:
        connection.close()
    now = timezone.now()
    for run_id, watches in watched.items():
        row = found.get(run_id)
        # Gone, ended or left without a carrier: every watch wants to know.
        over = row is None or row[0] not in ACTIVE_RUN_STATUSES or is_stale(row[0], row[1], now)
        for watch in watches:
            if over or (not watch.ends_only and row[2] > watch.seen_seq):
                watch.wake()


class _Listener:
    """The process's listening thread, started with the first watch that can use it."""

    def __init__(self) -> None:
        self.connected = False
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._start_lock = threading.Lock()

    def ensure_running(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._listen_forever, name="run-notices", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Stop listening and close its connection (the end of a test session)."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            thread.join(timeout=LISTEN_SLICE_SECONDS * 5)

    def _listen_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except Error:
                logger.warning("Listening for run notices failed; trying again", exc_info=True)
            finally:
                self.connected = False
                # Streams poll meanwhile; wake them to look at once.
                _wake_all()
            self._stopping.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        with store.notice_listener() as notices:
            self.connected = True
            # Anything stored while nobody listened: every stream looks.
            _wake_all()
            last_round = time.monotonic()
            while not self._stopping.is_set():
                left = last_round + settings.SSE_SAFETY_POLL_SECONDS - time.monotonic()
                if left <= 0:
                    _safety_round()
                    last_round = time.monotonic()
                    continue
                for payload in notices(min(left, LISTEN_SLICE_SECONDS)):
                    _dispatch(payload)


_listener = _Listener()


def listening() -> bool:
    """Whether this process's listener is connected: notices come to its streams now."""
    return _listener.connected


def stop_listening() -> None:
    """Stop this process's listener, if it runs (tests: before their database is dropped)."""
    _listener.stop()


def _forget() -> None:
    global _lock, _watches, _listener
    _lock = threading.Lock()
    _watches = {}
    _listener = _Listener()


# A forked child (a server worker) listens for its own streams.
os.register_at_fork(after_in_child=_forget)
