"""Bare Django views for bench/load.py: the same insert and list, no DRF, no auth.

The URLconf of bench/settings.py (which bench/load.py selects through
DJANGO_SETTINGS_MODULE): the product's routes and ``/bench/sessions``. The
product never imports this module.
"""

import json
import uuid

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from chatbot_project import urls
from conversations.models import Conversation


def _document(row: Conversation) -> dict:
    return {
        "id": str(row.id),
        "user_id": str(row.user_id),
        "title": row.title,
        "metadata": row.metadata,
        "instructions": row.instructions,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


@csrf_exempt
def bare_sessions(request: HttpRequest) -> JsonResponse:
    user_id = uuid.UUID(request.headers["X-Bench-User"])
    if request.method == "POST":
        body = json.loads(request.body or b"{}")
        conversation = Conversation.objects.create(user_id=user_id, title=body.get("title", "x"))
        return JsonResponse({"data": _document(conversation)}, status=201)
    rows = Conversation.objects.filter(user_id=user_id).order_by("-created_at", "-id")[:20]
    return JsonResponse({"data": [_document(row) for row in rows]})


urlpatterns = [path("bench/sessions", bare_sessions), *urls.urlpatterns]
handler400 = urls.handler400
handler403 = urls.handler403
handler404 = urls.handler404
handler500 = urls.handler500
