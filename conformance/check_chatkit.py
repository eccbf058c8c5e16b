"""Checks recorded ChatKit exchanges against the official ``openai-chatkit`` package.

The package (1.6.5, conformance/requirements.txt) is the protocol's schema and
its reference server. Our Django app is also named ``chatkit`` and the package
pulls in the agents SDK, so this runs in a virtualenv of its own, isolated
(``python -I``), from a directory outside the project:

    cd /tmp && /path/to/.venv-chatkit/bin/python -I /path/to/conformance/check_chatkit.py T.jsonl

A transcript is JSON lines, one exchange each, in the order they happened in
one ChatKit session (a session's threads, recorded from its start)::

    {"request": <the JSON body sent>, "status": 200,
     "content_type": "text/event-stream", "body": "<the response body as text>",
     "dropped": false}

``dropped`` is true when the client closed the stream before its end (the
stop button); the body then holds what arrived until then. A record may give
the answer decoded instead of ``body``: ``"json": <the body>`` or
``"events": [<each event's data>]`` (as ``CHATKIT_TRANSCRIPTS`` of the
endpoint's own tests writes it); then the framing is not checked.

What is checked, per exchange:

- a request the server answered 2xx is a valid ``ChatKitReq``;
- a 2xx answer has the status and content type the request's kind implies,
  and its body validates (strictly, no unknown fields) against the package's
  type for it: ``Thread``, ``Page[Thread]`` (items empty), ``Page[ThreadItem]``,
  ``{}``, or for a stream, every ``data:`` frame against ``ThreadStreamEvent``;
- an error answer (4xx, never 500) is the API's error envelope, not ChatKit;
- a stream's invariants: item updates name the item in flight, the text
  deltas concatenate to the finished item's text, items carry the thread's id;
- replay: every 2xx request is sent, ids translated, to the package's own
  ``ChatKitServer`` (in-memory store, replies streamed by
  ``chatkit.agents.stream_agent_response`` from an agents-SDK ``Agent`` whose
  offline model streams the same text deltas, titles set on a thread's first
  turn). A streamed turn's event kinds (type; item type for
  ``thread.item.added``/``done``; update type for ``thread.item.updated``)
  must equal the reference's (a dropped stream: be a prefix of it), and a
  listing's shape (item types, ``has_more``, whether ``after`` is set) must
  equal the reference's. Accepted differences are in ``ACCEPTED`` below.

``--no-replay`` checks transcripts that are not one session from its start
(``CHATKIT_TRANSCRIPTS`` collects every test's exchanges): everything above
but the replay.

Exit status: 0 when everything conforms, 1 with a report of every violation,
2 when the checker cannot run (wrong interpreter, unreadable transcript).
``--record-reference OUT`` first writes a transcript of a whole session on
the reference server itself (the checker's own tests start from it; it may
also be among the transcripts to check).
"""

import argparse
import asyncio
import contextlib
import copy
import difflib
import importlib.metadata
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

PACKAGE_VERSION = "1.6.5"
PROJECT_DIR = Path(__file__).resolve().parent.parent


def _ensure_package_interpreter() -> None:
    """Refuse to run where ``import chatkit`` could be the project's app."""
    problems = []
    if not sys.flags.isolated:
        problems.append("run it isolated: python -I")
    cwd = Path.cwd().resolve()
    if cwd == PROJECT_DIR or PROJECT_DIR in cwd.parents:
        problems.append(f"run it from a directory outside the project ({PROJECT_DIR})")
    if not problems:
        import chatkit

        location = Path(chatkit.__file__).resolve()
        if PROJECT_DIR in location.parents and "site-packages" not in location.parts:
            problems.append(f"`import chatkit` is the project's app ({location})")
        try:
            version = importlib.metadata.version("openai-chatkit")
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version != PACKAGE_VERSION:
            problems.append(f"openai-chatkit {PACKAGE_VERSION} is needed, found {version}")
    if problems:
        sys.stderr.write("check_chatkit: cannot run: " + "; ".join(problems) + "\n")
        sys.exit(2)


_ensure_package_interpreter()

