from django.contrib import admin

from .models import Conversation, Thread


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


@admin.register(Thread)
class ThreadAdmin(admin.ModelAdmin):
    """Threads with the session they belong to."""

    list_display = ("title", "conversation", "created_at", "updated_at")
    list_filter = ("created_at",)
    search_fields = ("title", "conversation__title", "conversation__user__username", "=id")
    readonly_fields = ("id", "created_at", "updated_at")
    raw_id_fields = ("conversation",)
    list_select_related = ("conversation",)
