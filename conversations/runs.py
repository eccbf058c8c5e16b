"""Runs: one user message in, one assistant reply out.

Three steps, each visible to every other connection once it returns:
(1) ``run_start`` stores the user message, the run and its first events in
one transaction; (2) the provider is called outside any transaction, holding
no connection, and streamed pieces are stored in batches as events; (3) the
reply and the run's final status are stored together.

Every change of a run after its creation happens under the run row's lock
(``select_for_update``), so the executor, ``run_cancel`` and the reaper never
both end one run: whoever comes second sees it ended and backs off.
"""

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone

from . import statements
from .documents import message_document, run_document
from .errors import ActiveRunLimitReached, ObjectNotFound, RunInProgress, RunNotActive
from .grouping import Grouped
from .llm import (
    ChatMessage,
    Completion,
    Delta,
    FinishReason,
    Provider,
    ProviderBadResponse,
    ProviderError,
)
from .models import (
    ACTIVE_RUN_STATUSES,
    DEFAULT_CONVERSATION_TITLE,
    Conversation,
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

logger = logging.getLogger(__name__)

AUTO_TITLE_MAX_LENGTH = 60
_START_ATTEMPTS = 3

DELTA = "message.delta"
TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled", "run.expired"})


@dataclass(frozen=True)
class Event:
    """One server-sent event of a run: ``id:`` seq, ``event:`` name, ``data:``."""

    seq: int
    event: str
    data: Any

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


def title_from_text(text: str) -> str:
    """A short, clean title: the first words of ``text`` on one line."""
    words = " ".join(text.split())
    if len(words) <= AUTO_TITLE_MAX_LENGTH:
        return words or DEFAULT_CONVERSATION_TITLE
    cut = words[:AUTO_TITLE_MAX_LENGTH].rsplit(" ", 1)[0] or words[:AUTO_TITLE_MAX_LENGTH]
    return cut.rstrip(" ,.;:-") + "…"


# Events ---------------------------------------------------------------------


def _deltas(message_id: str, first_seq: int, pieces: list[str]) -> Iterator[Event]:
    """The events of one stored batch of pieces: one per piece, numbered from ``first_seq``."""
    for offset, piece in enumerate(pieces):
        yield Event(first_seq + offset, DELTA, {"message_id": message_id, "delta": piece})


def _expand(rows: Iterable[RunEvent]) -> Iterator[Event]:
    for row in rows:
        if row.event == DELTA:
            yield from _deltas(row.data["message_id"], row.seq, row.data["deltas"])
        else:
            yield Event(row.seq, row.event, row.data)


def _event_rows(run: Run, items: list[tuple[str, Any]]) -> list[RunEvent]:
    """Rows for events after ``run.last_event_seq``, which moves past them."""
    rows = []
    seq = run.last_event_seq
    for name, data in items:
        count = len(data["deltas"]) if name == DELTA else 1
        rows.append(RunEvent(run=run, seq=seq + 1, last_seq=seq + count, event=name, data=data))
        seq += count
    run.last_event_seq = seq
    return rows


def run_events_after(*, run_id: Any, seq: int) -> list[Event]:
    """The run's stored events with a sequence number above ``seq``, in order."""
    rows = RunEvent.objects.filter(run_id=run_id, last_seq__gt=seq).order_by("seq")
    return [event for event in _expand(rows) if event.seq > seq]


def run_is_active(*, run_id: Any) -> bool:
    return Run.objects.filter(pk=run_id, status__in=ACTIVE_RUN_STATUSES).exists()


def run_exists(*, run_id: Any) -> bool:
    return Run.objects.filter(pk=run_id).exists()


def _stored_text(run: Run) -> str:
    batches = RunEvent.objects.filter(run=run, event=DELTA).order_by("seq")
    return "".join("".join(data["deltas"]) for data in batches.values_list("data", flat=True))


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
    for _ in range(_START_ATTEMPTS):
        try:
            run = _insert_run(
                thread=thread,
                input=input,
                provider=provider,
                model=model,
                instructions=instructions,
                metadata=metadata or {},
                queued=queued,
                on_commit=on_commit,
                limit=limit,
            )
        except IntegrityError:
            pass
        else:
            if run is not None:
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
    on_commit: Callable[[Run], None] | None,
    limit: int,
) -> Run | None:
    """Insert the run, its message and events; None if the owner has ``limit`` active runs.

    A ``limit`` of 0 is no limit.
    """
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
    items = [("run.created", run_document(run)), ("message.created", message_document(message))]
    if not queued:
        run.status = RunStatus.IN_PROGRESS
        run.started_at = now
        items.append(("run.in_progress", run_document(run)))
    events = _event_rows(run, items)
    conversation = thread.conversation
    rename = conversation.title == DEFAULT_CONVERSATION_TITLE
    title = title_from_text(input) if rename else ""
    # The foreign keys are deferred, so rows may point at one inserted after them.
    if connection.vendor == "postgresql":
        # One round trip. The owner's row lock queues the user's concurrent
        # starts; then the run is inserted only if the owner has fewer than
        # ``limit`` active runs (counted in a statement after the lock, which
        # sees the starts it waited for), and the rest only if it was.
        quota, below_limit = [], None
        if limit:
            quota = [_lock_owner(conversation.user_id)]
            below_limit = _below_active_limit(conversation.user_id, limit)
        inserted = (f"EXISTS (SELECT 1 FROM {Run._meta.db_table} WHERE id = %s)", [run.pk])  # noqa: S608
        writes = [
            *quota,
            statements.insert([run], where=below_limit),
            statements.insert([message], where=inserted),
            statements.insert(events, where=inserted),
        ]
        if rename:
            condition, params = inserted
            writes.append(
                (
                    f"UPDATE {Conversation._meta.db_table} SET title = %s, updated_at = %s "  # noqa: S608
                    f"WHERE id = %s AND title = %s AND {condition}",
                    [title, now, conversation.pk, DEFAULT_CONVERSATION_TITLE, *params],
                )
            )
        counts = statements.execute_each(writes)
        if counts[len(quota)] == 0:
            return None
        renamed = rename and counts[-1] == 1
    else:
        with transaction.atomic(durable=True):
            # SQLite takes the write lock at BEGIN (IMMEDIATE, see settings),
            # so concurrent starts queue there before they count.
            if limit and _active_runs_of(conversation.user_id)[:limit].count() >= limit:
                return None
            message.save(force_insert=True)
            RunEvent.objects.bulk_create(events)
            run.save(force_insert=True)
            renamed = rename and (
                Conversation.objects.filter(
                    pk=conversation.pk, title=DEFAULT_CONVERSATION_TITLE
                ).update(title=title, updated_at=now)
            )
    if renamed:
        conversation.title = title
    run.start_events = list(_expand(events))
    if on_commit is not None:
        # Runs at once, the run being committed; inside a test's transaction,
        # when that commits. robust: a failed hand-over is logged, and the
        # reaper ends the run.
        transaction.on_commit(lambda: on_commit(run), robust=True)
    return run