# The package and the agents SDK; only after the check above.
import chatkit.server  # noqa: E402
from agents import (  # noqa: E402
    Agent,
    Model,
    ModelResponse,
    ModelSettings,
    Runner,
    set_tracing_disabled,
)
from chatkit.agents import AgentContext, simple_to_agent_input, stream_agent_response  # noqa: E402
from chatkit.server import ChatKitServer, StreamingResult  # noqa: E402
from chatkit.store import NotFoundError, Store  # noqa: E402
from chatkit.types import (  # noqa: E402
    ChatKitReq,
    Page,
    Thread,
    ThreadItem,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    is_streaming_req,
)
from openai.types.responses import (  # noqa: E402
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from pydantic import BaseModel, TypeAdapter, ValidationError  # noqa: E402

# Nothing leaves this process: the agents SDK would export traces otherwise.
set_tracing_disabled(True)
# The reference server logs a refused replay with its traceback; the report says it once.
logging.getLogger("chatkit").disabled = True
# A failed run leaves the agents SDK's queue reader pending, which asyncio
# reports at exit; the failure itself is what the replay compares.
logging.getLogger("asyncio").disabled = True


class _SharedTypeAdapter:
    """``TypeAdapter`` for the reference server, one per type instead of one per request.

    ``ChatKitServer.process`` builds ``TypeAdapter[ChatKitReq](ChatKitReq)`` for
    every request: 20 ms of schema building each time, most of a replay's cost.
    The adapter is the same validator each time, so sharing it changes nothing
    the server does.
    """

    _adapters: ClassVar[dict[int, TypeAdapter]] = {}

    def __class_getitem__(cls, item: Any) -> type["_SharedTypeAdapter"]:
        return cls

    def __new__(cls, schema: Any) -> TypeAdapter:  # type: ignore[misc]
        if id(schema) not in cls._adapters:
            cls._adapters[id(schema)] = TypeAdapter(schema)
        return cls._adapters[id(schema)]


chatkit.server.TypeAdapter = _SharedTypeAdapter

EMPTY_OBJECT = "{}"
TEXT_DELTA = "thread.item.updated(assistant_message.content_part.text_delta)"
# A plain request's answer: (its type in the package, the name a report gives it).
RESPONSE_TYPES: dict[str, tuple[Any, str]] = {
    "threads.get_by_id": (Thread, "Thread"),
    "threads.list": (Page[Thread], "Page[Thread]"),
    "items.list": (Page[ThreadItem], "Page[ThreadItem]"),
    "threads.update": (Thread, "Thread"),
    "threads.delete": (EMPTY_OBJECT, "{}"),
    "items.feedback": (EMPTY_OBJECT, "{}"),
}
ADAPTERS = {
    "request": TypeAdapter(ChatKitReq),
    "event": TypeAdapter(ThreadStreamEvent),
    **{
        kind: TypeAdapter(schema)
        for kind, (schema, _) in RESPONSE_TYPES.items()
        if schema is not EMPTY_OBJECT
    },
}
ENVELOPE_ERROR_FIELDS = {"code": str, "message": str, "request_id": str}


@dataclass(frozen=True)
class Accepted:
    """A difference from the reference server that is known, deliberate and harmless.

    With ``ours`` and ``reference`` (event kinds, see ``event_kind``), it is a
    sequence difference the comparison applies: a turn of ``request_types``
    whose kinds end with ``ours``, where the reference's end with
    ``reference``, matches on those tails. Without them, it records what the
    checker does not compare (values, not shapes), so that it is said.
    """

    what: str
    why: str
    request_types: tuple[str, ...] = ()
    ours: tuple[str, ...] = ()
    reference: tuple[str, ...] = ()


TURNS = ("threads.create", "threads.add_user_message", "threads.retry_after_item")
ACCEPTED_MARK = "(accepted difference) "

# Every accepted difference, in one place; each says why a ChatKit client is
# fine with it. Anything else that differs in a sequence or a shape is a
# violation.
ACCEPTED: tuple[Accepted, ...] = (
    Accepted(
        what="a turn that fails mid-reply closes the partial reply (content part done,"
        " item done) before the error event; the reference leaves it pending and drops it",
        why="ours keeps the partial reply, incomplete, as a failed run does over REST"
        " (CHATKIT.md), so the client shows what a reload will show; both end in the"
        " same error event",
        request_types=TURNS,
        ours=(
            "thread.item.updated(assistant_message.content_part.done)",
            "thread.item.done(assistant_message)",
            "error",
        ),
        reference=("error",),
    ),
    Accepted(
        what="fields that are null are sent as null (a default title, the last page's"
        " `after`); the reference leaves them out (exclude_none)",
        why="the package's types default each of them to None: absent and null read alike",
    ),
    Accepted(
        what="a thread's `metadata` is the thread's own; the reference always sends {}",
        why="`metadata` is the integration's own dict[str, Any] in the package's types",
    ),
    Accepted(
        what="a user message comes back as the one text part it was stored as (a tag's"
        " text and a quotation included), not as the parts that were sent",
        why="the stored message is the one the REST API and the provider see; the words"
        " are the same, in order",
    ),
)


# Transcripts ----------------------------------------------------------------


@dataclass
class Exchange:
    """One request and the answer to it, as recorded."""

    where: str
    request: Any
    status: int
    content_type: str
    body: str
    dropped: bool = False

    @property
    def type(self) -> str:
        request = self.request if isinstance(self.request, dict) else {}
        return str(request.get("type", "?"))

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Violation:
    where: str
    request_type: str
    rule: str
    detail: str

    def render(self) -> str:
        head = f"{self.where} {self.request_type}: [{self.rule}]"
        if "\n" in self.detail:
            return f"{head}\n" + "\n".join(f"    {line}" for line in self.detail.splitlines())
        return f"{head} {self.detail}"


class TranscriptError(Exception):
    """A transcript the checker cannot read (not a conformance finding)."""


def load_transcript(path: Path) -> list[Exchange]:
    exchanges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(line)
            content_type = record.get("content_type")
            if "body" in record:
                body = str(record["body"])
            elif "events" in record:
                body = sse_text(record["events"])
                content_type = content_type or "text/event-stream"
            else:
                body = json.dumps(record["json"])
                content_type = content_type or "application/json"
            exchanges.append(
                Exchange(
                    where=where,
                    request=record["request"],
                    status=int(record["status"]),
                    content_type=str(content_type or ""),
                    body=body,
                    dropped=bool(record.get("dropped", False)),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TranscriptError(f"{where}: not a transcript record ({exc})") from exc
    return exchanges


# Server-sent events ---------------------------------------------------------


@dataclass
class Frame:
    fields: dict[str, list[str]]

    @property
    def data(self) -> str:
        return "\n".join(self.fields.get("data", []))


def parse_sse(text: str, *, dropped: bool) -> tuple[list[Frame], list[str]]:
    """The dispatched frames of an event stream, and what is wrong with its framing."""
    frames: list[Frame] = []
    problems: list[str] = []
    fields: dict[str, list[str]] = {}
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # A body that ends at a frame boundary splits into a last empty string.
    complete = lines[-1] == ""
    if complete:
        lines.pop()
    elif not dropped:
        problems.append("the stream ends in the middle of a line")
    for line in lines:
        if line == "":
            if fields:
                frames.append(Frame(fields))
                fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
    if fields and not dropped:
        problems.append("the stream ends inside an event (no blank line after it)")
    named = []
    for index, frame in enumerate(frames):
        unknown = set(frame.fields) - {"data", "id", "retry", "event"}
        if unknown:
            problems.append(f"event {index}: unknown field(s) {sorted(unknown)}")
        if frame.fields.get("event", ["message"]) != ["message"]:
            named.append(index)
        if "data" not in frame.fields:
            problems.append(f"event {index}: no data")
    if named:
        problems.append(
            f"{len(named)} named event(s), from event {named[0]} "
            "(ChatKit reads unnamed `data:` frames, as the reference server sends)"
        )
    return frames, problems


def sse_text(events: Iterable[Any]) -> str:
    """An event stream as the reference server frames it."""
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events)


# Schema ---------------------------------------------------------------------


def _unknown_fields(data: Any, value: Any, path: str) -> list[str]:
    """Keys in ``data`` that the validated ``value`` has no field for (pydantic drops them)."""
    found = []
    if isinstance(value, BaseModel) and isinstance(data, dict):
        fields = type(value).model_fields
        names = {info.alias or name: name for name, info in fields.items()}
        for key, item in data.items():
            where = f"{path}.{key}" if path else key
            if key not in names:
                found.append(where)
            else:
                found += _unknown_fields(item, getattr(value, names[key]), where)
    elif isinstance(value, list) and isinstance(data, list):
        for index, (item, validated) in enumerate(zip(data, value, strict=False)):
            found += _unknown_fields(item, validated, f"{path}.{index}" if path else str(index))
    return found


def validate(adapter_name: str, data: Any) -> tuple[Any | None, list[str]]:
    """The validated value and a list of problems (schema errors, then unknown fields)."""
    try:
        value = ADAPTERS[adapter_name].validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            location = ".".join(str(part) for part in error["loc"]) or "(top)"
            problems.append(f"{location}: {error['msg']}")
        return None, problems
    return value, [f"{path}: unknown field" for path in _unknown_fields(data, value, "")]


def event_kind(event: Any) -> str:
    """``type``, with the item type or the update type where the type alone is vague."""
    if not isinstance(event, dict):
        return "?"
    kind = str(event.get("type", "?"))
    if kind in ("thread.item.added", "thread.item.done", "thread.item.replaced"):
        item = event.get("item")
        return f"{kind}({item.get('type', '?') if isinstance(item, dict) else '?'})"
    if kind == "thread.item.updated":
        update = event.get("update")
        return f"{kind}({update.get('type', '?') if isinstance(update, dict) else '?'})"
    return kind


# The reference server ---------------------------------------------------------


class MemoryStore(Store[dict]):
    """The package's Store contract in memory: threads and their items in insertion order.

    Pages as the store of the package's own tests does: ``after`` is the last
    id of a page that has more after it, else None.
    """

    def __init__(self) -> None:
        self.threads: dict[str, ThreadMetadata] = {}
        self.items: dict[str, list[ThreadItem]] = {}
        self.attachments: dict[str, Any] = {}

    async def load_thread(self, thread_id: str, context: dict) -> ThreadMetadata:
        if thread_id not in self.threads:
            raise NotFoundError(f"thread {thread_id}")
        return self.threads[thread_id].model_copy(deep=True)

    async def save_thread(self, thread: ThreadMetadata, context: dict) -> None:
        self.threads[thread.id] = ThreadMetadata(**thread.model_dump(exclude={"items"}))
        self.items.setdefault(thread.id, [])

    @staticmethod
    def _page(rows: list, after: str | None, limit: int, order: str) -> Page:
        ordered = rows if order == "asc" else list(reversed(rows))
        start = 0
        if after is not None:
            ids = [row.id for row in ordered]
            if after not in ids:
                raise NotFoundError(f"after {after}")
            start = ids.index(after) + 1
        data = ordered[start : start + limit]
        has_more = start + limit < len(ordered)
        return Page(data=data, has_more=has_more, after=data[-1].id if has_more else None)

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: dict
    ) -> Page[ThreadItem]:
        await self.load_thread(thread_id, context)
        return self._page(self.items[thread_id], after, limit, order)

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: dict
    ) -> Page[ThreadMetadata]:
        return self._page(list(self.threads.values()), after, limit, order)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        self.items[thread_id].append(item)

    async def save_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        rows = self.items[thread_id]
        for index, row in enumerate(rows):
            if row.id == item.id:
                rows[index] = item
                return
        rows.append(item)

    async def load_item(self, thread_id: str, item_id: str, context: dict) -> ThreadItem:
        for row in self.items.get(thread_id, []):
            if row.id == item_id:
                return row
        raise NotFoundError(f"item {item_id}")

    async def delete_thread(self, thread_id: str, context: dict) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: dict) -> None:
        self.items[thread_id] = [row for row in self.items[thread_id] if row.id != item_id]

    async def save_attachment(self, attachment: Any, context: dict) -> None:
        self.attachments[attachment.id] = attachment

    async def load_attachment(self, attachment_id: str, context: dict) -> Any:
        return self.attachments[attachment_id]

    async def delete_attachment(self, attachment_id: str, context: dict) -> None:
        self.attachments.pop(attachment_id, None)


