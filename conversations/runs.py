"""Runs: one user message in, one assistant reply out.

Three steps, each visible to every other connection once it returns:
(1) ``run_start`` stores the user message and the run in one transaction;
(2) the provider is called outside any transaction, holding no connection;
(3) ``run_complete`` or ``run_fail`` stores the reply and the final status
together. A crash between the steps leaves an active run whose heartbeat
stops; ``runs_expire_stale`` ends it as ``expired``.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from .errors import ObjectNotFound, RunInProgress
from .llm import ChatMessage, Completion, Delta, Provider, ProviderError
from .models import (
    ACTIVE_RUN_STATUSES,
    DEFAULT_CONVERSATION_TITLE,
    Conversation,
    Message,
    MessageRole,
    MessageStatus,
    Run,
    RunErrorCode,
    RunStatus,
    Thread,
)

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


def run_start(
    *,
    thread: Thread,
    input: str,
    provider: str,
    model: str,
    instructions: str = "",
    metadata: dict[str, str] | None = None,
    queued: bool = False,
) -> Run:
    """Store the user message and a new run on ``thread``, committed.

    At most one run per thread is active; the database's partial unique
    index decides races. An active run whose lease ran out is expired first,
    so a crashed process never locks a thread for good.
    """
    for _ in range(_START_ATTEMPTS):
        try:
            return _insert_run(
                thread=thread,
                input=input,
                provider=provider,
                model=model,
                instructions=instructions,
                metadata=metadata or {},
                queued=queued,
            )
        except IntegrityError:
            pass
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
) -> Run:
    now = timezone.now()
    run = Run(
        thread=thread,
        status=RunStatus.QUEUED if queued else RunStatus.IN_PROGRESS,
        provider=provider,
        model=model,
        instructions=instructions,
        metadata=metadata,
        created_at=now,
        started_at=None if queued else now,
        heartbeat_at=now,
    )
    message = Message(
        thread=thread, run_id=run.id, role=MessageRole.USER, content=input, created_at=now
    )
    run.input_message = message
    conversation = thread.conversation
    with transaction.atomic(durable=True):
        # The foreign keys are deferred, so the message may point at the run
        # that is inserted right after it.
        message.save(force_insert=True)
        run.save(force_insert=True)
        if conversation.title == DEFAULT_CONVERSATION_TITLE:
            title = title_from_text(input)
            renamed = Conversation.objects.filter(
                pk=conversation.pk, title=DEFAULT_CONVERSATION_TITLE
            ).update(title=title, updated_at=now)
            if renamed:
                conversation.title = title
    return run


def run_context(*, run: Run) -> list[ChatMessage]:
    """What the provider sees: instructions, then the newest messages within budget.

    Never the whole history: at most ``LLM_CONTEXT_MAX_MESSAGES`` messages and
    ``LLM_CONTEXT_MAX_CHARS`` characters, newest kept first; the run's own
    input is always included.
    """
    max_messages = settings.LLM_CONTEXT_MAX_MESSAGES
    max_chars = settings.LLM_CONTEXT_MAX_CHARS
    rows = (
        Message.objects.filter(thread_id=run.thread_id)
        .order_by("-created_at", "-id")
        .values_list("role", "content")[:max_messages]
    )
    history: list[ChatMessage] = []
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


def _release_connection() -> None:
    # The provider may take seconds: hand the connection back instead of
    # holding it idle. Inside a transaction (tests) there is nothing to hand.
    if not connection.in_atomic_block:
        connection.close()


def run_execute(
    *,
    run: Run,
    provider: Provider,
    on_delta: Callable[[str], None] | None = None,
) -> Run:
    """Ask the provider for the reply and store the outcome.

    With ``on_delta`` the reply is streamed and each piece is passed on as it
    arrives. Provider failures end the run as ``failed``; they are expected
    conditions, logged with their stack trace, never raised to the caller.
    """
    messages = run_context(run=run)
    _release_connection()
    pieces: list[str] = []
    try:
        if on_delta is None:
            completion = provider.complete(messages)
        else:
            completion = None
            for item in provider.stream(messages):
                if isinstance(item, Delta):
                    pieces.append(item.text)
                    on_delta(item.text)
                else:
                    completion = item
            if completion is None:
                completion = Completion(text="".join(pieces))
    except ProviderError as exc:
        logger.exception("Run %s failed: %s", run.pk, exc.code)
        return run_fail(run=run, code=exc.code, message=exc.public_message, partial="".join(pieces))
    return run_complete(run=run, completion=completion)


def _lock_if_in_progress(run: Run) -> bool:
    status = Run.objects.select_for_update().filter(pk=run.pk).values_list("status", flat=True)
    current = status.first()
    if current != RunStatus.IN_PROGRESS:
        logger.warning("Run %s ended as %s before its reply arrived", run.pk, current)
        if current is not None:
            run.status = current
        return False
    return True


def run_complete(*, run: Run, completion: Completion) -> Run:
    """Store the assistant message and the run's final status in one transaction."""
    now = timezone.now()
    with transaction.atomic(durable=True):
        # The lock orders this against the reaper and cancel: a run they
        # ended meanwhile keeps their verdict, and no reply is attached.
        if not _lock_if_in_progress(run):
            return run
        run.output_message = Message.objects.create(
            thread_id=run.thread_id,
            run=run,
            role=MessageRole.ASSISTANT,
            content=completion.text,
            status=MessageStatus.COMPLETED if completion.finished else MessageStatus.INCOMPLETE,
            metadata=completion.metadata,
        )
        run.status = RunStatus.COMPLETED
        if completion.usage is not None:
            run.prompt_tokens = completion.usage.prompt_tokens
            run.completion_tokens = completion.usage.completion_tokens
            run.total_tokens = completion.usage.total_tokens
        run.completed_at = now
        run.heartbeat_at = now
        run.save(
            update_fields=[
                "status",
                "output_message",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "completed_at",
                "heartbeat_at",
            ]
        )
    return run


