"""A run's changes of status, each one guarded operation.

``run_start`` (new, queued or in progress), ``run_claim`` (queued to in
progress), ``run_finish`` (the executor's end: completed or failed),
``run_cancel`` and ``runs_expire_stale`` (ended from outside). Whoever comes
second to an ended run sees it ended and backs off: on PostgreSQL a move is
one statement that holds only if the run is still as it was read; else (and
on SQLite) the run's row is locked and looked at (``select_for_update``).
"""

import copy
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..documents import message_document, run_document
from ..errors import ActiveRunLimitReached, ObjectNotFound, RunInProgress, RunNotActive
from ..llm import Completion, FinishReason
from ..models import (
    ACTIVE_RUN_STATUSES,
    DEFAULT_CONVERSATION_TITLE,
    EventName,
    Message,
    MessageRole,
    MessageStatus,
    Run,
    RunErrorCode,
    RunEvent,
    RunIncompleteReason,
    RunStatus,
    Thread,
)
from . import store
from .events import Event, event_rows, expand, stored_text

logger = logging.getLogger(__name__)

AUTO_TITLE_MAX_LENGTH = 60
_START_ATTEMPTS = 3


def title_from_text(text: str) -> str:
    """A short, clean title: the first words of ``text`` on one line."""
    words = " ".join(text.split())
    if len(words) <= AUTO_TITLE_MAX_LENGTH:
        return words or DEFAULT_CONVERSATION_TITLE
    cut = words[:AUTO_TITLE_MAX_LENGTH].rsplit(" ", 1)[0] or words[:AUTO_TITLE_MAX_LENGTH]
    return cut.rstrip(" ,.;:-") + "…"


# Starting -------------------------------------------------------------------


def run_start(
    *,
    thread: Thread,
    input: str,
    provider: str,
    model: str,
    instructions: str = "",
    metadata: dict[str, str] | None = None,
    queued: bool = False,
    on_commit: Callable[[Run], None] | None = None,
) -> Run:
    """Store the user message and a new run on ``thread``, committed.

    At most one run per thread is active; the database's partial unique
    index decides races. A user has at most ``MAX_ACTIVE_RUNS_PER_USER``
    active runs across all their threads (else ``ActiveRunLimitReached``),
    counted under the user's row lock, so concurrent starts cannot both
    take the last one. Active runs whose lease ran out are expired first,
    so a crashed process never locks a thread or a user for good. With
    ``queued`` the run waits for a worker: ``on_commit(run)`` hands it over
    once the run is committed, never before. The events stored with the run
    are in ``run.start_events``, for a live stream to send without reading
    them back.
    """
    limit = settings.MAX_ACTIVE_RUNS_PER_USER
    user_id = thread.conversation.user_id
    start = {
        "thread": thread,
        "input": input,
        "provider": provider,
        "model": model,
        "instructions": instructions,
        "metadata": metadata or {},
        "queued": queued,
        "limit": limit,
    }
    for _ in range(_START_ATTEMPTS):
        try:
            run = _insert_run(**start)
        except IntegrityError:
            pass
        else:
            if run is not None:
                if on_commit is not None:
                    # Runs at once, the run being committed; inside a test's
                    # transaction, when that commits. robust: a failed
                    # hand-over is logged, and the reaper ends the run.
                    transaction.on_commit(lambda run=run: on_commit(run), robust=True)
                return run
            if runs_expire_stale(user_id=user_id):
                continue
            raise ActiveRunLimitReached(details={"reason": "active_runs", "limit": limit})
        if runs_expire_stale(thread_id=thread.pk):
            continue
        active_id = (
            Run.objects.filter(thread_id=thread.pk, status__in=ACTIVE_RUN_STATUSES)
            .values_list("id", flat=True)
            .first()
        )
        if active_id is not None:
            raise RunInProgress(details={"active_run_id": str(active_id)})
        if not Thread.objects.filter(pk=thread.pk).exists():
            raise ObjectNotFound()
    raise RunInProgress(details={"active_run_id": None})


