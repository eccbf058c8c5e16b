from django.apps import AppConfig
from django.db.models.signals import post_migrate


def create_task_queue(**kwargs) -> None:
    """Make the task queue's tables (idempotent) whenever the database is migrated."""
    from .tasks import prepare_task_queue

    prepare_task_queue()


class ConversationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "conversations"

    def ready(self) -> None:
        post_migrate.connect(
            create_task_queue, sender=self, dispatch_uid="conversations.create_task_queue"
        )
