"""The only module that knows the database vendor, and the only raw SQL.

Everything else reads and writes through the ORM or through the functions
here. Each piece of SQL says which benchmark in ``bench/`` pays for it;
where the ORM's public API would do within a millisecond, the ORM is used.

On PostgreSQL several writes are sent in one round trip: statements sent
together in one simple query run as one implicit transaction, committed
when the call returns, or none is. That saves the round trips of BEGIN, of
each statement and of COMMIT. It needs client-side parameter binding,
Django's default with psycopg 3. SQLite takes the write lock at BEGIN
(IMMEDIATE, see settings), so there a lock-and-look transaction serializes
writers instead.
"""

import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from django.contrib.auth import get_user_model
from django.db import connection, models, transaction
from django.db.models import BooleanField
from django.db.models.expressions import RawSQL
from django.utils.timezone import now as timezone_now

from ..models import (
    ACTIVE_RUN_STATUSES,
    DEFAULT_CONVERSATION_TITLE,
    DEFAULT_THREAD_TITLE,
    Conversation,
    EventName,
    Message,
    Run,
    RunEvent,
    RunStatus,
    Thread,
)

Statement = tuple[str, list[Any]]
M = TypeVar("M", bound=models.Model)


def one_statement_moves() -> bool:
    """Whether a guarded change of a run can be one statement (PostgreSQL).

    Elsewhere the run's row is locked and looked at in a transaction.
    """
    return connection.vendor == "postgresql"


def saved(obj: M) -> M:
    """``obj`` as the ORM hands back a row it read: a saved instance, through ``from_db``.

    For objects stored by the statements here, which the ORM did not see.
    """
    meta = obj._meta
    names = [field.attname for field in meta.concrete_fields]
    return type(obj).from_db(connection.alias, names, [getattr(obj, name) for name in names])


# Statements (PostgreSQL) ------------------------------------------------------
def insert(objs: Sequence[models.Model], where: Statement | None = None) -> Statement:
    """INSERT ``objs`` (of one model), valued as ``save()`` would; auto ids left to the database.

    With ``where`` (a condition and its parameters), the rows are inserted
    only if it holds: INSERT ... SELECT ... WHERE. For several objects they
    are selected from a VALUES list, whose column types PostgreSQL infers
    from the values: fine for UUIDs, numbers, times and JSON (psycopg casts
    them), but a column that is NULL in every row would be text. The objects
    are not marked saved: ``saved()`` gives their stored form.
    """
    meta = objs[0]._meta
    fields = [f for f in meta.concrete_fields if f is not meta.auto_field and not f.generated]
    row = ", ".join(["%s"] * len(fields))
    params = [
        field.get_db_prep_save(field.pre_save(obj, add=True), connection)
        for obj in objs
        for field in fields
    ]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    # Table and column names come from the model; values are parameters.
    sql = f"INSERT INTO {meta.db_table} ({columns}) "
    if where is None:
        sql += "VALUES " + ", ".join([f"({row})"] * len(objs))
    else:
        condition, condition_params = where
        if len(objs) == 1:
            sql += f"SELECT {row} WHERE {condition}"
        else:
            rows = ", ".join([f"({row})"] * len(objs))
            sql += f"SELECT * FROM (VALUES {rows}) AS rows WHERE {condition}"  # noqa: S608
        params += condition_params
    return sql, params


def update(
    obj: models.Model, field_names: Sequence[str], where: Statement | None = None
) -> Statement:
    """UPDATE ``obj``'s row with the named fields, valued as ``save(update_fields=...)`` would.

    With ``where`` (a condition on the row as it was, and its parameters),
    only if that holds too.
    """
    meta = obj._meta
    fields = [meta.get_field(name) for name in field_names]
    assignments = ", ".join(f"{connection.ops.quote_name(field.column)} = %s" for field in fields)
    params = [
        field.get_db_prep_save(field.pre_save(obj, add=False), connection) for field in fields
    ]
    pk = meta.pk
    # Table and column names come from the model; values are parameters.
    sql = f"UPDATE {meta.db_table} SET {assignments} WHERE {pk.column} = %s"  # noqa: S608
    params.append(pk.get_db_prep_value(obj.pk, connection))
    if where is not None:
        condition, condition_params = where
        sql += f" AND ({condition})"
        params += condition_params
    return sql, params


