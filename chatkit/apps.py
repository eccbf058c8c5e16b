from django.apps import AppConfig


class ChatkitConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chatkit"
