"""A run's start and claim, each one guarded change of its status.

``run_start`` stores a new run, queued or in progress; ``run_claim`` moves a
queued one to in progress. Its ends are in ``ending``. On PostgreSQL a move
is one statement that holds only if the run is still as it was read; else
(and on SQLite) the run's row is locked and looked at (``select_for_update``).
"""

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .. import metrics
from ..documents import message_document, run_document
from ..errors import ActiveRunLimitReached, ObjectNotFound, RunInProgress
from ..models import (
    ACTIVE_RUN_STATUSES,
    DEFAULT_CONVERSATION_TITLE,
    DEFAULT_THREAD_TITLE,
    EventName,
    Message,
    MessageRole,
    Run,
    RunEvent,
    RunMode,
    RunStatus,
    Thread,
)
from . import store
from .ending import locked, runs_expire_stale
from .events import event_rows, expand

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
    mode: str = "",
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
    them back. A session or thread still holding its default title is named
    from ``input`` in the same transaction; ``thread`` and its
    ``conversation`` get the new titles when they were. ``mode`` is how the
    caller takes part (``RunMode``): by default background when ``queued``,
    else wait.
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
        "mode": mode or (RunMode.BACKGROUND if queued else RunMode.WAIT),
        "limit": limit,
    }
    run = _first_start(
        lambda: _insert_run(**start), thread_id=thread.pk, user_id=user_id, limit=limit
    )
    if on_commit is not None:
        # Runs at once, the run being committed; inside a test's transaction,
        # when that commits. robust: a failed hand-over is logged, and the
        # reaper ends the run.
        transaction.on_commit(lambda: on_commit(run), robust=True)
    return run


def _first_start(
    insert: Callable[[], Run | None], *, thread_id: Any, user_id: Any, limit: int
) -> Run:
    """``insert()``'s run, retried while what stood in its way was stale.

    ``insert`` returns None past the user's active-run limit and raises
    IntegrityError when the thread has an active run (the partial unique
    index). Stale runs in the way (lease run out) are expired and the insert
    tried again; live ones are the caller's error.
    """
    for _ in range(_START_ATTEMPTS):
        try:
            run = insert()
        except IntegrityError:
            pass
        else:
            if run is not None:
                metrics.run_started(run)
                return run
            if runs_expire_stale(user_id=user_id):
                continue
            raise ActiveRunLimitReached(details={"reason": "active_runs", "limit": limit})
        if runs_expire_stale(thread_id=thread_id):
            continue
        active_id = (
            Run.objects.filter(thread_id=thread_id, status__in=ACTIVE_RUN_STATUSES)
            .values_list("id", flat=True)
            .first()
        )
        if active_id is not None:
            raise RunInProgress(details={"active_run_id": str(active_id)})
        if not Thread.objects.filter(pk=thread_id).exists():
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
    mode: str,
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
        mode=mode,
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
    # A session or thread still holding its default title is named from the
    # user's words by its first run, whichever surface started it.
    untitled_session = conversation.title == DEFAULT_CONVERSATION_TITLE
    untitled_thread = thread.title == DEFAULT_THREAD_TITLE
    title = title_from_text(input) if untitled_session or untitled_thread else None
    inserted = store.insert_run(
        run=run,
        message=message,
        events=events,
        conversation=conversation,
        title=title if untitled_session else None,
        thread_title=title if untitled_thread else None,
        limit=limit,
        now=now,
    )
    if not inserted.inserted:
        return None
    if inserted.renamed:
        conversation.title = title
    if inserted.thread_renamed:
        thread.title = title
    # Perhaps stored by statements the ORM did not see: hand back the saved form.
    stored = store.saved(run)
    stored.thread = thread
    stored.input_message = store.saved(message)
    stored.start_events = expand(events)
    return stored


# Retrying ------------------------------------------------------------------


def run_retry(
    *,
    message: Message,
    provider: str,
    model: str,
    instructions: str = "",
    metadata: dict[str, str] | None = None,
    mode: str = RunMode.WAIT,
) -> Run:
    """Start a new reply to the user ``message`` of its thread, in progress, committed.

    The message keeps its id and is the new run's input. What followed it
    (the later messages, its own earlier run and the later runs) is marked
    superseded by the new run, in the same transaction: nothing is deleted,
    and superseded messages leave the provider's context. A message that is
    not a user message of the thread as it stands (superseded itself, say)
    is ``ObjectNotFound``; a run in progress on the thread is
    ``RunInProgress``, and past ``MAX_ACTIVE_RUNS_PER_USER`` active runs
    ``ActiveRunLimitReached``, as for ``run_start`` (stale runs are expired
    first).
    """
    limit = settings.MAX_ACTIVE_RUNS_PER_USER
    return _first_start(
        lambda: _insert_retry(
            message=message,
            provider=provider,
            model=model,
            instructions=instructions,
            metadata=metadata or {},
            mode=mode,
            limit=limit,
        ),
        thread_id=message.thread_id,
        user_id=message.thread.conversation.user_id,
        limit=limit,
    )


def _insert_retry(
    *,
    message: Message,
    provider: str,
    model: str,
    instructions: str,
    metadata: dict[str, str],
    mode: str,
    limit: int,
) -> Run | None:
    """Store the retry; None if the owner has ``limit`` active runs (0: no limit)."""
    now = timezone.now()
    with transaction.atomic(durable=True):
        # Read under the transaction: on SQLite it holds the write lock from
        # BEGIN, on PostgreSQL the message's row lock orders two retries.
        current = (
            Message.objects.select_for_update(of=("self",))
            .select_related("thread__conversation")
            .filter(pk=message.pk, role=MessageRole.USER, superseded_by=None)
            .first()
        )
        if current is None:
            raise ObjectNotFound()
        if limit and store.at_active_limit(current.thread.conversation.user_id, limit):
            return None
        run = Run(
            thread=current.thread,
            status=RunStatus.IN_PROGRESS,
            provider=provider,
            model=model,
            instructions=instructions,
            metadata=metadata,
            mode=mode,
            input_message=current,
            created_at=now,
            started_at=now,
            heartbeat_at=now,
        )
        items = [(EventName.RUN_CREATED, run_document(run))]
        items.append((EventName.RUN_IN_PROGRESS, run_document(run)))
        events = event_rows(run, items)
        # The unique index of active runs per thread refuses a second one.
        run.save(force_insert=True)
        RunEvent.objects.bulk_create(events)
        later = Q(created_at__gt=current.created_at) | Q(
            created_at=current.created_at, pk__gt=current.pk
        )
        Message.objects.filter(later, thread_id=current.thread_id, superseded_by=None).update(
            superseded_by=run
        )
        # A user message and its run are stored with one timestamp: from it on,
        # its own run and every later one.
        replaced = Run.objects.filter(
            thread_id=current.thread_id, created_at__gte=current.created_at, superseded_by=None
        )
        replaced.exclude(pk=run.pk).update(superseded_by=run)
    run.start_events = expand(events)
    return run


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
        run = locked(run_id)
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


def run_is_active(*, run_id: Any) -> bool:
    """Whether the run is queued or in progress."""
    return Run.objects.filter(pk=run_id, status__in=ACTIVE_RUN_STATUSES).exists()


def run_exists(*, run_id: Any) -> bool:
    """Whether the run is stored (not deleted with its session or thread)."""
    return Run.objects.filter(pk=run_id).exists()
