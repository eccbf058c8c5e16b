"""A run's events: their names (one enum) and the stored event log.

Every event a run sends is stored first (``RunEvent`` rows), so a stream
that reconnects, or a follower in another process, reads the same events
in the same order. A ``message.delta`` row holds a batch of pieces, one
sequence number per piece; reading expands it back into one event a piece.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from ..models import EventName, Message, MessageRole, MessageStatus, Run, RunEvent, RunStatus

__all__ = ["TERMINAL_EVENTS", "Event", "EventName", "run_events_after", "run_reply_so_far"]

TERMINAL_EVENTS = frozenset(
    {EventName.RUN_COMPLETED, EventName.RUN_FAILED, EventName.RUN_CANCELLED, EventName.RUN_EXPIRED}
)


@dataclass(frozen=True)
class Event:
    """One server-sent event of a run: ``id:`` seq, ``event:`` name, ``data:``."""

    seq: int
    event: str
    data: Any

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


def deltas(message_id: str, first_seq: int, pieces: list[str]) -> Iterator[Event]:
    """The events of one stored batch of pieces: one per piece, numbered from ``first_seq``."""
    for offset, piece in enumerate(pieces):
        yield Event(
            first_seq + offset, EventName.MESSAGE_DELTA, {"message_id": message_id, "delta": piece}
        )


def expand(rows: Iterable[RunEvent]) -> list[Event]:
    """The events of stored rows, a batch of pieces expanded to one event a piece."""
    events: list[Event] = []
    for row in rows:
        if row.event == EventName.MESSAGE_DELTA:
            events.extend(deltas(row.data["message_id"], row.seq, row.data["deltas"]))
        else:
            events.append(Event(row.seq, row.event, row.data))
    return events


def event_rows(run: Run, items: list[tuple[str, Any]]) -> list[RunEvent]:
    """Rows for events (name, data) after ``run.last_event_seq``, which moves past them."""
    rows = []
    seq = run.last_event_seq
    for name, data in items:
        count = len(data["deltas"]) if name == EventName.MESSAGE_DELTA else 1
        rows.append(RunEvent(run=run, seq=seq + 1, last_seq=seq + count, event=name, data=data))
        seq += count
    run.last_event_seq = seq
    return rows


def run_events_after(*, run_id: Any, seq: int) -> list[Event]:
    """The run's stored events with a sequence number above ``seq``, in order."""
    rows = RunEvent.objects.filter(run_id=run_id, last_seq__gt=seq).order_by("seq")
    return [event for event in expand(rows) if event.seq > seq]


def stored_text(run: Run) -> str:
    """The reply text the run's stored pieces add up to."""
    batches = RunEvent.objects.filter(run=run, event=EventName.MESSAGE_DELTA).order_by("seq")
    return "".join("".join(data["deltas"]) for data in batches.values_list("data", flat=True))


def run_reply_so_far(*, thread_id: Any) -> Message | None:
    """The reply the thread's run in progress is writing, or None if no run is in progress.

    Not stored yet (its row comes with the run's end): an unsaved message
    with the id it will have, holding the text its stored pieces add up to,
    ``incomplete``, and dated now, after every stored message of the thread.
    """
    run = Run.objects.filter(thread_id=thread_id, status=RunStatus.IN_PROGRESS).first()
    if run is None:
        return None
    return Message(
        id=run.reply_message_id,
        thread_id=thread_id,
        run=run,
        role=MessageRole.ASSISTANT,
        content=stored_text(run),
        status=MessageStatus.INCOMPLETE,
        created_at=timezone.now(),
    )
