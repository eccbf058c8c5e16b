from django.apps import AppConfig


def purge_keys(*, hourly: bool, **kwargs) -> None:
    """Drop expired idempotency records, every worker maintenance round."""
    from .idempotency import purge_expired_keys

    purge_expired_keys()


class ChatkitConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chatkit"

    def ready(self) -> None:
        from conversations.tasks import maintenance

        maintenance.connect(purge_keys, dispatch_uid="chatkit.purge_keys")
