"""ChatKit requests: the body ``{"type", "params", "metadata"?}`` parsed and checked.

Types and fields are those of ``openai-chatkit`` 1.6.5 (``ChatKitReq``).
Every problem is a 400 ``VALIDATION_ERROR`` naming where it is
(``type``, ``params.thread_id``, ``params.input.content[0].text``, ...): a
type this server does not carry out (attachments, transcription, client
tools, custom actions, structured input) names the type. Values are checked
strictly (a number is not a string); fields the protocol does not define
are ignored, as the reference server's models ignore them, so that newer
ChatKit clients keep working. Ids are checked where they are looked up: an
id that names nothing of this session is a 404, not a 400.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rest_framework.exceptions import ValidationError

from conversations.models import RUN_INPUT_MAX_LENGTH, TITLE_MAX_LENGTH, FeedbackKind
from conversations.validators import has_forbidden_characters

from .pagination import DEFAULT_LIMIT, MAX_LIMIT, PageParams

TURNS = frozenset({"threads.create", "threads.add_user_message", "threads.retry_after_item"})
# Types of the protocol this server does not carry out.
UNSUPPORTED = frozenset(
    {
        "attachments.create",
        "attachments.delete",
        "input.transcribe",
        "threads.add_client_tool_output",
        "threads.add_structured_input",
        "threads.custom_action",
        "threads.sync_custom_action",
    }
)
_SHOWN_TYPE_LENGTH = 100
# Items one feedback request may name: a page's worth (ChatKit sends one).
MAX_FEEDBACK_ITEMS = MAX_LIMIT


class OnDisconnect(StrEnum):
    """What a dropped turn's stream does to its run (``metadata.on_disconnect``)."""

    CANCEL = "cancel"  # ChatKit's stop button: the default
    CONTINUE = "continue"  # the run goes on, as a REST stream's does


@dataclass(frozen=True)
class ChatKitRequest:
    type: str
    params: dict[str, Any]
    on_disconnect: OnDisconnect

    @property
    def is_turn(self) -> bool:
        """Whether it starts a run (and streams)."""
        return self.type in TURNS


