from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


def create_task_queue(**kwargs) -> None:
    """Make the task queue's tables (idempotent) whenever the database is migrated."""
    from .tasks import prepare_task_queue

    prepare_task_queue()


class ChatkitConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chatkit"

    def ready(self) -> None:
        # post_migrate is only sent for apps with models; runs live in conversations.
        post_migrate.connect(
            create_task_queue,
            sender=apps.get_app_config("conversations"),
            dispatch_uid="chatkit.create_task_queue",
        )
