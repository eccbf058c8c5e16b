from django.urls import re_path
from rest_framework.routers import SimpleRouter

from . import protocol, views

router = SimpleRouter(trailing_slash=False)
router.register("sessions", views.SessionViewSet, basename="session")
router.register(r"sessions/(?P<session_id>[^/.]+)/threads", views.ThreadViewSet, basename="thread")
THREAD = r"sessions/(?P<session_id>[^/.]+)/threads/(?P<thread_id>[^/.]+)"
router.register(rf"{THREAD}/messages", views.MessageViewSet, basename="message")
router.register(rf"{THREAD}/runs", views.RunViewSet, basename="run")

urlpatterns = [
    *router.urls,
    re_path(
        r"^sessions/(?P<session_id>[^/.]+)/chatkit$",
        protocol.ChatKitView.as_view(),
        name="session-chatkit",
    ),
]
