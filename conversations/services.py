"""Writes for sessions (conversations), threads and feedback on messages.

Each service is one short, durable transaction: when it returns, the change
is committed and visible to every other connection.
"""

from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from .errors import ObjectNotFound, OwnerNotFound, SessionLimitReached
from .models import Conversation, FeedbackKind, Message, MessageFeedback, MessageRole, Thread
from .runs import store

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
        created = store.insert_conversation_within_quota(conversation, limit)
    except IntegrityError:
        # The owner was deleted after this request authenticated.
        if not get_user_model().objects.filter(pk=user.pk).exists():
            raise OwnerNotFound() from None
        raise
    if not created:
        raise SessionLimitReached(details={"limit": limit})
    return store.saved(conversation)


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
    One query, the thread joined to its session.
    """
    threads = Thread.objects.select_related("conversation")
    return threads.filter(
        pk=thread_id, conversation_id=session_id, conversation__user_id=user_id
    ).first()


def message_feedback_set(
    *, thread: Thread, user, message_ids: list[Any], kind: FeedbackKind | str
) -> None:
    """Record ``user``'s feedback ``kind`` on assistant messages of ``thread``; committed.

    One row per message and user: feedback given again replaces the earlier
    one, whatever the order two concurrent requests commit in (the last one
    wins). Every id must be an assistant message of the thread, else
    ``ObjectNotFound`` and nothing is stored.
    """
    kind = FeedbackKind(kind)
    ids = set(message_ids)
    now = timezone.now()
    rows = [
        MessageFeedback(message_id=pk, thread=thread, user=user, kind=kind, updated_at=now)
        for pk in ids
    ]
    try:
        with transaction.atomic(durable=True):
            replies = Message.objects.filter(pk__in=ids, thread=thread, role=MessageRole.ASSISTANT)
            if replies.count() != len(ids):
                raise ObjectNotFound()
            MessageFeedback.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["message", "user"],
                update_fields=["kind", "updated_at"],
            )
    except IntegrityError:
        # The thread (and its messages) was deleted between the check and the commit.
        if not Thread.objects.filter(pk=thread.pk).exists():
            raise ObjectNotFound() from None
        raise
