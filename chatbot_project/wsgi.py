"""WSGI entry point, used by gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_project.settings")

django_application = get_wsgi_application()

# Imported once Django is set up: it uses the settings and the apps.
from chatkit.middleware import ChunkedRequestBody  # noqa: E402

application = ChunkedRequestBody(django_application)