@dataclass
class Reply:
    """What the scripted model says next: these text deltas, then it ends (or fails)."""

    deltas: list[str]
    fail: bool = False


class ScriptFailure(Exception):
    """The scripted model failing mid-reply, as a provider error would."""


class ScriptedModel(Model):
    """An agents-SDK model that streams scripted text as the Responses API does; no network."""

    # How long a failing reply waits for the client to have its deltas (loop turns).
    DELIVERY_TURNS = 10_000

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.count = 0
        # The number of text deltas the client has received (set by the server).
        self.delivered: Callable[[], int] = lambda: 0

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        raise NotImplementedError("the reference server only streams")

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        reply = self.replies.pop(0) if self.replies else Reply(deltas=["Hello", " there."])
        self.count += 1
        item_id = f"msg_ref_{self.count}"
        text = "".join(reply.deltas)
        sequence = iter(range(1_000_000))

        def part(content: str) -> ResponseOutputText:
            return ResponseOutputText(type="output_text", text=content, annotations=[], logprobs=[])

        def message(content: list, status: str) -> ResponseOutputMessage:
            return ResponseOutputMessage(
                id=item_id, type="message", role="assistant", status=status, content=content
            )

        def response(output: list, status: str) -> Response:
            return Response(
                id=f"resp_ref_{self.count}",
                object="response",
                created_at=0,
                model="scripted",
                status=status,
                output=output,
                tool_choice="auto",
                tools=[],
                parallel_tool_calls=False,
            )

        common = {"item_id": item_id, "output_index": 0, "content_index": 0}
        yield ResponseCreatedEvent(
            type="response.created",
            response=response([], "in_progress"),
            sequence_number=next(sequence),
        )
        yield ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            item=message([], "in_progress"),
            output_index=0,
            sequence_number=next(sequence),
        )
        yield ResponseContentPartAddedEvent(
            type="response.content_part.added",
            part=part(""),
            sequence_number=next(sequence),
            **common,
        )
        for delta in reply.deltas:
            # A real await between deltas, where a cancelled stream stops.
            await asyncio.sleep(0)
            yield ResponseTextDeltaEvent(
                type="response.output_text.delta",
                delta=delta,
                logprobs=[],
                sequence_number=next(sequence),
                **common,
            )
        if reply.fail:
            # The agents SDK ends a failed run's stream without the events still
            # queued; a provider fails later than the client reads, so fail only
            # once the client has every delta, as a real provider's failure would.
            for _ in range(self.DELIVERY_TURNS):
                if self.delivered() >= len(reply.deltas):
                    break
                await asyncio.sleep(0)
            raise ScriptFailure("scripted failure")
        yield ResponseTextDoneEvent(
            type="response.output_text.done",
            text=text,
            logprobs=[],
            sequence_number=next(sequence),
            **common,
        )
        yield ResponseContentPartDoneEvent(
            type="response.content_part.done",
            part=part(text),
            sequence_number=next(sequence),
            **common,
        )
        done = message([part(text)], "completed")
        yield ResponseOutputItemDoneEvent(
            type="response.output_item.done",
            item=done,
            output_index=0,
            sequence_number=next(sequence),
        )
        completed = response([done], "completed")
        yield ResponseCompletedEvent(
            type="response.completed", response=completed, sequence_number=next(sequence)
        )