def _active_runs_of(user_id: Any) -> Any:
    return Run.objects.filter(thread__conversation__user_id=user_id, status__in=ACTIVE_RUN_STATUSES)


def _lock_owner(user_id: Any) -> statements.Statement:
    """PostgreSQL: lock the user's row, as a mutex for the user's quotas.

    NO KEY UPDATE: it queues behind the session quota's lock and other run
    starts, but not rows that only point at the user (their foreign key
    checks take KEY SHARE).
    """
    users = Conversation._meta.get_field("user").related_model._meta.db_table
    return f"SELECT 1 FROM {users} WHERE id = %s FOR NO KEY UPDATE", [user_id]  # noqa: S608


def _below_active_limit(user_id: Any, limit: int) -> statements.Statement:
    """PostgreSQL: whether the user has fewer than ``limit`` active runs.

    Counting stops at the limit. The plan goes from the user's sessions to
    their threads to the partial index of active runs per thread (0.2 ms
    for 50 threads, ``EXPLAIN ANALYZE``).
    """
    run_table = Run._meta.db_table
    thread_table, conversation_table = Thread._meta.db_table, Conversation._meta.db_table
    active = (
        f"SELECT 1 FROM {run_table} r JOIN {thread_table} t ON t.id = r.thread_id "  # noqa: S608
        f"JOIN {conversation_table} c ON c.id = t.conversation_id "
        "WHERE c.user_id = %s AND r.status IN (%s, %s) LIMIT %s"
    )
    return (
        f"(SELECT count(*) FROM ({active}) AS active) < %s",  # noqa: S608
        [user_id, *ACTIVE_RUN_STATUSES, limit, limit],
    )