def _insert_run(
    *,
    thread: Thread,
    input: str,
    provider: str,
    model: str,
    instructions: str,
    metadata: dict[str, str],
    queued: bool,
    limit: int,
) -> Run | None:
    """Insert the run, its message and events; None if the owner has ``limit`` active runs."""
    now = timezone.now()
    run = Run(
        thread=thread,
        status=RunStatus.QUEUED,
        provider=provider,
        model=model,
        instructions=instructions,
        metadata=metadata,
        created_at=now,
        heartbeat_at=now,
    )
    message = Message(
        thread=thread, run_id=run.id, role=MessageRole.USER, content=input, created_at=now
    )
    run.input_message = message
    items = [
        (EventName.RUN_CREATED, run_document(run)),
        (EventName.MESSAGE_CREATED, message_document(message)),
    ]
    if not queued:
        run.status = RunStatus.IN_PROGRESS
        run.started_at = now
        items.append((EventName.RUN_IN_PROGRESS, run_document(run)))
    events = event_rows(run, items)
    conversation = thread.conversation
    title = title_from_text(input) if conversation.title == DEFAULT_CONVERSATION_TITLE else None
    inserted, renamed = store.insert_run(
        run=run,
        message=message,
        events=events,
        conversation=conversation,
        title=title,
        limit=limit,
        now=now,
    )
    if not inserted:
        return None
    if renamed:
        conversation.title = title
    # Perhaps stored by statements the ORM did not see: hand back the saved form.
    stored = store.saved(run)
    stored.thread = thread
    stored.input_message = store.saved(message)
    stored.start_events = expand(events)
    return stored


def _locked(run_id: Any) -> Run | None:
    """The run with what ``run_document`` reads, locked until the caller's transaction ends."""
    runs = Run.objects.select_for_update(of=("self",))
    return (
        runs.select_related("thread", "input_message", "output_message").filter(pk=run_id).first()
    )


# Claiming -------------------------------------------------------------------

_CLAIM_FIELDS = ("status", "started_at", "heartbeat_at", "last_event_seq")


def run_claim(*, run_id: Any) -> Run | None:
    """Move a queued run to ``in_progress`` for the caller to carry out.

    Returns None when the run is not queued any more (cancelled, expired, or
    claimed by an earlier delivery of the same task): redelivery never runs a
    run twice.
    """
    if store.one_statement_moves():
        run = Run.objects.select_related("thread", "input_message", "output_message")
        run = run.filter(pk=run_id).first()
        if run is None or run.status != RunStatus.QUEUED:
            return None
        was = (RunStatus.QUEUED, run.last_event_seq)
        if store.move_if_unchanged(run, _CLAIM_FIELDS, was, [_claimed(run)]):
            return run
    with transaction.atomic(durable=True):
        run = _locked(run_id)
        if run is None or run.status != RunStatus.QUEUED:
            return None
        RunEvent.objects.bulk_create(_claimed(run))
        run.save(update_fields=_CLAIM_FIELDS)
    return run


def _claimed(run: Run) -> list[RunEvent]:
    """Give a queued ``run`` its claimed state in memory; the event row to store."""
    now = timezone.now()
    run.status = RunStatus.IN_PROGRESS
    run.started_at = now
    run.heartbeat_at = now
    return event_rows(run, [(EventName.RUN_IN_PROGRESS, run_document(run))])


# Ending ---------------------------------------------------------------------

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
        return _end_locked(run, items=items, **ending)


def run_cancel(*, run_id: Any) -> Run:
    """Cancel a queued or in-progress run; the text streamed so far is kept.

    A queued run never starts; an in-progress one is stopped by its executor
    at the next batch of pieces. Works across processes: the run row is the
    only channel.
    """
    with transaction.atomic(durable=True):
        run = _locked(run_id)
        if run is None:
            raise ObjectNotFound()
        if not run.is_active:
            raise RunNotActive(details={"status": run.status})
        _end_locked(run, status=RunStatus.CANCELLED, text=stored_text(run))
    return run


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
            run = _locked(run_id)
            if run is None or not run.is_active or run.heartbeat_at >= deadline:
                continue
            _end_locked(
                run,
                status=RunStatus.EXPIRED,
                text=stored_text(run),
                error=(RunErrorCode.RUN_EXPIRED, "The run made no progress within the time limit."),
            )
            expired += 1
    if expired:
        logger.warning("Expired %d stale run(s)", expired)
    return expired


def run_is_active(*, run_id: Any) -> bool:
    """Whether the run is queued or in progress."""
    return Run.objects.filter(pk=run_id, status__in=ACTIVE_RUN_STATUSES).exists()


def run_exists(*, run_id: Any) -> bool:
    """Whether the run is stored (not deleted with its session or thread)."""
    return Run.objects.filter(pk=run_id).exists()