def send(statements: Sequence[Statement]) -> list[int]:
    """Run ``statements`` in one round trip, in the caller's transaction.

    Returns each statement's row count.
    """
    sql = "; ".join(statement for statement, _ in statements)
    params = [param for _, statement_params in statements for param in statement_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        counts = [cursor.rowcount]
        while cursor.nextset():
            counts.append(cursor.rowcount)
        return counts


def execute_together(statements: Sequence[Statement]) -> int:
    """Run ``statements`` in one round trip, committed on return; the last one's row count."""
    return execute_each(statements)[-1]


def execute_each(statements: Sequence[Statement]) -> list[int]:
    """``execute_together``, returning each statement's row count.

    Refuses to run inside a transaction, where nothing would be committed on
    return; inside a test's transaction it runs in a savepoint, so that a
    failed statement leaves the test's transaction usable.
    """
    scope = transaction.atomic(durable=True) if connection.in_atomic_block else nullcontext()
    with scope:
        return send(statements)


# Runs -------------------------------------------------------------------------


def _lock_owner(user_id: Any, mode: str) -> Statement:
    """PostgreSQL: lock the user's row, as a mutex for the user's quotas."""
    users = get_user_model()._meta.db_table
    return f"SELECT 1 FROM {users} WHERE id = %s FOR {mode}", [user_id]  # noqa: S608


def _below_active_limit(user_id: Any, limit: int) -> Statement:
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


def at_active_limit(user_id: Any, limit: int) -> bool:
    """Inside a transaction: whether the user has ``limit`` active runs.

    The owner's row is locked first (on PostgreSQL; SQLite holds the write
    lock from BEGIN), so the user's concurrent starts and retries queue
    before they count, and cannot both take the last place. Counting stops
    at the limit.
    """
    if connection.features.has_select_for_update:
        owner = get_user_model().objects.select_for_update(no_key=True).filter(pk=user_id)
        list(owner.values_list("pk"))
    active = Run.objects.filter(
        thread__conversation__user_id=user_id, status__in=ACTIVE_RUN_STATUSES
    )
    return active[:limit].count() >= limit


@dataclass(frozen=True)
class InsertedRun:
    """What ``insert_run`` stored: the run, and which of the titles."""

    inserted: bool
    renamed: bool = False
    thread_renamed: bool = False


def insert_run(
    *,
    run: Run,
    message: Message,
    events: list[RunEvent],
    conversation: Conversation,
    title: str | None,
    thread_title: str | None = None,
    limit: int,
    now: datetime,
) -> InsertedRun:
    """Store a new run with its input message and first events, committed.

    Not if the owner has ``limit`` active runs (0: no limit), counted under
    the owner's lock so concurrent starts cannot both take the last one.
    With ``title``, the conversation is renamed if it still has the default
    title; with ``thread_title``, the run's thread likewise. The unique
    index of active runs per thread raises IntegrityError for a second
    active run.

    PostgreSQL: one round trip (``bench/load.py``, synchronous runs, and
    ``bench/streams.py``: every run starts here). The owner's row lock
    (NO KEY UPDATE: it queues behind the session quota's lock and other run
    starts, but not rows that only point at the user) queues the user's
    concurrent starts; the run is inserted only if the owner is below the
    limit (counted in a statement after the lock, which sees the starts it
    waited for), and the rest only if it was. The foreign keys are
    deferred, so rows may point at one inserted after them.
    """
    if one_statement_moves():
        quota, below_limit = [], None
        if limit:
            user_id = conversation.user_id
            quota = [_lock_owner(user_id, "NO KEY UPDATE")]
            below_limit = _below_active_limit(user_id, limit)
        inserted = (f"EXISTS (SELECT 1 FROM {Run._meta.db_table} WHERE id = %s)", [run.pk])  # noqa: S608
        writes = [
            *quota,
            insert([run], where=below_limit),
            insert([message], where=inserted),
            insert(events, where=inserted),
        ]
        # The thread's row before its session's: the order in which deleting
        # a session takes them, so that the two never wait on each other.
        renames = [
            (model, pk, new_title, default)
            for model, pk, new_title, default in (
                (Thread, run.thread_id, thread_title, DEFAULT_THREAD_TITLE),
                (Conversation, conversation.pk, title, DEFAULT_CONVERSATION_TITLE),
            )
            if new_title is not None
        ]
        condition, params = inserted
        for model, pk, new_title, default in renames:
            writes.append(
                (
                    f"UPDATE {model._meta.db_table} SET title = %s, updated_at = %s "  # noqa: S608
                    f"WHERE id = %s AND title = %s AND {condition}",
                    [new_title, now, pk, default, *params],
                )
            )
        counts = execute_each(writes)
        if counts[len(quota)] == 0:
            return InsertedRun(inserted=False)
        rename_counts = counts[len(counts) - len(renames) :]
        renamed = {model: count for (model, *_), count in zip(renames, rename_counts, strict=True)}
        return InsertedRun(
            inserted=True,
            renamed=renamed.get(Conversation) == 1,
            thread_renamed=renamed.get(Thread) == 1,
        )
    with transaction.atomic(durable=True):
        # SQLite takes the write lock at BEGIN, so concurrent starts queue
        # there before they count.
        if limit and at_active_limit(conversation.user_id, limit):
            return InsertedRun(inserted=False)
        message.save(force_insert=True)
        RunEvent.objects.bulk_create(events)
        run.save(force_insert=True)
        renamed = title is not None and bool(
            Conversation.objects.filter(
                pk=conversation.pk, title=DEFAULT_CONVERSATION_TITLE
            ).update(title=title, updated_at=now)
        )
        thread_renamed = thread_title is not None and bool(
            Thread.objects.filter(pk=run.thread_id, title=DEFAULT_THREAD_TITLE).update(
                title=thread_title, updated_at=now
            )
        )
    return InsertedRun(inserted=True, renamed=renamed, thread_renamed=thread_renamed)


def move_if_unchanged(
    run: Run, fields: Sequence[str], was: tuple[str, int], inserts: list[list[Any]]
) -> bool:
    """PostgreSQL: save ``run``'s ``fields`` and insert ``inserts`` in one statement.

    Only if the run's row still has ``was`` (status, last event seq): the
    UPDATE takes the row's lock, then checks, and the INSERTs happen only if
    it held. One implicit transaction; False if nothing was written. Claims
    (``bench/background.py``) and ends (every benchmark with runs) take one
    round trip instead of four.
    """
    sql, params = update(run, fields, where=("status = %s AND last_event_seq = %s", list(was)))
    held = ("EXISTS (SELECT 1 FROM moved)", [])
    *before, (last, last_params) = [insert(objs, where=held) for objs in inserts]
    ctes = [f"moved AS ({sql} RETURNING 1)"]
    for index, (insert_sql, insert_params) in enumerate(before):
        ctes.append(f"insert_{index} AS ({insert_sql})")
        params += insert_params
    return execute_together([(f"WITH {', '.join(ctes)} {last}", params + last_params)]) > 0


def store_end(run: Run, reply: Message | None, rows: list[RunEvent], fields: Sequence[str]) -> None:
    """Store a locked run's ``fields``, its reply (if any) and its event rows.

    In the caller's transaction. PostgreSQL: one round trip (cancel and the
    reaper, ``bench/streams.py`` through the executor's fallback).
    """
    if one_statement_moves():
        writes = [insert(rows), update(run, fields)]
        if reply is not None:
            writes.insert(0, insert([reply]))
        send(writes)
        return
    if reply is not None:
        reply.save(force_insert=True)
    RunEvent.objects.bulk_create(rows)
    run.save(update_fields=fields)


@dataclass(frozen=True)
class DeltaBatch:
    """Pieces of one run to store as one event row."""

    run_id: Any
    message_id: str
    deltas: list[str]


def write_delta_batches(batches: list[DeltaBatch]) -> list[int | None]:
    """Store batches of pieces of different runs; each one's last seq, None if ended.

    The hottest write of streaming (``bench/streams.py``), so on PostgreSQL
    one statement: the UPDATE takes each run's row lock (ordering it against
    cancel and the reaper), renews its heartbeat, reserves its batch's
    sequence numbers, and feeds the INSERT; a run that is not in progress
    any more is left out. SQLite cannot UPDATE inside a WITH: there it is
    two statements a run, in one transaction.
    """
    now = timezone_now()
    run_table, event_table = Run._meta.db_table, RunEvent._meta.db_table
    if one_statement_moves():
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
            cursor.execute(sql, [*params, now, RunStatus.IN_PROGRESS, EventName.MESSAGE_DELTA, now])
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
                        event=EventName.MESSAGE_DELTA,
                        data=data,
                    )
                )
        RunEvent.objects.bulk_create(events)
    return results