def _with_documents(runs: Any) -> Any:
    """What ``run_document`` reads, in the same query."""
    return runs.select_related("thread", "input_message", "output_message")


def _locked(run_id: Any) -> Run | None:
    """The run, locked until the end of the caller's transaction."""
    return _with_documents(Run.objects.select_for_update(of=("self",))).filter(pk=run_id).first()


def run_claim(*, run_id: Any) -> Run | None:
    """Move a queued run to ``in_progress`` for the caller to carry out.

    Returns None when the run is not queued any more (cancelled, expired, or
    claimed by an earlier delivery of the same task): redelivery never runs a
    run twice. On PostgreSQL the run is read, then claimed by one statement
    that holds only if it is still queued as read; else (or on SQLite) it is
    locked and looked at.
    """
    if connection.vendor == "postgresql":
        run = _with_documents(Run.objects).filter(pk=run_id).first()
        if run is None or run.status != RunStatus.QUEUED:
            return None
        if _claim_at_once(run):
            return run
    with transaction.atomic(durable=True):
        run = _locked(run_id)
        if run is None or run.status != RunStatus.QUEUED:
            return None
        RunEvent.objects.bulk_create(_claimed(run))
        run.save(update_fields=_CLAIM_FIELDS)
    return run


def _claim_at_once(run: Run) -> bool:
    """PostgreSQL: claim ``run`` in one statement, if it is still queued as read."""
    was = (RunStatus.QUEUED, run.last_event_seq)
    return _move_if_unchanged(run, _CLAIM_FIELDS, was, [_claimed(run)])


def _move_if_unchanged(
    run: Run, fields: Sequence[str], was: tuple[str, int], inserts: list[list[Any]]
) -> bool:
    """PostgreSQL: save ``run``'s ``fields`` and insert ``inserts`` in one statement.

    Only if the run's row still has ``was`` (status, last event seq): the
    UPDATE takes the row's lock, then checks, and the INSERTs happen only if
    it held. One implicit transaction; False if nothing was written.
    """
    update, params = statements.update(
        run, fields, where=("status = %s AND last_event_seq = %s", list(was))
    )
    held = ("EXISTS (SELECT 1 FROM moved)", [])
    *before, (last, last_params) = [statements.insert(objs, where=held) for objs in inserts]
    ctes = [f"moved AS ({update} RETURNING 1)"]
    for index, (sql, insert_params) in enumerate(before):
        ctes.append(f"insert_{index} AS ({sql})")
        params += insert_params
    sql = f"WITH {', '.join(ctes)} {last}"
    return statements.execute_together([(sql, params + last_params)]) > 0


_CLAIM_FIELDS = ("status", "started_at", "heartbeat_at", "last_event_seq")


def _claimed(run: Run) -> list[RunEvent]:
    """Give a queued ``run`` its claimed state in memory; the event row to store."""
    now = timezone.now()
    run.status = RunStatus.IN_PROGRESS
    run.started_at = now
    run.heartbeat_at = now
    return _event_rows(run, [("run.in_progress", run_document(run))])