def title_from(message: UserMessageItem) -> str:
    text = " ".join(part.text for part in message.content).strip()
    return text[:60] or "New chat"


class ReferenceServer(ChatKitServer[dict]):
    """The package's server, replying via its agents helper; names a thread on its first turn."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.model = ScriptedModel()
        self.deltas_delivered = 0
        self.model.delivered = lambda: self.deltas_delivered
        self.agent = Agent(name="reference", instructions="Answer.", model=self.model)
        self.model_settings = ModelSettings()

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: dict
    ) -> AsyncIterator[ThreadStreamEvent]:
        agent_context = AgentContext(thread=thread, store=self.store, request_context=context)
        agent_input = await simple_to_agent_input(input_user_message) if input_user_message else []
        result = Runner.run_streamed(self.agent, agent_input, context=agent_context)
        async for event in stream_agent_response(agent_context, result):
            yield event
        # ChatKitServer sends any change to the thread as thread.updated after the
        # event during which it was made; named after the reply, as CHATKIT.md has
        # ours do, it is the turn's last event.
        if thread.title is None and input_user_message is not None:
            thread.title = title_from(input_user_message)

    async def run(self, request: Any, *, stop_after: int | None = None) -> tuple[str, list[Any]]:
        """One request: ("json", [body]) or ("stream", [events]); a stream cancelled after
        ``stop_after`` events when given, as a client going away cancels it."""
        result = await self.process(json.dumps(request).encode(), {})
        if not isinstance(result, StreamingResult):
            return "json", [json.loads(result.json)]
        events: list[Any] = []
        self.deltas_delivered = 0

        async def consume() -> None:
            async for chunk in result:
                for event in frame_json(chunk):
                    events.append(event)
                    if event_kind(event) == TEXT_DELTA:
                        self.deltas_delivered += 1
                if stop_after is not None and len(events) >= stop_after:
                    asyncio.current_task().cancel()

        task = asyncio.ensure_future(consume())
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return "stream", events


def frame_json(chunk: bytes) -> list[Any]:
    frames, _ = parse_sse(chunk.decode(), dropped=False)
    return [json.loads(frame.data) for frame in frames]


# Checking -------------------------------------------------------------------


@dataclass
class Checker:
    violations: list[Violation] = field(default_factory=list)
    reference: ReferenceServer = field(default_factory=ReferenceServer)
    # Our ids -> the reference server's, learned from aligned answers.
    ids: dict[str, str] = field(default_factory=dict)
    accepted_used: set[Accepted] = field(default_factory=set)
    # Off for transcripts that are not one session from its start.
    replay: bool = True

    def fail(self, exchange: Exchange, rule: str, detail: str) -> None:
        self.violations.append(Violation(exchange.where, exchange.type, rule, detail))

    async def check(self, exchanges: list[Exchange]) -> None:
        for exchange in exchanges:
            if not exchange.ok:
                self.check_error(exchange)
                continue
            request, problems = validate("request", exchange.request)
            for problem in problems:
                self.fail(exchange, "request", f"answered {exchange.status}, but {problem}")
            if request is None:
                continue
            if exchange.status != 200:
                self.fail(exchange, "status", f"{exchange.status}, ChatKit answers 200")
            # Replayed even when a body breaks the schema, so that what follows
            # still finds its thread on the reference server.
            if is_streaming_req(request):
                events = self.check_stream(exchange)
                if events is not None and self.replay:
                    await self.replay_stream(exchange, events)
            else:
                checked = self.check_json(exchange)
                if checked is not None and self.replay:
                    await self.replay_json(exchange, *checked)

    def check_error(self, exchange: Exchange) -> None:
        if exchange.status >= 500 and exchange.status != 503:
            self.fail(exchange, "status", f"{exchange.status}: an expected condition is a 4xx")
        elif exchange.status < 400:
            self.fail(exchange, "status", f"{exchange.status}: neither a success nor an error")
        try:
            body = json.loads(exchange.body)
        except ValueError:
            self.fail(exchange, "envelope", "the error body is not JSON")
            return
        error = body.get("error") if isinstance(body, dict) else None
        if not (
            isinstance(body, dict) and body.get("success") is False and isinstance(error, dict)
        ):
            self.fail(exchange, "envelope", f"not the error envelope: {exchange.body[:200]}")
            return
        for name, kind in ENVELOPE_ERROR_FIELDS.items():
            if not isinstance(error.get(name), kind):
                self.fail(exchange, "envelope", f"error.{name} missing or not a {kind.__name__}")
        if "details" not in error or not isinstance(error["details"], dict | None):
            self.fail(exchange, "envelope", "error.details missing or not an object or null")

    def check_json(self, exchange: Exchange) -> tuple[Any, bool] | None:
        """The decoded body and whether it is valid, or None when it cannot be replayed."""
        if not exchange.content_type.startswith("application/json"):
            self.fail(exchange, "content-type", f"{exchange.content_type!r}, not application/json")
        try:
            body = json.loads(exchange.body)
        except ValueError:
            self.fail(exchange, "schema", f"the body is not JSON: {exchange.body[:200]!r}")
            return None
        if exchange.type not in RESPONSE_TYPES:
            self.fail(exchange, "schema", "no ChatKit response type is known for this request")
            return None
        schema, name = RESPONSE_TYPES[exchange.type]
        if schema is EMPTY_OBJECT:
            if body != {}:
                self.fail(exchange, "schema", f"the answer is {{}}, not {exchange.body[:200]}")
            return body, body == {}
        value, problems = validate(exchange.type, body)
        for problem in problems:
            self.fail(exchange, "schema", f"{name}: {problem}")
        if value is None:
            return body, False
        threads = value.data if exchange.type == "threads.list" else [value]
        if exchange.type in ("threads.list", "threads.update"):
            for thread in threads:
                if thread.items.data:
                    self.fail(exchange, "schema", f"thread {thread.id}: items are sent empty here")
        return body, not problems

    def check_stream(self, exchange: Exchange) -> list[Any] | None:
        if not exchange.content_type.startswith("text/event-stream"):
            self.fail(exchange, "content-type", f"{exchange.content_type!r}, not text/event-stream")
            return None
        frames, problems = parse_sse(exchange.body, dropped=exchange.dropped)
        for problem in problems:
            self.fail(exchange, "stream-format", problem)
        events: list[Any] = []
        valid = True
        for index, frame in enumerate(frames):
            try:
                event = json.loads(frame.data)
            except ValueError:
                self.fail(exchange, "stream-format", f"event {index}: data is not JSON")
                return None
            _, problems = validate("event", event)
            for problem in problems:
                self.fail(exchange, "schema", f"event {index} ({event_kind(event)}): {problem}")
            valid = valid and not problems
            events.append(event)
        # The invariants read fields that only a valid event is sure to have.
        if valid:
            self.check_stream_invariants(exchange, events)
        return events

    def check_stream_invariants(self, exchange: Exchange, events: list[Any]) -> None:
        thread_id = (exchange.request.get("params") or {}).get("thread_id")
        in_flight: dict[str, str] = {}
        for index, event in enumerate(events):
            kind = event["type"]
            if kind == "thread.created":
                thread_id = event["thread"]["id"]
            item = event.get("item")
            if item is not None and thread_id is not None and item["thread_id"] != thread_id:
                self.fail(
                    exchange,
                    "invariant",
                    f"event {index} ({event_kind(event)}): thread_id {item['thread_id']}"
                    f" is not the thread's ({thread_id})",
                )
            if kind == "thread.item.added":
                in_flight[item["id"]] = "".join(
                    part.get("text", "") for part in item.get("content", [])
                )
            elif kind == "thread.item.updated":
                update = event["update"]
                if event["item_id"] not in in_flight:
                    self.fail(
                        exchange,
                        "invariant",
                        f"event {index}: updates item {event['item_id']}, which is not in flight",
                    )
                elif update["type"] == "assistant_message.content_part.text_delta":
                    in_flight[event["item_id"]] += update["delta"]
            elif kind == "thread.item.done" and item["id"] in in_flight:
                streamed = in_flight.pop(item["id"])
                final = "".join(part.get("text", "") for part in item.get("content", []))
                if item["type"] == "assistant_message" and streamed != final:
                    self.fail(
                        exchange,
                        "invariant",
                        f"event {index}: the deltas make {streamed!r}, the item says {final!r}",
                    )

    # Replay ------------------------------------------------------------------

    def translate(self, value: Any) -> Any:
        """The request with our ids replaced by the reference server's."""
        request = copy.deepcopy(value)
        params = request.get("params") or {}
        for name in ("thread_id", "item_id", "after"):
            if isinstance(params.get(name), str):
                params[name] = self.ids.get(params[name], params[name])
        if isinstance(params.get("item_ids"), list):
            params["item_ids"] = [self.ids.get(item, item) for item in params["item_ids"]]
        return request

    def learn(self, ours: Any, theirs: Any) -> None:
        """Pair up ids found at the same place in our answer and the reference's."""
        if isinstance(ours, dict) and isinstance(theirs, dict):
            for key in ours.keys() & theirs.keys():
                mine, other = ours[key], theirs[key]
                if key in ("id", "thread_id", "item_id", "after") and isinstance(mine, str):
                    if isinstance(other, str):
                        self.ids.setdefault(mine, other)
                else:
                    self.learn(mine, other)
        elif isinstance(ours, list) and isinstance(theirs, list):
            for mine, other in zip(ours, theirs, strict=False):
                self.learn(mine, other)

    async def reference_answer(
        self, exchange: Exchange, *, stop_after: int | None = None
    ) -> tuple[str, list[Any]] | None:
        try:
            return await self.reference.run(self.translate(exchange.request), stop_after=stop_after)
        except (NotFoundError, ValueError, KeyError) as exc:
            self.fail(
                exchange,
                "replay",
                f"the reference server refuses this request ({type(exc).__name__}: {exc});"
                " a transcript must record the session from its start",
            )
            return None

    def script_reply(self, events: list[Any], dropped: bool) -> None:
        """Make the reference model say what ours said, so both streams can line up."""
        deltas = [
            str(event["update"].get("delta", ""))
            for event in events
            if event_kind(event) == TEXT_DELTA
        ]
        failed = any(event.get("type") == "error" for event in events)
        if dropped:
            deltas.append(" (and more the client never saw)")
        self.reference.model.replies = [Reply(deltas=deltas, fail=failed and not dropped)]

    async def replay_stream(self, exchange: Exchange, events: list[Any]) -> None:
        self.script_reply(events, exchange.dropped)
        answer = await self.reference_answer(
            exchange, stop_after=len(events) + 1 if exchange.dropped else None
        )
        if answer is None:
            return
        _, reference_events = answer
        ours, theirs = self.comparable(
            exchange.type,
            [event_kind(event) for event in events],
            [event_kind(event) for event in reference_events],
        )
        if exchange.dropped:
            same = theirs[: len(ours)] == ours and len(ours) < len(theirs)
        else:
            same = ours == theirs
        if not same:
            what = "a prefix of " if exchange.dropped else ""
            self.fail(
                exchange,
                "sequence",
                f"the event kinds are not {what}the reference server's:\n"
                + side_by_side(ours, theirs),
            )
            return
        # Ids pair up over the part that lines up event for event.
        aligned = min(len(ours), len(theirs))
        if ours and ours[-1].startswith(ACCEPTED_MARK):
            aligned -= 1
        for mine, other in zip(events[:aligned], reference_events[:aligned], strict=True):
            self.learn(mine, other)

    def comparable(
        self, request_type: str, ours: list[str], theirs: list[str]
    ) -> tuple[list[str], list[str]]:
        """Both sequences, an accepted difference at their ends replaced by one same marker."""
        for accepted in ACCEPTED:
            if (
                accepted.ours
                and request_type in accepted.request_types
                and tuple(ours[-len(accepted.ours) :]) == accepted.ours
                and tuple(theirs[-len(accepted.reference) :]) == accepted.reference
            ):
                self.accepted_used.add(accepted)
                marker = f"{ACCEPTED_MARK}{accepted.what[:50]}..."
                return (
                    [*ours[: -len(accepted.ours)], marker],
                    [*theirs[: -len(accepted.reference)], marker],
                )
        return ours, theirs

    async def replay_json(self, exchange: Exchange, body: Any, valid: bool) -> None:
        answer = await self.reference_answer(exchange)
        if answer is None:
            return
        _, (reference_body,) = answer
        ours, theirs = shape(exchange.type, body), shape(exchange.type, reference_body)
        # An invalid body has been reported; its shape would only say so again.
        if valid and ours is not None and ours != theirs:
            self.fail(
                exchange,
                "shape",
                f"ours is {json.dumps(ours)}, the reference server's {json.dumps(theirs)}",
            )
            return
        self.learn(body, reference_body)


