"""The chat page: one HTML document; everything else it does goes through the API."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

# The page's Content-Security-Policy, set here and nowhere else: the admin and
# Swagger UI (/api/docs/) keep their own inline scripts and styles, so the
# policy is scoped to this page rather than sent by a middleware for every
# path. Only the page's own files run or style it; it connects only to its
# own origin; it cannot be framed, and its forms cannot navigate anywhere
# (they are handled by the script, so a password never lands in a URL).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


@require_safe
def chat_page(request: HttpRequest) -> HttpResponse:
    """The chat page for people: sign in, sessions, threads and a streamed conversation."""
    response = render(request, "web/index.html")
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    # The refresh token lives in this origin's storage: send no URL elsewhere.
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "no-cache"
    return response
