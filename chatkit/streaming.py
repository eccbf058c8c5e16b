"""Streams of a run's events, live from this process or followed from the database.

``live_run_events`` and ``follow_run_events`` are what the surfaces share:
they yield the run's events in batches, and end every stream as the
contract says, even for a run deleted meanwhile. Each surface encodes the
batches: REST as the contract's server-sent events (``live_run_stream``,
``follow_run_stream``), the ChatKit endpoint as its protocol's
(``protocol_stream``).
"""

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.http import StreamingHttpResponse

from conversations import runs
from conversations.models import EventName, Run

from .logging import request_id_var
from .metrics import CountedStream

logger = logging.getLogger(__name__)

PING = b": ping\n\n"
DONE = b"event: done\ndata: [DONE]\n\n"
_END = object()
# How long a live stream waits on a silent provider before looking whether
# the run was ended elsewhere.
IDLE_CHECK_SECONDS = 1.0


def encode(event: runs.Event) -> bytes:
    # orjson escapes newlines inside strings, so the data stays on one line.
    header = f"id: {event.seq}\nevent: {event.event}\ndata: ".encode()
    return header + orjson.dumps(event.data) + b"\n\n"


def event_stream_response(body: Iterator[bytes], status: int = 200) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        CountedStream(body), content_type="text/event-stream", status=status
    )
    response["Cache-Control"] = "no-cache"
    # Tell nginx and similar proxies not to buffer the stream.
    response["X-Accel-Buffering"] = "no"
    return response


class StreamState:
    """What a stream has sent of a run: enough to end it should the run be deleted."""

    def __init__(self, last_seq: int = 0) -> None:
        self.last_seq = last_seq
        self.reply: list[str] = []
        self.ended = False
        # The run was deleted (with its session or thread) while it streamed.
        self.deleted = False

    def heard(self, event: runs.Event) -> None:
        """An event the client had before this stream: only its text counts."""
        if event.event == EventName.MESSAGE_DELTA:
            self.reply.append(event.data["delta"])

    def sent(self, events: list[runs.Event]) -> list[runs.Event]:
        """Note ``events`` as sent, and hand them back."""
        for event in events:
            self.heard(event)
            self.last_seq = event.seq
            self.ended = self.ended or event.is_terminal
        return events

    def end_if_deleted(self, run: Run) -> list[runs.Event]:
        """The end events a deleted run never stored, made here; none otherwise.

        Deleting a session or thread deletes its runs with their events, so
        a stream found no end to send: without this it went straight to
        ``done``, against the contract's one end event per run.
        """
        if self.ended:
            return []
        exists = runs.run_exists(run_id=run.pk)
        runs.release_connection()
        if exists:
            return []
        self.deleted = True
        text = "".join(self.reply)
        return self.sent(runs.run_deleted_events(run=run, text=text, last_seq=self.last_seq))


