from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        from . import checks, schema  # noqa: F401  (register checks and the schema extension)
        from .authentication import evict_user

        user_model = self.get_model("User")
        post_save.connect(evict_user, sender=user_model, dispatch_uid="accounts.evict_user.save")
        post_delete.connect(
            evict_user, sender=user_model, dispatch_uid="accounts.evict_user.delete"
        )
