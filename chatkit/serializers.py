from rest_framework import serializers

from api_common import StrictInputMixin
from conversations.documents import (
    message_document,
    run_document,
    session_document,
    thread_document,
)
from conversations.models import (
    INSTRUCTIONS_MAX_LENGTH,
    RUN_INPUT_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    Conversation,
    FeedbackKind,
    Message,
    MessageRole,
    MessageStatus,
    Run,
    RunIncompleteReason,
    RunStatus,
    Thread,
)

from .fields import MetadataField, NonBlankTextField


class SessionSerializer(StrictInputMixin, serializers.Serializer):
    """A chat session (the ``Conversation`` model).

    A plain Serializer with explicit fields: ModelSerializer would rebuild its
    fields from the model on every request. Rendered by ``session_document``.
    """

    id = serializers.UUIDField(read_only=True)
    user_id = serializers.UUIDField(read_only=True)
    title = serializers.CharField(max_length=TITLE_MAX_LENGTH, required=False)
    metadata = MetadataField()
    instructions = serializers.CharField(
        max_length=INSTRUCTIONS_MAX_LENGTH,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
    )
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def to_representation(self, instance: Conversation) -> dict:
        return session_document(instance)


class ThreadSerializer(StrictInputMixin, serializers.Serializer):
    """A thread inside a session, rendered by ``thread_document``."""

    id = serializers.UUIDField(read_only=True)
    session_id = serializers.UUIDField(read_only=True)
    title = serializers.CharField(max_length=TITLE_MAX_LENGTH, required=False)
    metadata = MetadataField()
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def to_representation(self, instance: Thread) -> dict:
        return thread_document(instance)


class MessageSerializer(serializers.Serializer):
    """A message of a thread (read-only over the API).

    Rendered by ``message_document``, as stored events are; the fields below
    describe it for the schema (tests/test_documents.py keeps them equal).
    """

    id = serializers.UUIDField(read_only=True)
    thread_id = serializers.UUIDField(read_only=True)
    run_id = serializers.UUIDField(read_only=True, allow_null=True)
    role = serializers.ChoiceField(choices=MessageRole.choices, read_only=True)
    content = serializers.CharField(read_only=True)
    status = serializers.ChoiceField(choices=MessageStatus.choices, read_only=True)
    feedback = serializers.ChoiceField(
        choices=FeedbackKind.choices,
        read_only=True,
        allow_null=True,
        help_text="The feedback you gave this reply (ChatKit's items.feedback), or null.",
    )
    superseded = serializers.BooleanField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    metadata = MetadataField(read_only=True)

    def to_representation(self, instance: Message) -> dict:
        return message_document(instance)


class RunErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class IncompleteDetailsSerializer(serializers.Serializer):
    """Why a completed run's reply is incomplete: the provider stopped it early."""

    reason = serializers.ChoiceField(choices=RunIncompleteReason.choices)


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class RunSerializer(serializers.Serializer):
    """A run, rendered by ``run_document`` like the run in its events.

    The fields describe it for the schema (tests/test_documents.py keeps them
    equal). Querysets must select ``thread``, ``input_message`` and ``output_message``.
    """

    id = serializers.UUIDField(read_only=True)
    thread_id = serializers.UUIDField(read_only=True)
    session_id = serializers.UUIDField(read_only=True)
    status = serializers.ChoiceField(choices=RunStatus.choices, read_only=True)
    input_message = MessageSerializer(read_only=True)
    output_message = MessageSerializer(read_only=True, allow_null=True)
    error = RunErrorSerializer(read_only=True, allow_null=True)
    incomplete_details = IncompleteDetailsSerializer(
        read_only=True,
        allow_null=True,
        help_text=(
            "Set when the run completed but the provider cut the reply short "
            "(its token limit, or its content filter); null otherwise."
        ),
    )
    usage = UsageSerializer(read_only=True, allow_null=True)
    provider = serializers.CharField(read_only=True)
    model = serializers.CharField(read_only=True)
    metadata = MetadataField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    started_at = serializers.DateTimeField(read_only=True, allow_null=True)
    completed_at = serializers.DateTimeField(read_only=True, allow_null=True)

    def to_representation(self, instance: Run) -> dict:
        return run_document(instance)


class RunCreateSerializer(StrictInputMixin, serializers.Serializer):
    """The body of ``POST .../runs``."""

    input = NonBlankTextField(
        max_length=RUN_INPUT_MAX_LENGTH,
        help_text="The user message: some text, not only whitespace.",
    )
    stream = serializers.BooleanField(required=False, default=False)
    background = serializers.BooleanField(required=False, default=False)
    instructions = serializers.CharField(
        max_length=INSTRUCTIONS_MAX_LENGTH,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="Replaces the session's instructions for this run; empty keeps them.",
    )
    metadata = MetadataField()
