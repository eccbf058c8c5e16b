import uuid

from django.http import Http404
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from api_common import RunCreateThrottle
from conversations import runs, services
from conversations.db_router import replica_reads
from conversations.errors import ErrorCode
from conversations.models import Conversation, EventName, Message, Run, Thread

from . import stream_slots
from .idempotency import IdempotentPostMixin
from .pagination import KeysetPagination
from .serializers import (
    MessageSerializer,
    RunCreateSerializer,
    RunSerializer,
    SessionSerializer,
    ThreadSerializer,
)
from .streaming import event_stream_response, follow_run_stream, live_run_stream

SESSION_ID_PARAMETER = OpenApiParameter(
    "session_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Session id (UUID)."
)
THREAD_ID_PARAMETER = OpenApiParameter(
    "thread_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Thread id (UUID)."
)
ID_PARAMETER = OpenApiParameter(
    "id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Id (UUID)."
)


def uuid_or_404(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound() from None


class ReplicaListMixin:
    """Lists read from the replica when one is configured (DATABASE_REPLICA_URL).

    The parent session or thread is resolved on the primary first, so a list
    right after creating its parent never 404s because of replica lag.
    """

    def list(self, request: Request, *args, **kwargs) -> Response:
        if hasattr(self, "get_thread"):
            self.get_thread()
        elif hasattr(self, "get_session"):
            self.get_session()
        with replica_reads():
            return super().list(request, *args, **kwargs)


class ChatkitViewSet(
    IdempotentPostMixin,
    ReplicaListMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Create, list, retrieve, patch and delete; no PUT."""

    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    pagination_class = KeysetPagination
    default_order = "desc"


class OwnedSessionMixin:
    """Resolve ``session_id`` from the URL among the user's own sessions.

    Another user's session, a missing one and a malformed id all give the
    same 404, so no route reveals that someone else's session exists.
    """

    def get_session(self) -> Conversation:
        if not hasattr(self, "_session"):
            self._session = get_object_or_404(
                Conversation.objects.owned_by(self.request.user),
                pk=uuid_or_404(self.kwargs["session_id"]),
            )
        return self._session


class OwnedThreadMixin(OwnedSessionMixin):
    """Resolve ``thread_id`` among the threads of the URL's own session."""

    def list_parent(self) -> tuple[str, object]:
        return "thread", self.get_thread().pk

    def get_thread(self) -> Thread:
        if not hasattr(self, "_thread"):
            # One query for both: the thread, joined to its session, which
            # must be the URL's and the user's.
            thread = services.owned_thread(
                user_id=self.request.user.pk,
                session_id=uuid_or_404(self.kwargs["session_id"]),
                thread_id=uuid_or_404(self.kwargs["thread_id"]),
            )
            if thread is None:
                raise Http404
            self._thread = thread
            self._session = thread.conversation
        return self._thread


@extend_schema_view(
    retrieve=extend_schema(parameters=[ID_PARAMETER]),
    partial_update=extend_schema(parameters=[ID_PARAMETER]),
    destroy=extend_schema(parameters=[ID_PARAMETER]),
)
class SessionViewSet(ChatkitViewSet):
    """The user's chat sessions."""

    serializer_class = SessionSerializer
    # Domain errors by action, for the OpenAPI document (chatkit.schema).
    raises = {"create": [ErrorCode.SESSION_LIMIT_REACHED]}

    def get_queryset(self):
        return Conversation.objects.owned_by(self.request.user)

    def list_parent(self) -> tuple[str, object]:
        return "user", self.request.user.pk

    def perform_create(self, serializer: SessionSerializer) -> None:
        serializer.instance = services.conversation_create(
            user=self.request.user, **serializer.validated_data
        )

    def perform_update(self, serializer: SessionSerializer) -> None:
        serializer.instance = services.conversation_update(
            conversation=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance: Conversation) -> None:
        services.conversation_delete(conversation=instance)


@extend_schema_view(
    list=extend_schema(parameters=[SESSION_ID_PARAMETER]),
    create=extend_schema(parameters=[SESSION_ID_PARAMETER]),
    retrieve=extend_schema(parameters=[SESSION_ID_PARAMETER, ID_PARAMETER]),
    partial_update=extend_schema(parameters=[SESSION_ID_PARAMETER, ID_PARAMETER]),
    destroy=extend_schema(parameters=[SESSION_ID_PARAMETER, ID_PARAMETER]),
)
class ThreadViewSet(OwnedSessionMixin, ChatkitViewSet):
    """Threads of one of the user's sessions."""

    serializer_class = ThreadSerializer

    def get_queryset(self):
        return Thread.objects.filter(conversation=self.get_session())

    def list_parent(self) -> tuple[str, object]:
        return "conversation", self.get_session().pk

    def perform_create(self, serializer: ThreadSerializer) -> None:
        serializer.instance = services.thread_create(
            conversation=self.get_session(), **serializer.validated_data
        )

    def perform_update(self, serializer: ThreadSerializer) -> None:
        serializer.instance = services.thread_update(
            thread=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance: Thread) -> None:
        services.thread_delete(thread=instance)


THREAD_PARAMETERS = [SESSION_ID_PARAMETER, THREAD_ID_PARAMETER]
RUN_ID_FILTER = OpenApiParameter(
    "run_id",
    OpenApiTypes.UUID,
    OpenApiParameter.QUERY,
    description="Only the messages of this run.",
)


INCLUDE_SUPERSEDED = OpenApiParameter(
    "include_superseded",
    OpenApiTypes.BOOL,
    OpenApiParameter.QUERY,
    description="Also list what a retry superseded (default false).",
)


def _include_superseded(request: Request) -> bool:
    raw = request.query_params.get("include_superseded", "false")
    if raw not in ("true", "false"):
        raise ValidationError({"include_superseded": ['Must be "true" or "false".']})
    return raw == "true"


@extend_schema_view(
    list=extend_schema(parameters=[*THREAD_PARAMETERS, RUN_ID_FILTER, INCLUDE_SUPERSEDED])
)
class MessageViewSet(
    OwnedThreadMixin, ReplicaListMixin, mixins.ListModelMixin, viewsets.GenericViewSet
):
    """Messages of a thread, oldest first."""

    serializer_class = MessageSerializer
    pagination_class = KeysetPagination
    default_order = "asc"

    def get_queryset(self):
        queryset = Message.objects.filter(thread=self.get_thread()).with_feedback_of(
            self.request.user
        )
        run_id = self.request.query_params.get("run_id")
        if run_id is not None:
            try:
                queryset = queryset.filter(run_id=uuid.UUID(run_id))
            except ValueError:
                raise ValidationError({"run_id": ["Must be a UUID."]}) from None
        if not _include_superseded(self.request):
            queryset = queryset.filter(superseded_by=None)
        return queryset


EVENT_ID_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 999_999_999}
LAST_EVENT_ID_PARAMETER = OpenApiParameter(
    "Last-Event-ID",
    EVENT_ID_SCHEMA,
    OpenApiParameter.HEADER,
    description="Resume after this event id (also accepted as ?last_event_id=).",
)
LAST_EVENT_ID_QUERY = OpenApiParameter(
    "last_event_id",
    EVENT_ID_SCHEMA,
    OpenApiParameter.QUERY,
    description="The Last-Event-ID header, for clients that cannot set it; the header wins.",
)
_ENDINGS = "|".join(sorted(runs.TERMINAL_EVENTS, key=EventName.values.index))
EVENT_STREAM_RESPONSE = OpenApiResponse(
    response=OpenApiTypes.STR,
    description=(
        f"text/event-stream: {EventName.RUN_CREATED}, {EventName.MESSAGE_CREATED}, "
        f"{EventName.RUN_IN_PROGRESS}, {EventName.MESSAGE_DELTA}..., "
        f"{EventName.MESSAGE_COMPLETED}, {_ENDINGS}, done."
    ),
)


def _wants_stream(request: Request, options: dict) -> bool:
    return options["stream"] or "text/event-stream" in request.headers.get("Accept", "")


@extend_schema_view(
    list=extend_schema(parameters=[*THREAD_PARAMETERS, INCLUDE_SUPERSEDED]),
    retrieve=extend_schema(parameters=[*THREAD_PARAMETERS, ID_PARAMETER]),
)
class RunViewSet(
    IdempotentPostMixin,
    OwnedThreadMixin,
    ReplicaListMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Runs of a thread: each turns one user message into an assistant reply."""

    serializer_class = RunSerializer
    pagination_class = KeysetPagination
    default_order = "desc"
    raises = {"create": [ErrorCode.RUN_IN_PROGRESS], "cancel": [ErrorCode.RUN_NOT_ACTIVE]}

    def get_queryset(self):
        runs_of_thread = (
            Run.objects.filter(thread=self.get_thread())
            .select_related("thread", "input_message", "output_message")
            .with_feedback_of(self.request.user)
        )
        if self.action == "list" and not _include_superseded(self.request):
            # A superseded run stays reachable by its id.
            runs_of_thread = runs_of_thread.filter(superseded_by=None)
        return runs_of_thread

    def get_throttles(self) -> list:
        throttles = super().get_throttles()
        if self.action == "create":
            throttles.append(RunCreateThrottle())
        return throttles

    @extend_schema(
        parameters=THREAD_PARAMETERS,
        request=RunCreateSerializer,
        responses={
            201: RunSerializer,
            202: RunSerializer,
            (200, "text/event-stream"): EVENT_STREAM_RESPONSE,
        },
    )
    def create(self, request: Request, *args, **kwargs) -> HttpResponseBase:
        body = RunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        options = body.validated_data
        start = {
            "thread": self.get_thread(),
            "input": options["input"],
            "instructions": options.get("instructions", ""),
            "metadata": options.get("metadata"),
        }
        if options["background"]:
            launch = runs.run_launch(**start, mode=runs.Mode.BACKGROUND)
            return Response(RunSerializer(launch.run).data, status=status.HTTP_202_ACCEPTED)
        if _wants_stream(request, options):
            # Past the user's stream cap nothing is created.
            slot = stream_slots.acquire(user_id=request.user.pk)
            try:
                launch = runs.run_launch(**start, mode=runs.Mode.STREAM)
            except BaseException:
                slot.release()
                raise
            # What an Idempotency-Key replay streams again.
            self.replays_stream_of(launch.run.pk)
            return event_stream_response(slot.holding(live_run_stream(launch=launch)))
        launch = runs.run_launch(**start, mode=runs.Mode.WAIT)
        *_, end = launch.events
        return Response(end.data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[*THREAD_PARAMETERS, ID_PARAMETER],
        request=None,
        responses=RunSerializer,
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, *args, **kwargs) -> Response:
        run = runs.run_cancel(run_id=self.get_object().pk)
        return Response(RunSerializer(run).data)

    @extend_schema(
        parameters=[*THREAD_PARAMETERS, ID_PARAMETER, LAST_EVENT_ID_PARAMETER, LAST_EVENT_ID_QUERY],
        responses={(200, "text/event-stream"): EVENT_STREAM_RESPONSE},
    )
    @action(detail=True, methods=["get"])
    def events(self, request: Request, *args, **kwargs) -> HttpResponseBase:
        run = self.get_object()
        after = 0
        # Each given form must be valid (a bad ?last_event_id= is a 400 even
        # beside a good header); the header, where EventSource puts it, wins.
        given = [
            *(("last_event_id", raw) for raw in request.query_params.getlist("last_event_id")),
            ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ]
        for name, raw in given:
            if raw is None:
                continue
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
                raise ValidationError({name: ["Must be a non-negative event id."]})
            after = int(raw)
        slot = stream_slots.acquire(user_id=request.user.pk)
        return event_stream_response(slot.holding(follow_run_stream(run=run, after=after)))