def live_run_events(
    *, launch: runs.Launch, state: StreamState | None = None
) -> Iterator[list[runs.Event]]:
    """Carry out a streamed launch in a thread of its own; yield its events in batches.

    Reading the launch's events carries out the run, in its own thread so
    that it goes on, and its reply is stored, when the client goes away;
    this only reads a queue, which also lets it notice a run ended
    elsewhere while the provider is silent. Each batch is what the executor
    stored together (one write to the client); an empty one means the
    stream has been idle for ``SSE_PING_SECONDS``: time for a keep-alive.
    Ends after the run's end, made here if the run was deleted (``state``).
    """
    run = launch.run
    state = state or StreamState()
    events: queue.Queue[Any] = queue.Queue()
    request_id = request_id_var.get()

    def carry_out() -> None:
        request_id_var.set(request_id)
        try:
            for event in launch.events:
                events.put(event)
        except Exception:
            # A bug, not a provider failure (those end the run as failed):
            # log it; the reaper expires the run when its lease runs out.
            logger.exception("Run %s crashed while streaming", run.pk)
        finally:
            connection.close()
            events.put(_END)

    # The response may last as long as the reply: hold no connection meanwhile.
    runs.release_connection()
    threading.Thread(target=carry_out, name=f"run-{run.pk}", daemon=True).start()
    last_sent = time.monotonic()
    while True:
        try:
            item = events.get(timeout=IDLE_CHECK_SECONDS)
        except queue.Empty:
            # The provider is silent. Someone may have ended the run (cancel,
            # reaper): then its end is in the database, and the executor
            # only learns of it when the provider speaks again.
            if not runs.run_is_active(run_id=run.pk):
                ended = runs.run_events_after(run_id=run.pk, seq=state.last_seq)
                runs.release_connection()
                if ended:
                    yield state.sent(ended)
                break
            runs.release_connection()
            if time.monotonic() - last_sent >= settings.SSE_PING_SECONDS:
                yield []
                last_sent = time.monotonic()
            continue
        # What the executor stored together (a batch of pieces) goes in one
        # write: fewer syscalls and chunks under many concurrent streams.
        batch = [item]
        while batch[-1] is not _END:
            try:
                batch.append(events.get_nowait())
            except queue.Empty:
                break
        ended = batch[-1] is _END
        sent = [event for event in batch if event is not _END]
        if sent:
            last_sent = time.monotonic()
            yield state.sent(sent)
        if ended:
            break
    ending = state.end_if_deleted(run)
    if ending:
        yield ending


def follow_run_events(
    *, run: Run, after: int, state: StreamState | None = None
) -> Iterator[list[runs.Event]]:
    """A run's stored events after ``after``, then new ones until it ends, in batches.

    Batches as ``live_run_events``: an empty one is a keep-alive's turn.
    """
    poll = settings.SSE_POLL_MS / 1000
    state = state or StreamState(last_seq=after)
    # Resumed on an active run: read the deltas the client has too, so that
    # an end made here for a deleted run holds the whole text so far.
    read_from = 0 if after and run.is_active else after
    last_sent = time.monotonic()
    try:
        while True:
            events = runs.run_events_after(run_id=run.pk, seq=read_from)
            ended = not events and not runs.run_is_active(run_id=run.pk)
            if ended:
                # Read once more: its last events may have been stored
                # between the read above and the check.
                events = runs.run_events_after(run_id=run.pk, seq=read_from)
            new = [event for event in events if event.seq > state.last_seq]
            for event in events[: len(events) - len(new)]:
                state.heard(event)
            end = next((index for index, event in enumerate(new) if event.is_terminal), None)
            if end is not None:
                yield state.sent(new[: end + 1])
                return
            if new:
                yield state.sent(new)
                last_sent = time.monotonic()
            read_from = state.last_seq
            if ended:
                ending = state.end_if_deleted(run)
                if ending:
                    yield ending
                return
            runs.release_connection()
            if time.monotonic() - last_sent >= settings.SSE_PING_SECONDS:
                yield []
                last_sent = time.monotonic()
            time.sleep(poll)
    finally:
        runs.release_connection()


def _server_sent_events(batches: Iterator[list[runs.Event]]) -> Iterator[bytes]:
    """The contract's encoding of a run's event batches, then ``done``.

    Closes ``batches`` when closed itself, in the thread that closes it (the
    server's): their cleanup hands back that thread's database connection.
    """
    with closing(batches):
        for batch in batches:
            yield b"".join(encode(event) for event in batch) if batch else PING
    yield DONE


def live_run_stream(*, launch: runs.Launch) -> Iterator[bytes]:
    """The REST stream of a launch: see ``live_run_events``."""
    return _server_sent_events(live_run_events(launch=launch))


def follow_run_stream(*, run: Run, after: int) -> Iterator[bytes]:
    """The REST stream of a run's events after ``after``: see ``follow_run_events``."""
    return _server_sent_events(follow_run_events(run=run, after=after))