def shape(request_type: str, body: Any) -> Any:
    """What of a plain answer must match the reference server's (not ids, texts or times)."""

    def page(value: Any, describe: Callable[[Any], Any]) -> Any:
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            return "not a page"
        return {
            "data": [describe(item) for item in value["data"]],
            "has_more": value.get("has_more", False),
            "after": value.get("after") is not None,
        }

    def item_type(item: Any) -> Any:
        return item.get("type") if isinstance(item, dict) else "not an object"

    if not isinstance(body, dict):
        return "not an object"
    if request_type == "items.list":
        return page(body, item_type)
    if request_type == "threads.list":
        return page(body, lambda thread: "thread")
    if request_type in ("threads.get_by_id", "threads.update"):
        return {"items": page(body.get("items"), item_type)}
    # {} answers: the schema check has compared them already.
    return None


def side_by_side(ours: list[str], theirs: list[str]) -> str:
    width = max([len(kind) for kind in ours] + [len("ours")]) + 2
    lines = [f"{'ours':<{width}}reference"]
    matcher = difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        mark = " " if tag == "equal" else "!"
        for offset in range(max(a1 - a0, b1 - b0)):
            left = ours[a0 + offset] if a0 + offset < a1 else "-"
            right = theirs[b0 + offset] if b0 + offset < b1 else "-"
            lines.append(f"{left:<{width}}{right}  {mark}".rstrip())
    return "\n".join(lines)


