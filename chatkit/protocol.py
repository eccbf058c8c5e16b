"""The ChatKit protocol endpoint: ``POST /api/v1/chatkit/sessions/{session_id}/chatkit``.

One URL, many request types (CHATKIT.md). Over the same rows and the same
run machinery as the REST API: a thread here is a thread there, a turn is a
run (``run_launch``), and its stream is the run's stored events in
ChatKit's encoding (``protocol_stream``). Bodies are parsed by
``protocol_requests``, JSON made by ``protocol_documents``. Answers are the
bare protocol objects; errors before a stream starts are the API's envelope.
"""

import uuid
from dataclasses import replace
from typing import Any

import orjson
from django.http import Http404, HttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.views import APIView

from api_common import RunCreateThrottle
from conversations import runs, services
from conversations.db_router import replica_reads
from conversations.errors import ErrorCode
from conversations.models import (
    DEFAULT_THREAD_TITLE,
    Conversation,
    Message,
    MessageRole,
    Thread,
)

from . import protocol_documents as shapes
from . import stream_slots
from .pagination import NO_SUCH_ITEM, CursorNotInList, PageParams, keyset_page
from .protocol_requests import ChatKitRequest, OnDisconnect, parse_request
from .protocol_schema import REQUEST_REF, RESPONSE_REF, STREAM_REF
from .protocol_stream import TurnStream, TurnTranslator
from .streaming import event_stream_response
from .views import SESSION_ID_PARAMETER, OwnedSessionMixin, uuid_or_404


def _bare(body: dict[str, Any]) -> HttpResponse:
    """A protocol object as it is, without the API's envelope."""
    return HttpResponse(orjson.dumps(body), content_type="application/json")


def _page(queryset, params: PageParams, parent: tuple[str, Any]) -> tuple[list, bool]:
    try:
        return keyset_page(queryset, params, parent)
    except CursorNotInList as missing:
        raise ValidationError({f"params.{missing.name}": [NO_SUCH_ITEM]}) from None


def thread_items(thread: Thread, params: PageParams) -> tuple[list[Message], bool]:
    """A page of the thread's items: its messages (not superseded), and a reply being written.

    The reply of a run in progress has no row until the run ends; it is the
    newest item, with the text stored so far (``run_reply_so_far``), and
    its id is a valid ``after``.
    """
    # Read before the messages: a run that ends in between leaves its reply
    # among them, and then the plain page is the answer.
    writing = runs.run_reply_so_far(thread_id=thread.pk)
    messages = Message.objects.filter(thread=thread, superseded_by=None)
    parent = ("thread", thread.pk)
    if writing is None:
        return _page(messages, params, parent)
    lead: list[Message] = []
    if params.after is not None and _same_id(params.after, writing.pk):
        if not params.descending:
            return [], False
        params = replace(params, after=None)
    elif params.descending and params.after is None:
        lead = [writing]
    rows, has_more = _page(messages, replace(params, limit=params.limit - len(lead)), parent)
    if any(row.pk == writing.pk for row in rows):
        return _page(messages, params, parent)
    items = lead + rows
    if not params.descending and not has_more:
        if len(items) < params.limit:
            items.append(writing)
        else:
            has_more = True
    return items, has_more


def _same_id(raw: str, pk: uuid.UUID) -> bool:
    try:
        return uuid.UUID(raw) == pk
    except ValueError:
        return False


_OK = (
    "A turn (threads.create, threads.add_user_message, threads.retry_after_item): its "
    "ChatKit events as server-sent events. Any other request: the protocol object itself, "
    "without the API's envelope."
)