def run_fail(*, run: Run, code: str, message: str, partial: str = "") -> Run:
    """End the run as ``failed``; text already streamed is kept as incomplete."""
    now = timezone.now()
    with transaction.atomic(durable=True):
        if not _lock_if_in_progress(run):
            return run
        if partial:
            run.output_message = Message.objects.create(
                thread_id=run.thread_id,
                run=run,
                role=MessageRole.ASSISTANT,
                content=partial,
                status=MessageStatus.INCOMPLETE,
            )
        run.status = RunStatus.FAILED
        run.error_code = code
        run.error_message = message
        run.completed_at = now
        run.heartbeat_at = now
        run.save(
            update_fields=[
                "status",
                "output_message",
                "error_code",
                "error_message",
                "completed_at",
                "heartbeat_at",
            ]
        )
    return run


def runs_expire_stale(
    *, thread_id: Any = None, run_ids: list[Any] | None = None, now: datetime | None = None
) -> int:
    """End active runs whose heartbeat is older than ``RUN_TIMEOUT_SECONDS``.

    Returns how many were expired. One UPDATE: a run that makes progress
    meanwhile renews its heartbeat and no longer matches.
    """
    now = now or timezone.now()
    deadline = now - timedelta(seconds=settings.RUN_TIMEOUT_SECONDS)
    stale = Run.objects.filter(status__in=ACTIVE_RUN_STATUSES, heartbeat_at__lt=deadline)
    if thread_id is not None:
        stale = stale.filter(thread_id=thread_id)
    if run_ids is not None:
        stale = stale.filter(id__in=run_ids)
    with transaction.atomic():
        expired = stale.update(
            status=RunStatus.EXPIRED,
            error_code=RunErrorCode.RUN_EXPIRED,
            error_message="The run made no progress within the time limit.",
            completed_at=now,
        )
    if expired:
        logger.warning("Expired %d stale run(s)", expired)
    return expired