# A session on the reference server ---------------------------------------------


def user_input(text: str) -> dict:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }


async def record_reference(path: Path) -> None:
    """Write a transcript of a whole session, every answer the reference server's own."""
    server = ReferenceServer()
    records: list[dict] = []

    async def send(request: dict, *, stop_after: int | None = None, reply: str = "") -> list:
        if reply:
            server.model.replies = [Reply(deltas=[word + " " for word in reply.split()])]
        kind, answer = await server.run(request, stop_after=stop_after)
        if kind == "json":
            body, content_type = json.dumps(answer[0]), "application/json"
        else:
            body, content_type = sse_text(answer), "text/event-stream"
        records.append(
            {
                "request": request,
                "status": 200,
                "content_type": content_type,
                "body": body,
                "dropped": stop_after is not None,
            }
        )
        return answer

    created = await send(
        {"type": "threads.create", "params": {"input": user_input("hello there")}},
        reply="Hello! How can I help?",
    )
    thread_id = created[0]["thread"]["id"]
    await send({"type": "threads.list", "params": {"limit": 10}})
    await send({"type": "threads.get_by_id", "params": {"thread_id": thread_id}})
    added = await send(
        {
            "type": "threads.add_user_message",
            "params": {"thread_id": thread_id, "input": user_input("tell me more")},
        },
        reply="There is more to tell.",
    )
    second_user = next(e["item"]["id"] for e in added if event_kind(e).endswith("(user_message)"))
    (first_page,) = await send(
        {"type": "items.list", "params": {"thread_id": thread_id, "limit": 2}}
    )
    await send(
        {
            "type": "items.list",
            "params": {"thread_id": thread_id, "limit": 2, "after": first_page["after"]},
        }
    )
    retried = await send(
        {
            "type": "threads.retry_after_item",
            "params": {"thread_id": thread_id, "item_id": second_user},
        },
        reply="Another take on it.",
    )
    assistant = next(
        e["item"]["id"] for e in retried if event_kind(e) == "thread.item.done(assistant_message)"
    )
    await send(
        {
            "type": "items.feedback",
            "params": {"thread_id": thread_id, "item_ids": [assistant], "kind": "positive"},
        }
    )
    await send({"type": "threads.update", "params": {"thread_id": thread_id, "title": "Renamed"}})
    stop_request = {
        "type": "threads.add_user_message",
        "params": {"thread_id": thread_id, "input": user_input("a long answer please")},
    }
    # Cut after the first text delta: user item, options, item added, part added, delta.
    await send(stop_request, stop_after=5, reply="This answer is long and it goes on")
    await send({"type": "items.list", "params": {"thread_id": thread_id}})
    await send({"type": "threads.delete", "params": {"thread_id": thread_id}})
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


