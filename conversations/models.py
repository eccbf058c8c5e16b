import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import LessThanOrEqual

from .validators import validate_metadata

TITLE_MAX_LENGTH = 200
INSTRUCTIONS_MAX_LENGTH = 32000
DEFAULT_CONVERSATION_TITLE = "New Chat"
DEFAULT_THREAD_TITLE = "New Thread"


class ConversationQuerySet(models.QuerySet):
    def owned_by(self, user) -> "ConversationQuerySet":
        return self.filter(user=user)


class Conversation(models.Model):
    """A chat session (the API's "session"), owned by one user."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="conversations",
        db_index=False,  # covered by conversation_user_created_idx
    )
    title = models.CharField(max_length=TITLE_MAX_LENGTH, default=DEFAULT_CONVERSATION_TITLE)
    instructions = models.TextField(blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            # Keyset paging of one user's sessions, newest first.
            models.Index(fields=("user", "created_at", "id"), name="conversation_user_created_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("title"), TITLE_MAX_LENGTH),
                name="conversation_title_max_length",
            ),
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("instructions"), INSTRUCTIONS_MAX_LENGTH),
                name="conversation_instructions_max_length",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class Thread(models.Model):
    """A line of conversation inside a session."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.CASCADE,
        related_name="threads",
        db_index=False,  # covered by thread_session_created_idx
    )
    title = models.CharField(max_length=TITLE_MAX_LENGTH, default=DEFAULT_THREAD_TITLE)
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(
                fields=("conversation", "created_at", "id"), name="thread_session_created_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=LessThanOrEqual(Length("title"), TITLE_MAX_LENGTH),
                name="thread_title_max_length",
            ),
        ]

    def __str__(self) -> str:
        return self.title
