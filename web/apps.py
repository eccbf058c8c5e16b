from django.apps import AppConfig


class WebConfig(AppConfig):
    """The chat page at ``/``: a client of the HTTP API, with no models of its own."""

    name = "web"
    verbose_name = "Chat page"