# Executing ------------------------------------------------------------------


def run_context(*, run: Run) -> list[ChatMessage]:
    """What the provider sees: instructions, then the newest messages within budget.

    Never the whole history: at most ``LLM_CONTEXT_MAX_MESSAGES`` messages and
    ``LLM_CONTEXT_MAX_CHARS`` characters, newest kept first; the run's own
    input is always included.
    """
    max_messages = settings.LLM_CONTEXT_MAX_MESSAGES
    max_chars = settings.LLM_CONTEXT_MAX_CHARS
    history: list[ChatMessage] = []
    rows = _newest_messages(run.thread_id, max_messages)
    used = 0
    for role, content in rows:
        used += len(content)
        if history and used > max_chars:
            break
        history.append(ChatMessage(role=role, content=content))
    history.reverse()
    system = run.instructions or run.thread.conversation.instructions
    if system:
        history.insert(0, ChatMessage(role="system", content=system))
    return history


def _newest_messages(thread_id: Any, limit: int) -> list[tuple[str, str]]:
    """(role, content) of the thread's newest ``limit`` messages, newest first.

    Read at the start of every run, so written out: building and compiling
    the same ORM query each time cost more than running it. An index range
    scan on (thread, created_at, id), as the ORM's query was.
    """
    quote = connection.ops.quote_name
    meta = Message._meta
    thread = meta.get_field("thread")
    columns = {
        name: quote(meta.get_field(name).column) for name in ("role", "content", "created_at")
    }
    # Names come from the model, values are parameters.
    sql = (
        f"SELECT {columns['role']}, {columns['content']} FROM {quote(meta.db_table)} "  # noqa: S608
        f"WHERE {quote(thread.column)} = %s "
        f"ORDER BY {columns['created_at']} DESC, {quote(meta.pk.column)} DESC LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [thread.target_field.get_db_prep_value(thread_id, connection), limit])
        return cursor.fetchall()


def release_connection() -> None:
    # The provider may take seconds: hand the connection back (to the pool)
    # instead of holding it idle. Inside a transaction (tests) there is
    # nothing to hand back.
    if not connection.in_atomic_block:
        connection.close()


def _as_stream(provider: Provider, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
    completion = provider.complete(messages)
    yield Delta(completion.text)
    yield completion


def _provider_items(
    provider: Provider, messages: list[ChatMessage], *, stream: bool
) -> Iterator[Delta | Completion]:
    """What the provider answers; anything else it raises becomes a ProviderError.

    A provider is a plug-in that talks to the network: an exception its
    adapter did not translate (its HTTP client's transport error, a bug in
    it) must still end the run as failed, never leave it in progress. The
    original stays chained as the cause, so the log has its stack trace;
    the client gets only the generic message.
    """
    try:
        yield from provider.stream(messages) if stream else _as_stream(provider, messages)
    except ProviderError:
        raise
    except Exception as exc:
        raise ProviderError(f"unexpected {type(exc).__name__} from the provider") from exc


def run_execute(
    *,
    run: Run,
    provider: Provider,
    stream: bool = True,
    messages: list[ChatMessage] | None = None,
) -> Iterator[Event]:
    """Carry out an ``in_progress`` run; yield its events as they are stored.

    Streamed pieces are stored in batches (at most one write per
    ``STREAM_FLUSH_MS``), each batch renewing the run's heartbeat and checking
    that nobody ended the run meanwhile (cancel, reaper): if somebody did,
    the provider is dropped at once and the events they stored follow.
    Provider failures end the run as ``failed``; they are expected
    conditions, logged with their stack trace, never raised. So does a reply
    that ends before the provider says why it stopped (a stream closed
    early): its text is kept as an incomplete message. ``messages`` is the
    run's context when the caller has read it already.
    """
    if messages is None:
        messages = run_context(run=run)
    release_connection()
    flush_interval = settings.STREAM_FLUSH_MS / 1000
    # Streaming, the first piece is stored (and sent) at once, whatever the
    # clock reads; without streaming nobody waits for it: store it with the end.
    last_flush = None if stream else time.monotonic()
    pieces: list[str] = []
    pending: list[str] = []
    completion: Completion | None = None
    source = _provider_items(provider, messages, stream=stream)
    try:
        for item in source:
            if isinstance(item, Completion):
                completion = item
                continue
            pieces.append(item.text)
            pending.append(item.text)
            if not _flush_due(last_flush, time.monotonic(), flush_interval):
                continue
            stored = _store_deltas(run, pending)
            if stored is None:
                yield from run_events_after(run_id=run.pk, seq=run.last_event_seq)
                return
            yield from stored
            pending = []
            last_flush = time.monotonic()
        if completion is None or completion.finish_reason is None:
            raise ProviderBadResponse("the reply ended before the provider said it was finished")
    except ProviderError as exc:
        logger.exception("Run %s failed: %s", run.pk, exc.code)
        final = _finish(
            run,
            pending=pending,
            status=RunStatus.FAILED,
            text="".join(pieces),
            completion=completion,
            error=(exc.code, exc.public_message),
        )
    else:
        final = _finish(
            run,
            pending=pending,
            status=RunStatus.COMPLETED,
            text="".join(pieces),
            completion=completion,
        )
    finally:
        source.close()
    if final is None:
        yield from run_events_after(run_id=run.pk, seq=run.last_event_seq)
        return
    yield from final


def _flush_due(last: float | None, now: float, interval: float) -> bool:
    """Whether a new tick of the process-wide flush clock began since ``last``.

    Every stream of a process flushes on the same clock, so their batches
    reach ``_delta_writer`` together and are stored in a few big groups
    rather than in many small ones. ``last`` None: the stream has not
    flushed yet, so it is due whatever the clock's phase (``monotonic()``
    may well be inside the clock's first tick, on a freshly started host).
    """
    return last is None or not interval or now // interval > last // interval


@dataclass(frozen=True)
class _DeltaBatch:
    """Pieces of one run to store as one event row."""

    run_id: Any
    message_id: str
    deltas: list[str]


def _store_deltas(run: Run, pending: list[str]) -> list[Event] | None:
    """Store a batch of pieces and renew the lease; None if the run was ended.

    Inside a transaction (tests) the batch is part of it; otherwise it is
    stored together with the batches other runs of this process have ready
    (``_delta_writer``): one round trip for all of them.
    """
    batch = _DeltaBatch(run.pk, str(run.reply_message_id), list(pending))
    if connection.in_atomic_block:
        last_seq = _write_delta_batches([batch])[0]
    else:
        last_seq = _delta_writer(batch)
    if last_seq is None:
        logger.info("Run %s was ended elsewhere; dropping the provider", run.pk)
        return None
    run.last_event_seq = last_seq
    first_seq = last_seq - len(batch.deltas) + 1
    return list(_deltas(batch.message_id, first_seq, batch.deltas))


def _write_delta_batches(batches: list[_DeltaBatch]) -> list[int | None]:
    """Store batches of pieces of different runs; each one's last seq, None if ended.

    The hottest write of streaming, so on PostgreSQL one statement: the
    UPDATE takes each run's row lock (ordering it against cancel and the
    reaper), renews its heartbeat, reserves its batch's sequence numbers,
    and feeds the INSERT; a run that is not in progress any more is left
    out. SQLite cannot UPDATE inside a WITH: there it is two statements a
    run, in one transaction.
    """
    now = timezone.now()
    run_table, event_table = Run._meta.db_table, RunEvent._meta.db_table
    if connection.vendor == "postgresql":
        rows = ", ".join(["(%s::uuid, %s::integer, %s::jsonb)"] * len(batches))
        params: list[Any] = []
        for batch in batches:
            data = {"message_id": batch.message_id, "deltas": batch.deltas}
            params += [batch.run_id, len(batch.deltas), orjson.dumps(data).decode()]
        # Table names come from the models, values are parameters.
        sql = (
            f"WITH batch (run_id, count, data) AS (VALUES {rows}), "  # noqa: S608
            f"claimed AS (UPDATE {run_table} AS r "
            "SET last_event_seq = r.last_event_seq + batch.count, heartbeat_at = %s "
            "FROM batch WHERE r.id = batch.run_id AND r.status = %s "
            "RETURNING r.id, r.last_event_seq, batch.count, batch.data) "
            f"INSERT INTO {event_table} (run_id, seq, last_seq, event, data, created_at) "
            "SELECT id, last_event_seq - count + 1, last_event_seq, %s, data, %s "
            "FROM claimed RETURNING run_id, last_seq"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, now, RunStatus.IN_PROGRESS, DELTA, now])
            stored = dict(cursor.fetchall())
        return [stored.get(batch.run_id) for batch in batches]
    claim = (
        f"UPDATE {run_table} SET last_event_seq = last_event_seq + %s, "  # noqa: S608
        "heartbeat_at = %s WHERE id = %s AND status = %s RETURNING last_event_seq"
    )
    stamp = connection.ops.adapt_datetimefield_value(now)
    results: list[int | None] = []
    events = []
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        for batch in batches:
            count = len(batch.deltas)
            cursor.execute(claim, [count, stamp, batch.run_id.hex, RunStatus.IN_PROGRESS])
            row = cursor.fetchone()
            results.append(None if row is None else row[0])
            if row is not None:
                data = {"message_id": batch.message_id, "deltas": batch.deltas}
                events.append(
                    RunEvent(
                        run_id=batch.run_id,
                        seq=row[0] - count + 1,
                        last_seq=row[0],
                        event=DELTA,
                        data=data,
                    )
                )
        RunEvent.objects.bulk_create(events)
    return results


def _write_delta_group(batches: list[_DeltaBatch]) -> list[int | DataError | None]:
    """``_write_delta_batches`` for the writer thread, keeping runs apart.

    A value the database refuses (a provider's NUL character, say) fails
    the whole statement, and nothing of it is stored: then each batch is
    stored alone, so that only its own run fails.
    """
    try:
        return _write_delta_batches(batches)
    except DataError:
        if len(batches) == 1:
            raise
        logger.warning("A group of %d batches was refused; storing them one by one", len(batches))
        results: list[int | DataError | None] = []
        for batch in batches:
            try:
                results.append(_write_delta_batches([batch])[0])
            except DataError as exc:
                results.append(exc)
        return results


# One per process: see conversations/grouping.py. Its connection goes back
# to the pool whenever no batch is waiting.
_delta_writer = Grouped("run-deltas", _write_delta_group, idle=release_connection)


def _finish(
    run: Run,
    *,
    pending: list[str],
    status: str,
    text: str,
    completion: Completion | None = None,
    error: tuple[str, str] | None = None,
) -> list[Event] | None:
    """The executor's last step; None if someone else ended the run first.

    The executor's own ``run`` (thread and messages loaded) is saved: while
    the run is in progress nobody else writes it, and the lock keeps it so.
    On PostgreSQL the end is first stored in one statement that holds only
    if the run is still in progress as the executor left it; else (or on
    SQLite) the run is locked and looked at.
    """
    pending_items: list[tuple[str, Any]] = []
    if pending:
        pending_items.append(
            (DELTA, {"message_id": str(run.reply_message_id), "deltas": list(pending)})
        )
    ending = {"status": status, "text": text, "completion": completion, "error": error}
    if connection.vendor == "postgresql":
        as_left = run.__dict__.copy()
        events = _end_at_once(run, items=list(pending_items), **ending)
        if events is not None:
            return events
        # Not as the executor left it: forget the end prepared in memory.
        run.__dict__.update(as_left)
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
        return _end(run, items=list(pending_items), **ending)


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
    completion: Completion | None,
    error: tuple[str, str] | None,
    items: list[tuple[str, Any]],
) -> tuple[Message | None, list[RunEvent]]:
    """Give ``run`` its final state in memory; the reply (if any) and the event rows to store."""
    now = timezone.now()
    reply = None
    if status == RunStatus.COMPLETED and completion is not None:
        run.incomplete_reason = _INCOMPLETE_REASONS.get(completion.finish_reason, "")
    if text:
        finished = status == RunStatus.COMPLETED and not run.incomplete_reason
        reply = Message(
            id=run.reply_message_id,
            thread_id=run.thread_id,
            run=run,
            role=MessageRole.ASSISTANT,
            content=text,
            status=MessageStatus.COMPLETED if finished else MessageStatus.INCOMPLETE,
            metadata=completion.metadata if completion else {},
            created_at=now,
        )
        run.output_message = reply
        items.append(("message.completed", message_document(reply)))
    run.status = status
    if error is not None:
        run.error_code, run.error_message = error
    if completion is not None and completion.usage is not None:
        run.prompt_tokens = completion.usage.prompt_tokens
        run.completion_tokens = completion.usage.completion_tokens
        run.total_tokens = completion.usage.total_tokens
    run.completed_at = now
    run.heartbeat_at = now
    items.append((f"run.{status}", run_document(run)))
    return reply, _event_rows(run, items)


