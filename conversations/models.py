import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone

from .errors import RUN_FAILURES
from .validators import validate_metadata

TITLE_MAX_LENGTH = 200
INSTRUCTIONS_MAX_LENGTH = 32000
RUN_INPUT_MAX_LENGTH = 32000
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


class MessageRole(models.TextChoices):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(models.TextChoices):
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.IN_PROGRESS)


class RunMode(models.TextChoices):
    """How a run was asked for: the caller waits, reads its stream, or leaves it to a worker."""

    WAIT = "wait"
    STREAM = "stream"
    BACKGROUND = "background"


class EventName(models.TextChoices):
    """The names of a run's events, as the contract spells them (SSE ``event:``)."""

    RUN_CREATED = "run.created"
    MESSAGE_CREATED = "message.created"
    RUN_IN_PROGRESS = "run.in_progress"
    MESSAGE_DELTA = "message.delta"
    MESSAGE_COMPLETED = "message.completed"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_EXPIRED = "run.expired"

    @classmethod
    def ending(cls, status: str) -> "EventName":
        """The event that ends a run in ``status`` (completed, failed, cancelled, expired)."""
        return cls(f"run.{status}")


# Why a run failed: the members of ErrorCode that a run stores.
RunErrorCode = models.TextChoices(
    "RunErrorCode", [(code.name, code.value) for code in RUN_FAILURES]
)


class RunIncompleteReason(models.TextChoices):
    """Why a completed run's reply is incomplete: the provider stopped it early."""

    LENGTH = "length"
    CONTENT_FILTER = "content_filter"


class FeedbackKind(models.TextChoices):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class MessageQuerySet(models.QuerySet):
    def with_feedback_of(self, user) -> "MessageQuerySet":
        """Each message's ``feedback``: the kind ``user`` gave it, or None (in the same query)."""
        return self.annotate(feedback=feedback_of(user, "pk"))