def newest_messages(thread_id: Any, limit: int) -> list[tuple[str, str]]:
    """(role, content) of the thread's newest ``limit`` messages not superseded, newest first.

    Read at the start of every run, so written out (``bench/run_context.py``,
    ``bench/load.py``): building and compiling the same ORM query each time
    cost more than running it. An index range scan on (thread, created_at,
    id), as the ORM's query was.
    """
    quote = connection.ops.quote_name
    meta = Message._meta
    thread = meta.get_field("thread")
    columns = {
        name: quote(meta.get_field(name).column)
        for name in ("role", "content", "created_at", "superseded_by")
    }
    # Names come from the model, values are parameters.
    sql = (
        f"SELECT {columns['role']}, {columns['content']} FROM {quote(meta.db_table)} "  # noqa: S608
        f"WHERE {quote(thread.column)} = %s AND {columns['superseded_by']} IS NULL "
        f"ORDER BY {columns['created_at']} DESC, {quote(meta.pk.column)} DESC LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [thread.target_field.get_db_prep_value(thread_id, connection), limit])
        return cursor.fetchall()


# Sessions and lists ---------------------------------------------------------------


def insert_conversation_within_quota(conversation: Conversation, limit: int) -> bool:
    """Insert ``conversation`` unless its owner has ``limit`` sessions; committed.

    Returns whether it was inserted. PostgreSQL: one round trip
    (``bench/load.py``, POST sessions). The first statement locks the
    owner's row, so that concurrent creates for one user queue there; the
    second counts and inserts. The count must be its own statement: one
    riding along in the locking SELECT would read the snapshot taken before
    the lock was granted, and miss the inserts it waited for.
    """
    if not one_statement_moves():
        # SQLite takes the write lock at BEGIN, so concurrent creates queue
        # there before they count.
        with transaction.atomic(durable=True):
            owned = Conversation.objects.filter(user_id=conversation.user_id)
            if owned[:limit].count() >= limit:
                return False
            conversation.save(force_insert=True)
        return True
    table = Conversation._meta.db_table
    # Counting stops at the limit: a user far past a lowered limit costs no more.
    owned_sql = f"SELECT 1 FROM {table} WHERE user_id = %s LIMIT %s"  # noqa: S608
    under_quota = f"(SELECT count(*) FROM ({owned_sql}) AS owned) < %s"  # noqa: S608
    user_id = conversation.user_id
    guarded = insert([conversation], where=(under_quota, [user_id, limit, limit]))
    return execute_together([_lock_owner(user_id, "UPDATE"), guarded]) == 1


def rows_beyond(
    model: type[models.Model], cursor_id: uuid.UUID, descending: bool, parent: tuple[str, Any]
) -> RawSQL:
    """A filter: rows after the cursor item in (created_at, id) order, or before.

    ``parent`` (a field name and its value: ``("thread", id)``) is the list's
    parent; a cursor that is not a child of it (someone else's, deleted)
    makes the cursor's time NULL and the page empty. Other conditions of the
    list are not checked on the cursor: an item of the same parent that a
    filter hides still places the page.

    Written out for ``bench/paging_depth.py``: one row-value comparison,
    ``(created_at, id) < (cursor's created_at, cursor id)``, which PostgreSQL
    and SQLite both turn into a range scan of the (parent, created_at, id)
    index, with the cursor's time an uncorrelated subquery read once. Built
    through the ORM (a Subquery of the list) it cost 0.8 ms more a page, and
    a page 50,000 deep 1.25 to 1.3 times the first instead of 1.1.
    """
    meta = model._meta
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    created_at, pk = quote(meta.get_field("created_at").column), quote(meta.pk.column)
    parent_field = meta.get_field(parent[0])
    operator = "<" if descending else ">"
    # Names come from the model, values are parameters.
    sql = (
        f"({table}.{created_at}, {table}.{pk}) {operator} "  # noqa: S608
        f"((SELECT cursor_row.{created_at} FROM {table} cursor_row "
        f"WHERE cursor_row.{pk} = %s AND cursor_row.{quote(parent_field.column)} = %s), %s)"
    )
    cursor = meta.pk.get_db_prep_value(cursor_id, connection)
    parent_value = parent_field.target_field.get_db_prep_value(parent[1], connection)
    return RawSQL(sql, (cursor, parent_value, cursor), output_field=BooleanField())  # noqa: S611
