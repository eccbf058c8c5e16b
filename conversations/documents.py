"""The JSON shape of sessions, threads, messages and runs, for the API and stored events.

Events keep a snapshot of the run or message as it was when they happened,
so the domain renders them; the API's serializers render through the same
functions, so a replayed event and a GET never disagree.
"""

from datetime import datetime
from typing import Any

from .models import Conversation, Message, Run, Thread


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def session_document(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "user_id": str(conversation.user_id),
        "title": conversation.title,
        "metadata": conversation.metadata,
        "instructions": conversation.instructions,
        "created_at": iso(conversation.created_at),
        "updated_at": iso(conversation.updated_at),
    }


def thread_document(thread: Thread) -> dict[str, Any]:
    return {
        "id": str(thread.id),
        "session_id": str(thread.conversation_id),
        "title": thread.title,
        "metadata": thread.metadata,
        "created_at": iso(thread.created_at),
        "updated_at": iso(thread.updated_at),
    }


def message_document(message: Message, *, feedback: str | None = None) -> dict[str, Any]:
    """``feedback``: the reader's, when not annotated on the message (``with_feedback_of``)."""
    return {
        "id": str(message.id),
        "thread_id": str(message.thread_id),
        "run_id": str(message.run_id) if message.run_id else None,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "feedback": getattr(message, "feedback", feedback),
        "superseded": message.superseded_by_id is not None,
        "created_at": iso(message.created_at),
        "metadata": message.metadata,
    }


def run_document(run: Run) -> dict[str, Any]:
    """Needs ``thread``, ``input_message`` and ``output_message`` loaded or cached.

    The reply's ``feedback`` is the run's ``output_feedback`` when annotated
    (``with_feedback_of``), else null.
    """
    usage = None
    if run.total_tokens is not None:
        usage = {
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens,
            "total_tokens": run.total_tokens,
        }
    return {
        "id": str(run.id),
        "thread_id": str(run.thread_id),
        "session_id": str(run.thread.conversation_id),
        "status": run.status,
        "input_message": message_document(run.input_message) if run.input_message else None,
        "output_message": (
            message_document(run.output_message, feedback=getattr(run, "output_feedback", None))
            if run.output_message
            else None
        ),
        "error": {"code": run.error_code, "message": run.error_message} if run.error_code else None,
        "incomplete_details": {"reason": run.incomplete_reason} if run.incomplete_reason else None,
        "usage": usage,
        "provider": run.provider,
        "model": run.model,
        "metadata": run.metadata,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
    }