# Entry point ------------------------------------------------------------------


def report(checker: Checker, exchanges: int) -> str:
    lines = [violation.render() for violation in checker.violations]
    for accepted in sorted(checker.accepted_used, key=lambda a: a.what):
        lines.append(f"accepted difference: {accepted.what}")
    verdict = "conforms" if not checker.violations else "DOES NOT CONFORM"
    lines.append(
        f"openai-chatkit {PACKAGE_VERSION}: {exchanges} exchanges, "
        f"{len(checker.violations)} violations: {verdict}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("transcripts", nargs="*", type=Path, help="JSON-lines transcripts")
    parser.add_argument(
        "--record-reference",
        type=Path,
        metavar="OUT",
        help="first write a transcript of a session on the reference server",
    )
    parser.add_argument(
        "--no-replay",
        action="store_true",
        help="transcripts that are not one session from its start: no replay on the reference",
    )
    args = parser.parse_args(argv)
    if args.record_reference:
        asyncio.run(record_reference(args.record_reference))
    elif not args.transcripts:
        parser.error("no transcript given")
    failed = False
    for path in args.transcripts:
        try:
            exchanges = load_transcript(path)
        except (OSError, TranscriptError) as exc:
            sys.stderr.write(f"check_chatkit: {exc}\n")
            return 2
        # Each transcript is its own session: a fresh reference server.
        checker = Checker(replay=not args.no_replay)
        asyncio.run(checker.check(exchanges))
        print(f"== {path}")
        print(report(checker, len(exchanges)))
        failed = failed or bool(checker.violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
