"""A run's ends, each one guarded change of its status.

``run_finish`` (the executor's end: completed or failed), ``run_cancel`` and
``runs_expire_stale`` (ended from outside). Whoever comes second to an ended
run sees it ended and backs off: on PostgreSQL the executor's end is one
statement that holds only if the run is still in progress as the executor
left it; else (and on SQLite) the run's row is locked and looked at
(``select_for_update``).
"""

import copy
import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import metrics
from ..documents import message_document, run_document
from ..errors import ObjectNotFound, RunNotActive
from ..llm import Completion, FinishReason
from ..models import (
    ACTIVE_RUN_STATUSES,
    EventName,
    Message,
    MessageRole,
    MessageStatus,
    Run,
    RunErrorCode,
    RunEvent,
    RunIncompleteReason,
    RunStatus,
)
from . import store
from .events import Event, event_rows, expand, stored_text

logger = logging.getLogger(__name__)


def locked(run_id: Any) -> Run | None:
    """The run with what ``run_document`` reads, locked until the caller's transaction ends."""
    runs = Run.objects.select_for_update(of=("self",))
    return (
        runs.select_related("thread", "input_message", "output_message").filter(pk=run_id).first()
    )


_END_FIELDS = (
    "status",
    "output_message",
    "error_code",
    "error_message",
    "incomplete_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "completed_at",
    "heartbeat_at",
    "last_event_seq",
)

# A completed run whose provider stopped early says why; its reply is incomplete.
_INCOMPLETE_REASONS = {
    FinishReason.LENGTH: RunIncompleteReason.LENGTH,
    FinishReason.CONTENT_FILTER: RunIncompleteReason.CONTENT_FILTER,
}


def _ending(
    run: Run,
    *,
    status: str,
    text: str,
    completion: Completion | None = None,
    error: tuple[str, str] | None = None,
    items: list[tuple[str, Any]] | None = None,
) -> tuple[Run, Message | None, list[RunEvent]]:
    """``run`` ended, as a copy: the ended run, its reply (if any), the event rows to store."""
    ended = copy.copy(run)
    items = list(items or [])
    now = timezone.now()
    reply = None
    if status == RunStatus.COMPLETED and completion is not None:
        ended.incomplete_reason = _INCOMPLETE_REASONS.get(completion.finish_reason, "")
    if text:
        finished = status == RunStatus.COMPLETED and not ended.incomplete_reason
        reply = Message(
            id=ended.reply_message_id,
            thread_id=ended.thread_id,
            run=ended,
            role=MessageRole.ASSISTANT,
            content=text,
            status=MessageStatus.COMPLETED if finished else MessageStatus.INCOMPLETE,
            metadata=completion.metadata if completion else {},
            created_at=now,
        )
        ended.output_message = reply
        items.append((EventName.MESSAGE_COMPLETED, message_document(reply)))
    ended.status = status
    if error is not None:
        ended.error_code, ended.error_message = error
    if completion is not None and completion.usage is not None:
        ended.prompt_tokens = completion.usage.prompt_tokens
        ended.completion_tokens = completion.usage.completion_tokens
        ended.total_tokens = completion.usage.total_tokens
    ended.completed_at = now
    ended.heartbeat_at = now
    items.append((EventName.ending(status), run_document(ended)))
    return ended, reply, event_rows(ended, items)


def _adopt(run: Run, ended: Run) -> None:
    """Give ``run`` the state of ``ended``, once it is stored."""
    for name in _END_FIELDS:
        setattr(run, name, getattr(ended, name))


def _end_locked(run: Run, **ending: Any) -> list[Event]:
    """Store the end of a run locked by the caller's transaction."""
    ended, reply, rows = _ending(run, **ending)
    store.store_end(ended, reply, rows, _END_FIELDS)
    _adopt(run, ended)
    return expand(rows)


