import uuid

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from conversations import runs, services
from conversations.models import Conversation, Message, Run, Thread

from .pagination import KeysetPagination
from .providers import get_provider
from .serializers import (
    MessageSerializer,
    RunCreateSerializer,
    RunSerializer,
    SessionSerializer,
    ThreadSerializer,
)

SESSION_ID_PARAMETER = OpenApiParameter(
    "session_id", str, OpenApiParameter.PATH, description="Session id (UUID)."
)
THREAD_ID_PARAMETER = OpenApiParameter(
    "thread_id", str, OpenApiParameter.PATH, description="Thread id (UUID)."
)
ID_PARAMETER = OpenApiParameter("id", str, OpenApiParameter.PATH, description="Id (UUID).")


def _uuid_or_404(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound() from None


class ChatkitViewSet(
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
                pk=_uuid_or_404(self.kwargs["session_id"]),
            )
        return self._session


class OwnedThreadMixin(OwnedSessionMixin):
    """Resolve ``thread_id`` among the threads of the URL's own session."""

    def get_thread(self) -> Thread:
        if not hasattr(self, "_thread"):
            session = self.get_session()
            self._thread = get_object_or_404(
                Thread.objects.filter(conversation=session),
                pk=_uuid_or_404(self.kwargs["thread_id"]),
            )
            self._thread.conversation = session
        return self._thread


@extend_schema_view(
    retrieve=extend_schema(parameters=[ID_PARAMETER]),
    partial_update=extend_schema(parameters=[ID_PARAMETER]),
    destroy=extend_schema(parameters=[ID_PARAMETER]),
)
class SessionViewSet(ChatkitViewSet):
    """The user's chat sessions."""

    serializer_class = SessionSerializer

    def get_queryset(self):
        return Conversation.objects.owned_by(self.request.user)

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
    "run_id", str, OpenApiParameter.QUERY, description="Only the messages of this run."
)


@extend_schema_view(list=extend_schema(parameters=[*THREAD_PARAMETERS, RUN_ID_FILTER]))
class MessageViewSet(OwnedThreadMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Messages of a thread, oldest first."""

    serializer_class = MessageSerializer
    pagination_class = KeysetPagination
    default_order = "asc"

    def get_queryset(self):
        queryset = Message.objects.filter(thread=self.get_thread())
        run_id = self.request.query_params.get("run_id")
        if run_id is not None:
            try:
                queryset = queryset.filter(run_id=uuid.UUID(run_id))
            except ValueError:
                raise ValidationError({"run_id": ["Must be a UUID."]}) from None
        return queryset


@extend_schema_view(
    list=extend_schema(parameters=THREAD_PARAMETERS),
    retrieve=extend_schema(parameters=[*THREAD_PARAMETERS, ID_PARAMETER]),
)
class RunViewSet(
    OwnedThreadMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Runs of a thread: each turns one user message into an assistant reply."""

    serializer_class = RunSerializer
    pagination_class = KeysetPagination
    default_order = "desc"

    def get_queryset(self):
        return Run.objects.filter(thread=self.get_thread()).select_related(
            "thread", "input_message", "output_message"
        )

    @extend_schema(
        parameters=THREAD_PARAMETERS,
        request=RunCreateSerializer,
        responses={201: RunSerializer},
    )
    def create(self, request: Request, *args, **kwargs) -> Response:
        body = RunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        options = body.validated_data
        if options["stream"] or options["background"]:
            raise ValidationError(
                {"stream" if options["stream"] else "background": ["Not available yet."]}
            )
        thread = self.get_thread()
        provider = get_provider()
        run = runs.run_start(
            thread=thread,
            input=options["input"],
            provider=provider.name,
            model=provider.model,
            instructions=options.get("instructions", ""),
            metadata=options.get("metadata"),
        )
        run = runs.run_execute(run=run, provider=provider)
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)