class ChatKitView(OwnedSessionMixin, APIView):
    """The ChatKit protocol over one of the user's sessions (CHATKIT.md)."""

    # Domain errors, for the OpenAPI document (chatkit.schema).
    raises = {"post": [ErrorCode.RUN_IN_PROGRESS]}

    @extend_schema(
        operation_id="chatkit_sessions_chatkit_create",
        parameters=[SESSION_ID_PARAMETER],
        request={"application/json": REQUEST_REF},
        responses={
            (200, "application/json"): OpenApiResponse(response=RESPONSE_REF, description=_OK),
            (200, "text/event-stream"): OpenApiResponse(response=STREAM_REF, description=_OK),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """Carry out one ChatKit request: a turn streams, the others answer JSON."""
        chatkit_request = parse_request(request.data)
        if chatkit_request.is_turn:
            self._check_runs_throttle()
        handlers = {
            "threads.create": self.create_thread,
            "threads.add_user_message": self.add_user_message,
            "threads.retry_after_item": self.retry_after_item,
            "threads.get_by_id": self.get_thread,
            "threads.list": self.list_threads,
            "items.list": self.list_items,
            "threads.update": self.update_thread,
            "threads.delete": self.delete_thread,
            "items.feedback": self.give_feedback,
        }
        return handlers[chatkit_request.type](chatkit_request)

    def _check_runs_throttle(self) -> None:
        # A turn starts a run: it counts against the runs throttle, as POST .../runs does.
        throttle = RunCreateThrottle()
        if not throttle.allow_request(self.request, self):
            self.throttled(self.request, throttle.wait())

    def _thread(self, raw_id: str) -> Thread:
        """The session's thread ``raw_id``, its session loaded: one query; else 404."""
        try:
            thread_id = uuid.UUID(raw_id)
        except ValueError:
            raise Http404 from None
        thread = services.owned_thread(
            user_id=self.request.user.pk,
            session_id=uuid_or_404(self.kwargs["session_id"]),
            thread_id=thread_id,
        )
        if thread is None:
            raise Http404
        return thread

    # Turns ----------------------------------------------------------------

    def _turn(
        self,
        chatkit_request: ChatKitRequest,
        *,
        thread: Thread | None = None,
        session: Conversation | None = None,
        retry_of: Message | None = None,
    ) -> HttpResponseBase:
        """Start a streamed run on ``thread`` (or a new thread of ``session``); its stream."""
        # Past the user's stream cap nothing is created.
        slot = stream_slots.acquire(user_id=self.request.user.pk)
        new_thread = thread is None
        try:
            if thread is None:
                thread = services.thread_create(conversation=session)
            # As they are before the run names the thread.
            created = shapes.thread_created(thread) if new_thread else None
            untitled = thread.title == DEFAULT_THREAD_TITLE
            launch = runs.run_launch(
                thread=thread,
                input=chatkit_request.params.get("input") or "",
                mode=runs.Mode.STREAM,
                retry_of=retry_of,
            )
        except BaseException:
            slot.release()
            if new_thread and thread is not None:
                # Refused (a limit reached): the thread made for it goes too.
                services.thread_delete(thread=thread)
            raise
        translator = TurnTranslator(
            thread=thread,
            reply_id=launch.run.reply_message_id,
            created=created,
            renamed=untitled and thread.title != DEFAULT_THREAD_TITLE,
        )
        body = TurnStream(
            launch=launch,
            translator=translator,
            cancel_on_disconnect=chatkit_request.on_disconnect is OnDisconnect.CANCEL,
        )
        return event_stream_response(slot.holding(body))

    def create_thread(self, chatkit_request: ChatKitRequest) -> HttpResponseBase:
        """``threads.create``: a new thread of this session, its first message and a run."""
        return self._turn(chatkit_request, session=self.get_session())

    def add_user_message(self, chatkit_request: ChatKitRequest) -> HttpResponseBase:
        """``threads.add_user_message``: a user message and a run on the thread."""
        thread = self._thread(chatkit_request.params["thread_id"])
        return self._turn(chatkit_request, thread=thread)

    def retry_after_item(self, chatkit_request: ChatKitRequest) -> HttpResponseBase:
        """``threads.retry_after_item``: reply anew to a user message, superseding the rest."""
        thread = self._thread(chatkit_request.params["thread_id"])
        try:
            item_id = uuid.UUID(chatkit_request.params["item_id"])
        except ValueError:
            raise Http404 from None
        message = Message.objects.filter(
            pk=item_id, thread=thread, role=MessageRole.USER, superseded_by=None
        ).first()
        if message is None:
            raise Http404
        message.thread = thread
        return self._turn(chatkit_request, thread=thread, retry_of=message)

    # JSON ------------------------------------------------------------------

    def get_thread(self, chatkit_request: ChatKitRequest) -> HttpResponse:
        """``threads.get_by_id``: the thread with its first page of items, oldest first."""
        thread = self._thread(chatkit_request.params["thread_id"])
        first_page = PageParams(limit=shapes.THREAD_ITEMS_PAGE_SIZE, descending=False)
        items, has_more = thread_items(thread, first_page)
        data = [shapes.message_item(message) for message in items]
        return _bare(shapes.thread(thread, shapes.page(data, has_more=has_more)))

    def list_threads(self, chatkit_request: ChatKitRequest) -> HttpResponse:
        """``threads.list``: a page of the session's threads, each without its items."""
        session = self.get_session()
        # A list, as over REST: from the replica when one is configured.
        with replica_reads():
            threads, has_more = _page(
                Thread.objects.filter(conversation=session),
                chatkit_request.params["page"],
                ("conversation", session.pk),
            )
        return _bare(shapes.page([shapes.thread(thread) for thread in threads], has_more=has_more))

    def list_items(self, chatkit_request: ChatKitRequest) -> HttpResponse:
        """``items.list``: a page of the thread's items."""
        thread = self._thread(chatkit_request.params["thread_id"])
        with replica_reads():
            items, has_more = thread_items(thread, chatkit_request.params["page"])
        data = [shapes.message_item(message) for message in items]
        return _bare(shapes.page(data, has_more=has_more))

    def update_thread(self, chatkit_request: ChatKitRequest) -> HttpResponse:
        """``threads.update``: rename the thread."""
        thread = self._thread(chatkit_request.params["thread_id"])
        thread = services.thread_update(thread=thread, title=chatkit_request.params["title"])
        return _bare(shapes.thread(thread))

    def delete_thread(self, chatkit_request: ChatKitRequest) -> HttpResponse:
        """``threads.delete``: the thread goes, with its messages and runs (as over REST)."""
        services.thread_delete(thread=self._thread(chatkit_request.params["thread_id"]))
        return _bare({})

    def give_feedback(self, chatkit_request: ChatKitRequest) -> HttpResponse:
        """``items.feedback``: the user's feedback on replies of the thread; the last one wins."""
        params = chatkit_request.params
        thread = self._thread(params["thread_id"])
        try:
            message_ids = [uuid.UUID(item_id) for item_id in params["item_ids"]]
        except ValueError:
            raise Http404 from None
        services.message_feedback_set(
            thread=thread, user=self.request.user, message_ids=message_ids, kind=params["kind"]
        )
        return _bare({})
