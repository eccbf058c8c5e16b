"""Writes for sessions (conversations) and threads.

Each service is one short, durable transaction: when it returns, the change
is committed and visible to every other connection.
"""

from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, IntegrityError, connection, transaction

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
