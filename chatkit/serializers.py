from rest_framework import serializers

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
    Message,
    Run,
    RunIncompleteReason,
    Thread,
)

from .fields import MetadataField, StrictInputMixin


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


class MessageSerializer(serializers.ModelSerializer):
    """A message of a thread (read-only over the API).

    Rendered by ``message_document``, as stored events are; the fields below
    describe it for the schema.
    """

    thread_id = serializers.UUIDField(read_only=True)
    run_id = serializers.UUIDField(read_only=True, allow_null=True)
    superseded = serializers.BooleanField(read_only=True)

    class Meta:
        model = Message
        fields = (
            "id",
            "thread_id",
            "run_id",
            "role",
            "content",
            "status",
            "superseded",
            "created_at",
            "metadata",
        )
        read_only_fields = fields

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


class RunSerializer(serializers.ModelSerializer):
    """A run, rendered by ``run_document`` like the run in its events.

    Querysets must select ``thread``, ``input_message`` and ``output_message``.
    """

    thread_id = serializers.UUIDField(read_only=True)
    session_id = serializers.UUIDField(read_only=True)
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

    class Meta:
        model = Run
        fields = (
            "id",
            "thread_id",
            "session_id",
            "status",
            "input_message",
            "output_message",
            "error",
            "incomplete_details",
            "usage",
            "provider",
            "model",
            "metadata",
            "created_at",
            "started_at",
            "completed_at",
        )
        read_only_fields = fields

    def to_representation(self, instance: Run) -> dict:
        return run_document(instance)


class RunCreateSerializer(StrictInputMixin, serializers.Serializer):
    """The body of ``POST .../runs``."""

    input = serializers.CharField(max_length=RUN_INPUT_MAX_LENGTH, trim_whitespace=False)
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

    def validate_input(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Must contain text, not only whitespace.")
        return value
