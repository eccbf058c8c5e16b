"""The ChatKit endpoint in the OpenAPI document: its request body, answers and stream.

Described as this server reads and writes them, no stricter (the fuzzer
checks both ways); the protocol's own schema is ``openai-chatkit`` 1.6.5.
``chatkit.schema``'s hook adds these components and leaves the JSON answer
without the envelope.
"""

from conversations.models import RUN_INPUT_MAX_LENGTH, TITLE_MAX_LENGTH, FeedbackKind

from .fields import NO_NUL, NOT_ONLY_SPACE
from .pagination import MAX_LIMIT
from .protocol_requests import MAX_FEEDBACK_ITEMS, OnDisconnect

REQUEST_REF = {"$ref": "#/components/schemas/ChatKitRequest"}
RESPONSE_REF = {"$ref": "#/components/schemas/ChatKitResponse"}
STREAM_REF = {"$ref": "#/components/schemas/ChatKitEvent"}

_STRING = {"type": "string"}
_TEXT = {"type": "string", "pattern": NO_NUL}
_PAGE = {
    "limit": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_LIMIT},
    "order": {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
    "after": {
        "type": ["string", "null"],
        "description": "The id of the last item of the previous page (its `after`).",
    },
}
_INPUT = {
    "type": "object",
    "description": (
        "A `UserMessageInput`. The text parts (`input_text`, and an `input_tag`'s text, which "
        "also needs `id` and `data`), joined in order, are the run's input: some text, at most "
        f"{RUN_INPUT_MAX_LENGTH} characters with `quoted_text`, which goes before it as a "
        "quotation. `attachments` must be empty; `inference_options` are ignored (the server "
        "picks the model)."
    ),
    "required": ["content", "attachments", "inference_options"],
    "properties": {
        "content": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "text"],
                "properties": {
                    "type": {"type": "string", "enum": ["input_text", "input_tag"]},
                    "text": _TEXT,
                },
            },
        },
        "attachments": {"type": "array", "maxItems": 0},
        "quoted_text": {"type": ["string", "null"], "pattern": NO_NUL},
        "inference_options": {"type": "object"},
    },
}


def _request(kind: str, params: dict, required: list[str], description: str) -> dict:
    return {
        "type": "object",
        "description": description,
        "required": ["type", "params"],
        "properties": {
            "type": {"const": kind},
            "params": {"type": "object", "required": required, "properties": params},
            "metadata": {
                "type": "object",
                "properties": {
                    "on_disconnect": {
                        "type": "string",
                        "enum": list(OnDisconnect),
                        "default": OnDisconnect.CANCEL,
                        "description": (
                            "What a dropped turn's stream does to its run: cancel it (the "
                            "default, ChatKit's stop button) or let it go on."
                        ),
                    }
                },
            },
        },
    }


_THREAD_ID = {"thread_id": _STRING}

REQUEST_SCHEMA = {
    "description": (
        "A ChatKit request (openai-chatkit 1.6.5 `ChatKitReq`). The protocol's other types "
        "(attachments, transcription, client tools, custom actions, structured input) are a "
        "400 naming the type; fields the protocol does not define are ignored."
    ),
    "oneOf": [
        _request(
            "threads.create", {"input": _INPUT}, ["input"], "A new thread and its first turn."
        ),
        _request(
            "threads.add_user_message",
            {**_THREAD_ID, "input": _INPUT},
            ["thread_id", "input"],
            "A user message and a turn.",
        ),
        _request(
            "threads.retry_after_item",
            {**_THREAD_ID, "item_id": _STRING},
            ["thread_id", "item_id"],
            "A new reply to a user message; what followed it is superseded.",
        ),
        _request("threads.get_by_id", _THREAD_ID, ["thread_id"], "A thread with its items."),
        _request("threads.list", _PAGE, [], "A page of the session's threads."),
        _request(
            "items.list", {**_THREAD_ID, **_PAGE}, ["thread_id"], "A page of a thread's items."
        ),
        _request(
            "threads.update",
            {
                **_THREAD_ID,
                "title": {
                    "type": "string",
                    "pattern": NOT_ONLY_SPACE,
                    "maxLength": TITLE_MAX_LENGTH,
                },
            },
            ["thread_id", "title"],
            "Rename a thread.",
        ),
        _request("threads.delete", _THREAD_ID, ["thread_id"], "Delete a thread."),
        _request(
            "items.feedback",
            {
                **_THREAD_ID,
                "item_ids": {"type": "array", "maxItems": MAX_FEEDBACK_ITEMS, "items": _STRING},
                "kind": {"type": "string", "enum": FeedbackKind.values},
            },
            ["thread_id", "item_ids", "kind"],
            "Feedback on assistant messages of the thread.",
        ),
    ],
}

RESPONSE_SCHEMA = {
    "type": "object",
    "description": (
        "The protocol object itself, not in the envelope: a `Thread` (threads.get_by_id, "
        "threads.update), a `Page` (threads.list, items.list) or `{}` (threads.delete, "
        "items.feedback)."
    ),
}

STREAM_EVENT_NAMES = [
    "thread.created",
    "thread.updated",
    "thread.item.added",
    "thread.item.updated",
    "thread.item.done",
    "thread.item.removed",
    "stream_options",
    "error",
]

STREAM_SCHEMA = {
    "description": (
        "Server-sent events of a turn, each `data: <json>` of a ChatKit `ThreadStreamEvent`: "
        "thread.created (a new thread), thread.item.done (the user message), stream_options, "
        "thread.item.added (the assistant message), thread.item.updated (its text, piece by "
        "piece), thread.item.done (the reply), error (the run failed), thread.updated (the "
        "thread was named). A `: ping` comment line keeps idle streams open."
    ),
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"type": "string", "enum": STREAM_EVENT_NAMES}},
            },
        }
    },
}

COMPONENTS = {
    "ChatKitRequest": REQUEST_SCHEMA,
    "ChatKitResponse": RESPONSE_SCHEMA,
    "ChatKitEvent": STREAM_SCHEMA,
}
