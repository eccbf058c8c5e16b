from rest_framework import serializers

from conversations.models import INSTRUCTIONS_MAX_LENGTH, TITLE_MAX_LENGTH, Conversation, Thread

from .fields import MetadataField, StrictInputMixin


class SessionSerializer(StrictInputMixin, serializers.ModelSerializer):
    """A chat session (the ``Conversation`` model)."""

    user_id = serializers.UUIDField(read_only=True)
    title = serializers.CharField(max_length=TITLE_MAX_LENGTH, required=False)
    instructions = serializers.CharField(
        max_length=INSTRUCTIONS_MAX_LENGTH,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
    )
    metadata = MetadataField()

    class Meta:
        model = Conversation
        fields = ("id", "user_id", "title", "metadata", "instructions", "created_at", "updated_at")
        read_only_fields = ("id", "user_id", "created_at", "updated_at")


class ThreadSerializer(StrictInputMixin, serializers.ModelSerializer):
    """A thread inside a session."""

    session_id = serializers.UUIDField(source="conversation_id", read_only=True)
    title = serializers.CharField(max_length=TITLE_MAX_LENGTH, required=False)
    metadata = MetadataField()

    class Meta:
        model = Thread
        fields = ("id", "session_id", "title", "metadata", "created_at", "updated_at")
        read_only_fields = ("id", "session_id", "created_at", "updated_at")