class Message(models.Model):
    """One message of a thread. Rows, never a JSON list on the parent."""

    Role = MessageRole
    Status = MessageStatus

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    thread = models.ForeignKey(
        Thread,
        on_delete=models.CASCADE,
        related_name="messages",
        db_index=False,  # covered by message_thread_created_idx
    )
    # DO_NOTHING keeps thread deletion a single DELETE per table; the foreign
    # keys are deferred, so runs and messages go in the same transaction.
    run = models.ForeignKey(
        "Run", on_delete=models.DO_NOTHING, null=True, blank=True, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()
    # Set by a retry of an earlier user message: the run that replaced this
    # one. Kept, but out of the default lists and of the provider's context.
    # No index: nothing looks messages up by it, and runs are only deleted
    # with their thread.
    superseded_by = models.ForeignKey(
        "Run",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETED)
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ("created_at", "id")
        indexes = [
            # Keyset paging and the provider context: the newest N of a thread.
            models.Index(fields=("thread", "created_at", "id"), name="message_thread_created_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(role__in=MessageRole.values), name="message_role_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=MessageStatus.values), name="message_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:50]}"


class RunQuerySet(models.QuerySet):
    def with_feedback_of(self, user) -> "RunQuerySet":
        """Each run's ``output_feedback``: the kind ``user`` gave its reply, or None."""
        return self.annotate(output_feedback=feedback_of(user, "output_message_id"))


class Run(models.Model):
    """One user message turned into one assistant reply."""

    Status = RunStatus
    ErrorCode = RunErrorCode
    IncompleteReason = RunIncompleteReason
    ACTIVE_STATUSES = ACTIVE_RUN_STATUSES

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    thread = models.ForeignKey(
        Thread,
        on_delete=models.CASCADE,
        related_name="runs",
        db_index=False,  # covered by run_thread_created_idx
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    input_message = models.ForeignKey(
        Message, on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+"
    )
    output_message = models.ForeignKey(
        Message, on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+"
    )
    instructions = models.TextField(
        blank=True, default="", help_text="Replaces the session's instructions for this run."
    )
    error_code = models.CharField(max_length=32, choices=ErrorCode.choices, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    # Set when the run completed but the provider cut its reply short. The
    # database default lets processes that do not know the column yet (a
    # rolling deploy) go on inserting runs.
    incomplete_reason = models.CharField(
        max_length=16, choices=IncompleteReason.choices, blank=True, default="", db_default=""
    )
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    provider = models.CharField(max_length=64)
    model = models.CharField(max_length=200, blank=True)
    # Stored so that whoever ends the run (its executor, a cancel, the
    # reaper, in any process) can say how it ran, in the metrics and the
    # admin. Blank for runs from before the column; the database default
    # lets processes that do not know it yet go on inserting runs.
    mode = models.CharField(
        max_length=16, choices=RunMode.choices, blank=True, default="", db_default=""
    )
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # The lease: whoever carries out the run renews it as it makes progress;
    # an active run whose heartbeat is older than RUN_TIMEOUT_SECONDS is dead.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The id the assistant message will have; streamed deltas name it before
    # the message row exists.
    reply_message_id = models.UUIDField(default=uuid.uuid4, editable=False)
    # Sequence number of the run's last stored event; writers hold the row lock.
    last_event_seq = models.PositiveIntegerField(default=0)
    # Set by a retry of its input (or an earlier) user message: the run that
    # replaced this one. Kept, but out of the default runs list.
    superseded_by = models.ForeignKey(
        "self",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(fields=("thread", "created_at", "id"), name="run_thread_created_idx"),
            models.Index(
                fields=("heartbeat_at",),
                condition=models.Q(status__in=ACTIVE_RUN_STATUSES),
                name="run_active_heartbeat_idx",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=("thread",),
                condition=models.Q(status__in=ACTIVE_RUN_STATUSES),
                name="run_one_active_per_thread",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=RunStatus.values), name="run_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(incomplete_reason__in=["", *RunIncompleteReason.values]),
                name="run_incomplete_reason_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(mode__in=["", *RunMode.values]), name="run_mode_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Run {self.id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()


class RunEvent(models.Model):
    """Stored server-sent events of a run, for replay and for followers.

    A ``message.delta`` row holds a batch of pieces: sequence numbers ``seq``
    to ``last_seq``, one per piece, so streamed text is written in batches,
    never one row per token.
    """

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events", db_index=False)
    seq = models.PositiveIntegerField()
    last_seq = models.PositiveIntegerField()
    event = models.CharField(max_length=32, choices=EventName)
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("run", "seq")
        constraints = [
            models.UniqueConstraint(fields=("run", "seq"), name="run_event_unique_seq"),
            models.CheckConstraint(
                condition=models.Q(last_seq__gte=models.F("seq")), name="run_event_seq_range"
            ),
            models.CheckConstraint(
                condition=models.Q(event__in=EventName.values), name="run_event_name_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} #{self.seq}"


class WorkerHeartbeat(models.Model):
    """When a background worker on a host last showed it was alive; the metrics read it.

    The database is the one place every web process, on every host, can
    read: a worker's own memory or a per-process cache is not.
    """

    host = models.CharField(primary_key=True, max_length=255)
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.host} at {self.seen_at:%Y-%m-%d %H:%M:%S}"


class MessageFeedback(models.Model):
    """A user's feedback on an assistant message: one row per message and user, the last kept."""

    Kind = FeedbackKind

    id = models.BigAutoField(primary_key=True)
    message = models.ForeignKey(
        Message,
        # DO_NOTHING keeps deleting a thread's messages a single DELETE: the
        # rows go with their thread (below) in the same transaction, and the
        # foreign key is deferred.
        on_delete=models.DO_NOTHING,
        related_name="feedback_given",
        db_index=False,  # covered by message_feedback_one_per_user
    )
    # The message's thread, so that deleting a thread (or its session) deletes
    # its feedback with one statement, as it does its messages.
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-updated_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=("message", "user"), name="message_feedback_one_per_user"
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=FeedbackKind.values), name="message_feedback_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} on {self.message_id}"


def feedback_of(user, message_field: str) -> models.Subquery:
    """The kind of feedback ``user`` gave the message the outer row names in ``message_field``."""
    given = MessageFeedback.objects.filter(message=models.OuterRef(message_field), user=user)
    return models.Subquery(given.values("kind")[:1])
