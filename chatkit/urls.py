from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter(trailing_slash=False)
router.register("sessions", views.SessionViewSet, basename="session")
router.register(r"sessions/(?P<session_id>[^/.]+)/threads", views.ThreadViewSet, basename="thread")

urlpatterns = router.urls
