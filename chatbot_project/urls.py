from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.negotiation import DefaultContentNegotiation

from chatkit import exceptions, health

urlpatterns = [
    path("", include("web.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/auth/", include("accounts.urls")),
    path("api/v1/chatkit/", include("chatkit.urls")),
    # JSON or YAML by Accept or ?format=, unlike the API's JSON-only negotiation.
    path(
        "api/schema/",
        SpectacularAPIView.as_view(content_negotiation_class=DefaultContentNegotiation),
        name="schema",
    ),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    re_path(r"^api/", exceptions.api_not_found),
]

handler400 = "chatkit.exceptions.bad_request"
handler403 = "chatkit.exceptions.permission_denied"
handler404 = "chatkit.exceptions.page_not_found"
handler500 = "chatkit.exceptions.server_error"