def _end_at_once(run: Run, **ending: Any) -> list[Event] | None:
    """PostgreSQL: store the end of ``run`` in one statement; None if it did not hold.

    It holds only if the run is in progress with the events the executor
    stored; then the reply and the events are inserted with the run's state.
    """
    was = (RunStatus.IN_PROGRESS, run.last_event_seq)
    reply, rows = _ending(run, **ending)
    inserts = [[reply], rows] if reply is not None else [rows]
    if not _move_if_unchanged(run, _END_FIELDS, was, inserts):
        return None
    return list(_expand(rows))


def _end(
    run: Run,
    *,
    status: str,
    text: str,
    completion: Completion | None = None,
    error: tuple[str, str] | None = None,
    items: list[tuple[str, Any]] | None = None,
) -> list[Event]:
    """Store the final state of a locked run: the reply (if any) and its status."""
    reply, rows = _ending(
        run, status=status, text=text, completion=completion, error=error, items=items or []
    )
    if connection.vendor == "postgresql":
        # The reply, the events and the run's new state in one round trip.
        writes = [statements.insert(rows), statements.update(run, _END_FIELDS)]
        if reply is not None:
            writes.insert(0, statements.insert([reply]))
        statements.send(writes)
    else:
        if reply is not None:
            reply.save(force_insert=True)
        RunEvent.objects.bulk_create(rows)
        run.save(update_fields=_END_FIELDS)
    return list(_expand(rows))


# Ending from outside --------------------------------------------------------


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
        _end(run, status=RunStatus.CANCELLED, text=_stored_text(run))
    return run


def run_deleted_events(*, run: Run, text: str, last_seq: int) -> list[Event]:
    """How a stream ends a run that was deleted (with its session or thread) while active.

    Its rows are gone, so no end was stored and none can be: the stream ends
    it as the owner's deletion did, cancelled, after ``text`` (what it sent of
    the reply) as an incomplete message, numbered on from ``last_seq``.
    Nothing is written; ``run`` is left as it was.
    """
    ended = copy.copy(run)
    ended.last_event_seq = last_seq
    _, rows = _ending(
        ended, status=RunStatus.CANCELLED, text=text, completion=None, error=None, items=[]
    )
    return list(_expand(rows))


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
            _end(
                run,
                status=RunStatus.EXPIRED,
                text=_stored_text(run),
                error=(RunErrorCode.RUN_EXPIRED, "The run made no progress within the time limit."),
            )
            expired += 1
    if expired:
        logger.warning("Expired %d stale run(s)", expired)
    return expired
