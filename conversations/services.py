"""Writes for sessions (conversations) and threads.

Each service is one short, durable transaction: when it returns, the change
is committed and visible to every other connection.
"""

from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, IntegrityError, connection, connections, router, transaction

from . import statements
from .errors import ObjectNotFound, OwnerNotFound, SessionLimitReached
from .models import Conversation, Thread

UNSET: Any = object()
M = TypeVar("M", Conversation, Thread)


def _save_changes(instance: M, changes: dict[str, Any]) -> M:
    """Save the fields given a value other than UNSET, and bump ``updated_at``."""
    changed = [name for name, value in changes.items() if value is not UNSET]
    if changed:
        for name in changed:
            setattr(instance, name, changes[name])
        try:
            with transaction.atomic(durable=True):
                instance.save(update_fields=[*changed, "updated_at"])
        except DatabaseError:
            # save(update_fields=...) raises when no row matched: the object was
            # deleted between the view's lookup and this update.
            if not type(instance).objects.filter(pk=instance.pk).exists():
                raise ObjectNotFound() from None
            raise
    return instance


def conversation_create(
    *,
    user,
    title: str | None = None,
    instructions: str = "",
    metadata: dict[str, str] | None = None,
) -> Conversation:
    """Create a session for ``user``, within ``MAX_SESSIONS_PER_USER``; committed."""
    limit = settings.MAX_SESSIONS_PER_USER
    conversation = Conversation(user=user, instructions=instructions, metadata=metadata or {})
    if title is not None:
        conversation.title = title
    try:
        if connection.vendor == "postgresql":
            created = _insert_within_quota(conversation, limit)
        else:
            # SQLite takes the write lock at BEGIN (IMMEDIATE, see settings),
            # so concurrent creates queue there before they count.
            with transaction.atomic(durable=True):
                created = Conversation.objects.filter(user=user)[:limit].count() < limit
                if created:
                    conversation.save(force_insert=True)
    except IntegrityError:
        # The owner was deleted after this request authenticated.
        if not get_user_model().objects.filter(pk=user.pk).exists():
            raise OwnerNotFound() from None
        raise
    if not created:
        raise SessionLimitReached(details={"limit": limit})
    return conversation


def _insert_within_quota(conversation: Conversation, limit: int) -> bool:
    """Insert ``conversation`` unless its owner has ``limit`` sessions; one round trip.

    The first statement locks the owner's row, so that concurrent creates
    for one user queue there; the second counts and inserts. The count must
    be its own statement: one riding along in the locking SELECT would read
    the snapshot taken before the lock was granted, and miss the inserts it
    waited for. Returns whether the row was inserted.
    """
    table = Conversation._meta.db_table
    lock = f"SELECT 1 FROM {get_user_model()._meta.db_table} WHERE id = %s FOR UPDATE"  # noqa: S608
    # Counting stops at the limit: a user far past a lowered limit costs no more.
    owned = f"SELECT 1 FROM {table} WHERE user_id = %s LIMIT %s"  # noqa: S608
    under_quota = f"(SELECT count(*) FROM ({owned}) AS owned) < %s"  # noqa: S608
    user_id = conversation.user_id
    guarded = statements.insert([conversation], where=(under_quota, [user_id, limit, limit]))
    inserted = statements.execute_together([(lock, [user_id]), guarded])
    return inserted == 1


def conversation_update(
    *,
    conversation: Conversation,
    title: str = UNSET,
    instructions: str = UNSET,
    metadata: dict[str, str] = UNSET,
) -> Conversation:
    """Change the given fields of a session; the others stay as they are."""
    return _save_changes(
        conversation, {"title": title, "instructions": instructions, "metadata": metadata}
    )


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a session with its threads (and, through them, messages and runs)."""
    with transaction.atomic(durable=True):
        conversation.delete()


def thread_create(
    *,
    conversation: Conversation,
    title: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Thread:
    """Create a thread in a session."""
    thread = Thread(conversation=conversation, metadata=metadata or {})
    if title is not None:
        thread.title = title
    try:
        with transaction.atomic(durable=True):
            thread.save(force_insert=True)
    except IntegrityError:
        # The session was deleted between the lookup and the insert.
        if not Conversation.objects.filter(pk=conversation.pk).exists():
            raise ObjectNotFound() from None
        raise
    return thread


def thread_update(
    *,
    thread: Thread,
    title: str = UNSET,
    metadata: dict[str, str] = UNSET,
) -> Thread:
    """Change the given fields of a thread."""
    return _save_changes(thread, {"title": title, "metadata": metadata})


def thread_delete(*, thread: Thread) -> None:
    """Delete a thread with its messages and runs."""
    with transaction.atomic(durable=True):
        thread.delete()


def owned_thread(*, user_id: Any, session_id: Any, thread_id: Any) -> Thread | None:
    """Thread ``thread_id`` of the user's session ``session_id``, its session loaded.

    None unless the thread is in that session and the session is the user's.
    Every request on a thread starts here, so it is one written-out query:
    building and compiling the ORM's join cost more than running it.
    """
    db = router.db_for_read(Thread) or "default"
    reading = connections[db]
    quote = reading.ops.quote_name
    thread_meta, session_meta = Thread._meta, Conversation._meta
    threads, sessions = quote(thread_meta.db_table), quote(session_meta.db_table)
    to_session = quote(thread_meta.get_field("conversation").column)
    session_pk, thread_pk = quote(session_meta.pk.column), quote(thread_meta.pk.column)
    owner = session_meta.get_field("user")
    columns = [f"{threads}.{quote(f.column)}" for f in thread_meta.concrete_fields]
    columns += [f"{sessions}.{quote(f.column)}" for f in session_meta.concrete_fields]
    # Names come from the models, values are parameters.
    sql = (
        f"SELECT {', '.join(columns)} FROM {threads} "  # noqa: S608
        f"INNER JOIN {sessions} ON {sessions}.{session_pk} = {threads}.{to_session} "
        f"WHERE {threads}.{thread_pk} = %s AND {threads}.{to_session} = %s "
        f"AND {sessions}.{quote(owner.column)} = %s"
    )
    params = [
        thread_meta.pk.get_db_prep_value(thread_id, reading),
        session_meta.pk.get_db_prep_value(session_id, reading),
        owner.target_field.get_db_prep_value(user_id, reading),
    ]
    with reading.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(thread_meta.concrete_fields)
    thread = _from_row(Thread, db, row[:split])
    thread.conversation = _from_row(Conversation, db, row[split:])
    return thread


def _from_row(model: type[M], db: str, values: tuple) -> M:
    """A model instance from its concrete fields' values as the database gave them."""
    reading = connections[db]
    converted = []
    for field, value in zip(model._meta.concrete_fields, values, strict=True):
        column = field.get_col(model._meta.db_table)
        for converter in reading.ops.get_db_converters(column) + column.get_db_converters(reading):
            value = converter(value, column, reading)
        converted.append(value)
    return model.from_db(db, [field.attname for field in model._meta.concrete_fields], converted)
