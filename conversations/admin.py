from django.contrib import admin

from .models import Conversation, Message, MessageFeedback, Run, Thread
from .runs import runs_expire_stale


class ThreadInline(admin.TabularInline):
    model = Thread
    fields = ("id", "title", "created_at", "updated_at")
    readonly_fields = ("id", "created_at", "updated_at")
    show_change_link = True
    extra = 0


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    """Sessions, searchable by title and owner, with their threads inline."""

    list_display = ("title", "user", "created_at", "updated_at")
    list_filter = ("created_at", "updated_at")
    search_fields = ("title", "user__username", "user__email", "=id")
    readonly_fields = ("id", "created_at", "updated_at")
    raw_id_fields = ("user",)
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    inlines = (ThreadInline,)


class MessageInline(admin.TabularInline):
    model = Message
    # Superseded messages (replaced by a retry) stay, marked with the run that replaced them.
    fields = ("created_at", "role", "status", "content", "feedback", "run", "superseded_by")
    readonly_fields = fields
    ordering = ("created_at", "id")
    can_delete = False
    extra = 0
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("feedback_given")

    @admin.display(description="feedback")
    def feedback(self, message: Message) -> str:
        return ", ".join(sorted(row.kind for row in message.feedback_given.all()))

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Thread)
class ThreadAdmin(admin.ModelAdmin):
    """Threads with the session they belong to."""

    list_display = ("title", "conversation", "created_at", "updated_at")
    list_filter = ("created_at",)
    search_fields = ("title", "conversation__title", "conversation__user__username", "=id")
    readonly_fields = ("id", "created_at", "updated_at")
    raw_id_fields = ("conversation",)
    list_select_related = ("conversation",)
    inlines = (MessageInline,)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    """Runs with their outcome; stale ones can be expired by hand."""

    list_display = ("id", "status", "provider", "model", "thread", "created_at", "duration")
    list_filter = (
        "status",
        "mode",
        "incomplete_reason",
        ("superseded_by", admin.EmptyFieldListFilter),
        "provider",
        "created_at",
    )
    search_fields = (
        "=id",
        "=thread__id",
        "model",
        "error_code",
        "thread__conversation__user__username",
    )
    # Runs change only through the lifecycle: every field is shown, none edited.
    readonly_fields = tuple(field.name for field in Run._meta.fields)
    list_select_related = ("thread",)
    actions = ("expire_stale",)

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="duration (s)")
    def duration(self, run: Run) -> str:
        seconds = run.duration_seconds
        return "" if seconds is None else f"{seconds:.2f}"

    @admin.action(description="Expire selected runs that stopped making progress")
    def expire_stale(self, request, queryset) -> None:
        expired = runs_expire_stale(run_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(
            request,
            f"Expired {expired} stale run(s); active runs with a fresh heartbeat were left alone.",
        )


@admin.register(MessageFeedback)
class MessageFeedbackAdmin(admin.ModelAdmin):
    """Users' feedback on replies (ChatKit's thumbs up and down), filterable by kind."""

    list_display = ("kind", "message", "thread", "user", "updated_at")
    list_filter = ("kind", "updated_at")
    search_fields = ("=message__id", "=thread__id", "user__username", "message__content")
    list_select_related = ("message", "thread", "user")
    # Given by users through the API: shown, never edited here.
    readonly_fields = ("message", "thread", "user", "kind", "created_at", "updated_at")

    def has_add_permission(self, request) -> bool:
        return False