def run_finish(
    *,
    run: Run,
    pending: list[str],
    status: str,
    text: str,
    completion: Completion | None = None,
    error: tuple[str, str] | None = None,
) -> list[Event] | None:
    """The executor's end of its ``run``: the pieces still ``pending``, the reply, ``status``.

    Returns the events stored, or None if someone else (cancel, the reaper)
    ended the run first; then nothing is written and ``run`` is left as it
    was. While the run is in progress nobody else writes it, so the
    executor's own ``run`` (thread and messages loaded) is what is saved.
    """
    items: list[tuple[str, Any]] = []
    if pending:
        items.append(
            (
                EventName.MESSAGE_DELTA,
                {"message_id": str(run.reply_message_id), "deltas": list(pending)},
            )
        )
    ending = {"status": status, "text": text, "completion": completion, "error": error}
    if store.one_statement_moves():
        ended, reply, rows = _ending(run, items=items, **ending)
        was = (RunStatus.IN_PROGRESS, run.last_event_seq)
        inserts = [[reply], rows] if reply is not None else [rows]
        if store.move_if_unchanged(ended, _END_FIELDS, was, inserts):
            _adopt(run, ended)
            metrics.run_ended(run)
            return expand(rows)
    with transaction.atomic(durable=True):
        current = (
            Run.objects.select_for_update()
            .filter(pk=run.pk)
            .values_list("status", "last_event_seq")
            .first()
        )
        if current is None or current[0] != RunStatus.IN_PROGRESS:
            logger.warning("Run %s ended elsewhere before its reply was stored", run.pk)
            return None
        run.last_event_seq = current[1]
        events = _end_locked(run, items=items, **ending)
    metrics.run_ended(run)
    return events


def run_cancel(*, run_id: Any) -> Run:
    """Cancel a queued or in-progress run; the text streamed so far is kept.

    A queued run never starts; an in-progress one is stopped by its executor
    at the next batch of pieces. Works across processes: the run row is the
    only channel.
    """
    with transaction.atomic(durable=True):
        run = locked(run_id)
        if run is None:
            raise ObjectNotFound()
        if not run.is_active:
            raise RunNotActive(details={"status": run.status})
        _end_locked(run, status=RunStatus.CANCELLED, text=stored_text(run))
    metrics.run_ended(run)
    return run


def run_abandon(*, run_id: Any) -> bool:
    """The client that carried a run went away: cancel the run if it is still active.

    As ``run_cancel``, the text stored so far is kept as an incomplete reply.
    Returns whether it was cancelled here; a run that ended meanwhile (or
    was deleted) is left as it is.
    """
    try:
        run_cancel(run_id=run_id)
    except (ObjectNotFound, RunNotActive):
        return False
    return True


def run_deleted_events(*, run: Run, text: str, last_seq: int) -> list[Event]:
    """How a stream ends a run that was deleted (with its session or thread) while active.

    Its rows are gone, so no end was stored and none can be: the stream ends
    it as the owner's deletion did, cancelled, after ``text`` (what it sent of
    the reply) as an incomplete message, numbered on from ``last_seq``.
    Nothing is written; ``run`` is left as it was.
    """
    told = copy.copy(run)
    told.last_event_seq = last_seq
    _, _, rows = _ending(told, status=RunStatus.CANCELLED, text=text)
    return expand(rows)


def runs_expire_stale(
    *,
    thread_id: Any = None,
    user_id: Any = None,
    run_ids: list[Any] | None = None,
    now: datetime | None = None,
) -> int:
    """End active runs whose heartbeat is older than ``RUN_TIMEOUT_SECONDS``.

    Each is re-checked under its lock, so a run that renewed its lease
    meanwhile is left alone. The text it had streamed is kept as an
    incomplete reply. Returns how many were expired.
    """
    now = now or timezone.now()
    deadline = now - timedelta(seconds=settings.RUN_TIMEOUT_SECONDS)
    stale = Run.objects.filter(status__in=ACTIVE_RUN_STATUSES, heartbeat_at__lt=deadline)
    if thread_id is not None:
        stale = stale.filter(thread_id=thread_id)
    if user_id is not None:
        stale = stale.filter(thread__conversation__user_id=user_id)
    if run_ids is not None:
        stale = stale.filter(id__in=run_ids)
    expired = 0
    for run_id in stale.values_list("id", flat=True):
        with transaction.atomic(durable=True):
            run = locked(run_id)
            if run is None or not run.is_active or run.heartbeat_at >= deadline:
                continue
            _end_locked(
                run,
                status=RunStatus.EXPIRED,
                text=stored_text(run),
                error=(RunErrorCode.RUN_EXPIRED, "The run made no progress within the time limit."),
            )
        metrics.run_ended(run)
        expired += 1
    if expired:
        logger.warning("Expired %d stale run(s)", expired)
    return expired
