from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


def purge_tokens_hourly(*, hourly: bool, **kwargs) -> None:
    """Drop expired refresh tokens in the worker's hourly maintenance round.

    Hourly, not every round: simplejwt's table has no index on their expiry,
    so each look reads all of it.
    """
    from .services import purge_expired_tokens

    if hourly:
        purge_expired_tokens()


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        from conversations.tasks import maintenance

        from . import checks, schema  # noqa: F401  (register checks and the schema extension)
        from .authentication import evict_user

        user_model = self.get_model("User")
        post_save.connect(evict_user, sender=user_model, dispatch_uid="accounts.evict_user.save")
        post_delete.connect(
            evict_user, sender=user_model, dispatch_uid="accounts.evict_user.delete"
        )
        maintenance.connect(purge_tokens_hourly, dispatch_uid="accounts.purge_tokens")
