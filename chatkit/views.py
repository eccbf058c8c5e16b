import uuid

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.exceptions import NotFound

from conversations import services
from conversations.models import Conversation, Thread

from .pagination import KeysetPagination
from .serializers import SessionSerializer, ThreadSerializer

SESSION_ID_PARAMETER = OpenApiParameter(
    "session_id", str, OpenApiParameter.PATH, description="Session id (UUID)."
)
ID_PARAMETER = OpenApiParameter("id", str, OpenApiParameter.PATH, description="Id (UUID).")


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
            try:
                session_id = uuid.UUID(self.kwargs["session_id"])
            except ValueError:
                raise NotFound() from None
            self._session = get_object_or_404(
                Conversation.objects.owned_by(self.request.user), pk=session_id
            )
        return self._session


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