class _Fields:
    """Reads values out of a JSON object, collecting each problem under its path."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def fail(self, path: str, message: str) -> None:
        self.errors.setdefault(path, []).append(message)

    def object(self, value: Any, path: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.fail(path, "Must be a JSON object.")
        return None

    def get(
        self,
        obj: dict[str, Any],
        name: str,
        path: str,
        kind: type | tuple[type, ...],
        *,
        required: bool = True,
        nullable: bool = False,
    ) -> Any:
        """``obj[name]`` if it is a ``kind`` (None when absent and not required, or null)."""
        where = f"{path}.{name}"
        if name not in obj:
            if required:
                self.fail(where, "This field is required.")
            return None
        value = obj[name]
        if value is None and nullable:
            return None
        # bool is an int to Python, never to JSON.
        if isinstance(value, kind) and not (isinstance(value, bool) and bool not in _kinds(kind)):
            return value
        self.fail(where, f"Must be {_NAMES[kind]}{' or null' if nullable else ''}.")
        return None

    def string(self, obj: dict[str, Any], name: str, path: str, **options: Any) -> str | None:
        return self.get(obj, name, path, str, **options)


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    list: "an array",
    dict: "a JSON object",
}


def parse_request(data: Any) -> ChatKitRequest:
    """The request in ``data`` (the parsed body), or ``ValidationError``."""
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["Expected a JSON object."]})
    kind = data.get("type")
    if not isinstance(kind, str):
        problem = "This field is required." if kind is None else "Must be a string."
        raise ValidationError({"type": [problem]})
    shown = kind[:_SHOWN_TYPE_LENGTH]
    if kind in UNSUPPORTED:
        raise ValidationError({"type": [f"The request type {shown!r} is not supported here."]})
    read_params = _PARAMS.get(kind)
    if read_params is None:
        raise ValidationError({"type": [f"Unknown request type {shown!r}."]})
    fields = _Fields()
    on_disconnect = _on_disconnect(data, fields)
    params: dict[str, Any] = {}
    if "params" not in data:
        fields.fail("params", "This field is required.")
    elif (given := fields.object(data["params"], "params")) is not None:
        params = read_params(given, fields)
    if fields.errors:
        raise ValidationError(fields.errors)
    return ChatKitRequest(type=kind, params=params, on_disconnect=on_disconnect)


def _on_disconnect(data: dict[str, Any], fields: _Fields) -> OnDisconnect:
    if "metadata" not in data:
        return OnDisconnect.CANCEL
    metadata = fields.object(data["metadata"], "metadata")
    if metadata is None:
        return OnDisconnect.CANCEL
    value = metadata.get("on_disconnect", OnDisconnect.CANCEL)
    if value not in tuple(OnDisconnect):
        fields.fail("metadata.on_disconnect", 'Must be "cancel" or "continue".')
        return OnDisconnect.CANCEL
    return OnDisconnect(value)


# Params, by request type ------------------------------------------------------


def _thread_id(params: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    return {"thread_id": fields.string(params, "thread_id", "params")}


def _create(params: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    return {"input": _input(params, fields)}


def _add_user_message(params: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    return {**_thread_id(params, fields), "input": _input(params, fields)}


def _retry_after_item(params: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    return {**_thread_id(params, fields), "item_id": fields.string(params, "item_id", "params")}


def _list_threads(params: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    return {"page": _page(params, fields)}


def _list_items(params: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    return {**_thread_id(params, fields), "page": _page(params, fields)}


def _update_thread(params: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    title = fields.string(params, "title", "params")
    if title is not None:
        # As a thread's title over REST: trimmed, not blank, at most 200 characters.
        title = title.strip()
        if not title:
            fields.fail("params.title", "This field may not be blank.")
        elif len(title) > TITLE_MAX_LENGTH or has_forbidden_characters(title):
            fields.fail(
                "params.title",
                f"At most {TITLE_MAX_LENGTH} characters, without NUL or surrogates.",
            )
    return {**_thread_id(params, fields), "title": title}


def _feedback(params: dict[str, Any], fields: _Fields) -> dict[str, Any]:
    item_ids = fields.get(params, "item_ids", "params", list)
    if item_ids is not None and not all(isinstance(item_id, str) for item_id in item_ids):
        fields.fail("params.item_ids", "Must be an array of strings.")
    elif item_ids is not None and len(item_ids) > MAX_FEEDBACK_ITEMS:
        fields.fail("params.item_ids", f"At most {MAX_FEEDBACK_ITEMS} ids.")
    kind = fields.string(params, "kind", "params")
    if kind is not None and kind not in FeedbackKind.values:
        fields.fail("params.kind", 'Must be "positive" or "negative".')
    return {**_thread_id(params, fields), "item_ids": item_ids, "kind": kind}


_PARAMS = {
    "threads.create": _create,
    "threads.add_user_message": _add_user_message,
    "threads.retry_after_item": _retry_after_item,
    "threads.get_by_id": _thread_id,
    "threads.list": _list_threads,
    "items.list": _list_items,
    "threads.update": _update_thread,
    "threads.delete": _thread_id,
    "items.feedback": _feedback,
}


def _page(params: dict[str, Any], fields: _Fields) -> PageParams:
    """``limit`` (1..100, default 20), ``order`` (default desc) and ``after``."""
    limit = fields.get(params, "limit", "params", int, required=False, nullable=True)
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        fields.fail("params.limit", f"Must be an integer from 1 to {MAX_LIMIT}.")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        fields.fail("params.order", 'Must be "asc" or "desc".')
    after = fields.string(params, "after", "params", required=False, nullable=True)
    return PageParams(limit=limit or DEFAULT_LIMIT, descending=order == "desc", after=after)


def _input(params: dict[str, Any], fields: _Fields) -> str | None:
    """The run's input: the text parts joined in order, after ``quoted_text`` as a quotation.

    ``inference_options`` are checked and ignored (the server picks the
    model); attachments are not supported.
    """
    path = "params.input"
    if "input" not in params:
        fields.fail(path, "This field is required.")
        return None
    given = fields.object(params["input"], path)
    if given is None:
        return None
    parts = fields.get(given, "content", path, list)
    attachments = fields.get(given, "attachments", path, list)
    if attachments:
        fields.fail(f"{path}.attachments", "Attachments are not supported here.")
    quoted = fields.string(given, "quoted_text", path, required=False, nullable=True)
    options = fields.get(given, "inference_options", path, dict)
    if options is not None:
        fields.get(options, "tool_choice", f"{path}.inference_options", dict, required=False)
        fields.string(options, "model", f"{path}.inference_options", required=False, nullable=True)
        tool_choice = options.get("tool_choice")
        if isinstance(tool_choice, dict):
            fields.string(tool_choice, "id", f"{path}.inference_options.tool_choice")
    texts = [
        _part_text(part, f"{path}.content[{index}]", fields)
        for index, part in enumerate(parts or [])
    ]
    if parts is None or fields.errors:
        return None
    text = "".join(texts)
    if quoted and quoted.strip():
        text = _quotation(quoted) + text
    where = f"{path}.content"
    if not text.strip():
        fields.fail(where, "Must contain text, not only whitespace.")
    elif len(text) > RUN_INPUT_MAX_LENGTH:
        fields.fail(where, f"At most {RUN_INPUT_MAX_LENGTH} characters in all, with the quotation.")
    elif has_forbidden_characters(text):
        fields.fail(where, "Must not contain NUL or surrogate characters.")
    return text


def _part_text(part: Any, path: str, fields: _Fields) -> str:
    """The text of a content part: ``input_text``, or an ``input_tag``'s."""
    part = fields.object(part, path)
    if part is None:
        return ""
    kind = part.get("type")
    if kind not in ("input_text", "input_tag"):
        fields.fail(f"{path}.type", 'Must be "input_text" or "input_tag".')
        return ""
    text = fields.string(part, "text", path)
    if kind == "input_tag":
        fields.string(part, "id", path)
        fields.get(part, "data", path, dict)
        fields.string(part, "group", path, required=False, nullable=True)
        fields.get(part, "interactive", path, bool, required=False)
    return text or ""


def _quotation(quoted: str) -> str:
    """``quoted`` as a Markdown quotation, then a blank line."""
    lines = quoted.strip("\n").splitlines()
    return "\n".join(f"> {line}" if line.strip() else ">" for line in lines) + "\n\n"
