"""A ChatKit turn's stream: one run's events, translated into ChatKit's.

The run is carried out and read as for REST (``streaming.live_run_events``);
only the encoding differs. In order (CHATKIT.md, "Mapping"):
``thread.created`` (a new thread only), ``thread.item.done`` (the user
message; not for a retry), ``stream_options``, ``thread.item.added`` (the
empty assistant message), ``thread.item.updated`` (content part added, one
text delta per stored piece, content part done), ``thread.item.done`` (the
reply), an ``error`` event if the run failed or expired, and
``thread.updated`` when the run named the thread. Each is a frame
``data: <json>\\n\\n``; a ``: ping`` comment keeps an idle stream open.

A client that drops the connection (ChatKit's stop button) cancels the run,
which keeps the text so far as an incomplete reply, unless the request said
``metadata.on_disconnect: continue``.
"""

import logging
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import orjson
from django.utils import timezone

from conversations import runs
from conversations.documents import iso
from conversations.models import EventName, Thread

from . import protocol_documents as shapes
from .streaming import PING, StreamState, live_run_events

logger = logging.getLogger(__name__)

_FAILURES = {EventName.RUN_FAILED, EventName.RUN_EXPIRED}


def frames(events: list[shapes.Json]) -> bytes:
    # orjson escapes newlines inside strings, so each frame's data is one line.
    return b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)


class TurnTranslator:
    """The ChatKit events of one run's events, in order."""

    def __init__(
        self, *, thread: Thread, reply_id: Any, created: shapes.Json | None, renamed: bool
    ) -> None:
        """``created``: the ``thread.created`` event of a new thread, as it was before the run."""
        self.thread = thread
        self.reply_id = str(reply_id)
        self.created = created
        self.renamed = renamed
        self.reply_added = False
        self.reply_done = False
        self.ended = False

    def opening(self) -> list[shapes.Json]:
        return [self.created] if self.created is not None else []

    def translate(self, event: runs.Event) -> list[shapes.Json]:
        name, data = event.event, event.data
        if name == EventName.MESSAGE_CREATED:
            return [shapes.item_done(shapes.item(data))]
        if name == EventName.RUN_IN_PROGRESS:
            self.reply_added = True
            reply = shapes.empty_reply(
                item_id=self.reply_id,
                thread_id=str(self.thread.id),
                created_at=iso(timezone.now()),
            )
            return [
                shapes.stream_options(),
                shapes.item_added(reply),
                shapes.content_part_added(self.reply_id),
            ]
        if name == EventName.MESSAGE_DELTA:
            return [shapes.text_delta(self.reply_id, data["delta"])]
        if name == EventName.MESSAGE_COMPLETED:
            self.reply_done = True
            return [
                shapes.content_part_done(self.reply_id, data["content"]),
                shapes.item_done(shapes.item(data)),
            ]
        if event.is_terminal:
            self.ended = True
            out = []
            if self.reply_added and not self.reply_done:
                # The run ended before any text: no reply was stored.
                out.append(shapes.item_removed(self.reply_id))
            if name in _FAILURES:
                out.append(shapes.stream_error())
            return out
        return []

    def closing(self, *, thread_deleted: bool) -> list[shapes.Json]:
        """The turn's last events: an error if the run's end never came, the new title."""
        out = [] if self.ended else [shapes.stream_error()]
        if self.renamed and not thread_deleted:
            out.append(shapes.thread_updated(self.thread))
        return out


class TurnStream:
    """The response body of a turn: its frames, and a cancel if the client leaves.

    The WSGI server closes the body when the stream ends for any reason: the
    run ended, the client went away (noticed at the next write), or it was
    never read. Unless the request asked the run to go on without its
    client (``cancel_on_disconnect`` false), a run that has not ended then
    is cancelled (``run_abandon``).
    """

    def __init__(
        self, *, launch: runs.Launch, translator: TurnTranslator, cancel_on_disconnect: bool
    ) -> None:
        self.run_id = launch.run.pk
        self.translator = translator
        self.cancel_on_disconnect = cancel_on_disconnect
        self.state = StreamState()
        self._frames = self._stream(live_run_events(launch=launch, state=self.state))

    def __iter__(self) -> "TurnStream":
        return self

    def __next__(self) -> bytes:
        return next(self._frames)

    def _stream(self, batches: Iterator[list[runs.Event]]) -> Iterator[bytes]:
        translator = self.translator
        if opening := translator.opening():
            yield frames(opening)
        with closing(batches):
            for batch in batches:
                if not batch:
                    yield PING
                elif out := [event for item in batch for event in translator.translate(item)]:
                    yield frames(out)
        if last := translator.closing(thread_deleted=self.state.deleted):
            yield frames(last)

    def close(self) -> None:
        self._frames.close()
        if self.cancel_on_disconnect and not self.state.ended:
            if runs.run_abandon(run_id=self.run_id):
                logger.info("Run %s cancelled: its ChatKit stream was closed", self.run_id)
            runs.release_connection()
