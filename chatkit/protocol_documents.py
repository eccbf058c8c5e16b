"""The ChatKit protocol's JSON, made from our rows and stored events: the one place for it.

The shapes are those of the ``openai-chatkit`` package, version 1.6.5
(``chatkit/types.py``: ``Thread``, ``Page``, ``ThreadItem``,
``ThreadStreamEvent``), as its reference server serialises them, with these
differences: a thread still holding the default title is sent with
``"title": null`` (the reference leaves out null fields), ``Page.after`` is
always present (null on the last page), and a thread's ``metadata`` is the
thread's own (the reference always sends ``{}``). That package cannot be
imported here (this app is also called ``chatkit``); tests check these
shapes against it from a separate interpreter.
"""

from typing import Any

from conversations.documents import iso, message_document
from conversations.models import DEFAULT_THREAD_TITLE, Message, MessageRole, Thread

# Items of a thread sent with it (``threads.get_by_id``), as the reference does.
THREAD_ITEMS_PAGE_SIZE = 20
STREAM_ERROR = "stream.error"

Json = dict[str, Any]


# Threads, items, pages ------------------------------------------------------


def page(data: list[Json], *, has_more: bool) -> Json:
    """``Page``: ``after`` is the last item's id when there is more, for the next request."""
    return {"data": data, "has_more": has_more, "after": data[-1]["id"] if has_more else None}


def thread(thread: Thread, items: Json | None = None) -> Json:
    """``Thread``; ``items`` a page of its items, empty unless given."""
    return {
        "id": str(thread.id),
        "title": None if thread.title == DEFAULT_THREAD_TITLE else thread.title,
        "created_at": iso(thread.created_at),
        "status": {"type": "active"},
        "metadata": thread.metadata,
        "items": items if items is not None else page([], has_more=False),
    }


def output_text(text: str) -> Json:
    """``AssistantMessageContent``."""
    return {"type": "output_text", "text": text, "annotations": []}


def item(document: Json) -> Json:
    """The ``ThreadItem`` of a message, from its document (``message_document``).

    A user message is a ``user_message`` of one ``input_text`` part, an
    assistant message an ``assistant_message`` of one ``output_text`` part.
    """
    base = {
        "id": document["id"],
        "thread_id": document["thread_id"],
        "created_at": document["created_at"],
    }
    if document["role"] == MessageRole.USER:
        return {
            **base,
            "type": "user_message",
            "content": [{"type": "input_text", "text": document["content"]}],
            "attachments": [],
            "inference_options": {},
        }
    return {**base, "type": "assistant_message", "content": [output_text(document["content"])]}


def message_item(message: Message) -> Json:
    return item(message_document(message))


def empty_reply(*, item_id: str, thread_id: str, created_at: str) -> Json:
    """The assistant message a turn adds before its first piece."""
    return {
        "id": item_id,
        "thread_id": thread_id,
        "created_at": created_at,
        "type": "assistant_message",
        "content": [],
    }


# Stream events (ThreadStreamEvent) -----------------------------------------


def thread_created(row: Thread) -> Json:
    return {"type": "thread.created", "thread": thread(row)}


def thread_updated(row: Thread) -> Json:
    return {"type": "thread.updated", "thread": thread(row)}


def item_added(added: Json) -> Json:
    return {"type": "thread.item.added", "item": added}


def item_done(done: Json) -> Json:
    return {"type": "thread.item.done", "item": done}


def item_removed(item_id: str) -> Json:
    return {"type": "thread.item.removed", "item_id": item_id}


def _item_updated(item_id: str, update: Json) -> Json:
    return {"type": "thread.item.updated", "item_id": item_id, "update": update}


def content_part_added(item_id: str) -> Json:
    return _item_updated(
        item_id,
        {
            "type": "assistant_message.content_part.added",
            "content_index": 0,
            "content": output_text(""),
        },
    )


def text_delta(item_id: str, delta: str) -> Json:
    return _item_updated(
        item_id,
        {"type": "assistant_message.content_part.text_delta", "content_index": 0, "delta": delta},
    )


def content_part_done(item_id: str, text: str) -> Json:
    return _item_updated(
        item_id,
        {
            "type": "assistant_message.content_part.done",
            "content_index": 0,
            "content": output_text(text),
        },
    )


def stream_options() -> Json:
    # Stop drops the connection, which cancels the run (CHATKIT.md).
    return {"type": "stream_options", "stream_options": {"allow_cancel": True}}


def stream_error() -> Json:
    """The run failed (or its stream broke) after the stream started; the client may retry."""
    return {"type": "error", "code": STREAM_ERROR, "allow_retry": True}
