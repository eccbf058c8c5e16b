"""At most ``MAX_STREAMS_PER_USER`` open event streams per user, across processes and hosts.

An event stream holds a request thread for as long as it is open, so one
user with many open streams could leave no thread for anybody else. Each
open stream holds one of its user's slots: the cache keys ``...:<user>:0``
to ``...:<limit - 1>``, each taken with ``cache.add`` (SET NX on Redis), so
two processes never take the same one. The count holds across processes
and hosts when they share the cache (``CACHE_URL=redis://...``); with the
default per-process cache, each process counts its own streams.

A slot lives as long as its response. The WSGI server closes the response
when the stream ends for any reason (the run ended, the client went away,
an error), and that gives the slot back. Each key also has a lease of
``STREAM_SLOT_TTL_SECONDS`` that a thread of the process renews while the
response is alive (a stream blocked writing to a client that does not read
still holds its request thread, so it keeps its slot): the slots of a
process that crashed, or of a response dropped without being closed,
expire by themselves.
"""

import logging
import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.cache import cache

from conversations.errors import LimitReached

logger = logging.getLogger(__name__)

KEY_PREFIX = "chatkit:stream-slot"


class StreamLimitReached(LimitReached):
    message = "You have too many event streams open; close one or retry later."


class StreamSlot:
    """One of a user's stream slots, held until ``release``."""

    def __init__(self, key: str) -> None:
        self.key = key
        # Tells this holder's key from a later holder's, once a lease ran out.
        self.token = secrets.token_hex(16)
        self.renewed_at = time.monotonic()
        self.released = False
        # Orders the keeper's renewal against the release: nothing renews a
        # slot given back.
        self._lock = threading.Lock()

    def holding(self, body: Iterator[bytes]) -> "HeldBody":
        """``body`` as a response body that gives this slot back when it is closed."""
        return HeldBody(self, body)

    def release(self) -> None:
        """Give the slot back; later calls do nothing."""
        with self._lock:
            if self.released:
                return
            self.released = True
            with _lock:
                _held.discard(self)
            # Not this holder's any more if its lease ran out and another took it.
            if cache.get(self.key) == self.token:
                cache.delete(self.key)

    def renew(self, ttl: int) -> None:
        with self._lock:
            if self.released:
                return
            # If the lease ran out (the process stalled past it), the key is
            # taken again if still free. Had another stream taken it, touch
            # renews that one's lease, and this stream goes uncounted until
            # it ends: one too many, only after a stall longer than the lease.
            if not cache.touch(self.key, ttl):
                cache.add(self.key, self.token, ttl)
            self.renewed_at = time.monotonic()


class HeldBody:
    """A streaming response body that holds a slot until the WSGI server closes it.

    Django registers ``close`` with the response, and the WSGI server calls
    it whether the body was read to its end, cut short, or never read.
    """

    def __init__(self, slot: StreamSlot, body: Iterator[bytes]) -> None:
        self.slot = slot
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        return self.body

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.slot.release()


class _Uncapped(StreamSlot):
    """What a stream holds with the cap off (0): nothing."""

    def release(self) -> None:
        pass


def acquire(*, user_id: Any) -> StreamSlot:
    """Take a free stream slot of the user, or raise ``StreamLimitReached``."""
    limit = settings.MAX_STREAMS_PER_USER
    if not limit:
        return _Uncapped("")
    keys = [f"{KEY_PREFIX}:{user_id}:{index}" for index in range(limit)]
    taken = cache.get_many(keys)
    for key in keys:
        if key in taken:
            continue
        slot = StreamSlot(key)
        # Another request may take the same free key first: then try the next.
        if cache.add(key, slot.token, settings.STREAM_SLOT_TTL_SECONDS):
            with _lock:
                _held.add(slot)
            _start_keeper()
            return slot
    raise StreamLimitReached(details={"reason": "streams", "limit": limit})


# Slots held by this process's live responses. Weak: a response dropped
# without being closed stops renewing its slot, which then expires.
_held: "weakref.WeakSet[StreamSlot]" = weakref.WeakSet()
_lock = threading.Lock()
_keeper: threading.Thread | None = None


def _start_keeper() -> None:
    global _keeper
    with _lock:
        if _keeper is None or not _keeper.is_alive():
            _keeper = threading.Thread(target=_keep, name="stream-slots", daemon=True)
            _keeper.start()


def _keep() -> None:
    """Renew each held slot's lease once a third of it has passed, for good."""
    while True:
        ttl = settings.STREAM_SLOT_TTL_SECONDS
        time.sleep(min(1.0, ttl / 4))
        _renew_due(ttl)


def _renew_due(ttl: int) -> None:
    """Renew the held slots whose lease is a third gone.

    A function of its own so that the slots it looks at are let go when it
    returns: a reference kept across the keeper's sleep would keep a slot
    whose response was lost alive, and renewed, for good.
    """
    with _lock:
        slots = list(_held)
    due = time.monotonic() - ttl / 3
    for slot in slots:
        if slot.renewed_at > due:
            continue
        try:
            slot.renew(ttl)
        except Exception:
            # The cache may be briefly away: the next round tries again,
            # well before the lease runs out.
            logger.exception("Renewing stream slot %s failed", slot.key)
