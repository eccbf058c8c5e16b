"""The Django admin, with failed sign-ins throttled like the API's token endpoint."""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache

from api_common import FailedLoginThrottle


class StaffAdminSite(admin.AdminSite):
    """The admin site: Django's, with its login form throttled.

    Staff accounts can do the most harm, so guessing their passwords must
    cost at least what it costs on ``POST auth/token``: failed sign-ins are
    counted per client address and per username (``FailedLoginThrottle``),
    and past the ``auth`` rate a sign-in gets 429 with ``Retry-After``
    before any password is checked.
    """

    @method_decorator(never_cache)
    @login_not_required
    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if request.method != "POST":
            return super().login(request, extra_context)
        throttle = FailedLoginThrottle(request, username=request.POST.get("username", ""))
        wait = throttle.retry_after()
        if wait is not None:
            return self.login_throttled(request, wait)
        response = super().login(request, extra_context)
        # Success redirects; a failure shows the form again with its errors.
        if not isinstance(response, HttpResponseRedirect):
            throttle.failed()
        return response

    def login_throttled(self, request: HttpRequest, wait: int) -> HttpResponse:
        context = {**self.each_context(request), "title": "Too many attempts", "wait": wait}
        request.current_app = self.name
        response = TemplateResponse(request, "admin/login_throttled.html", context, status=429)
        response["Retry-After"] = str(wait)
        return response


class StaffAdminConfig(AdminConfig):
    """``django.contrib.admin`` with ``StaffAdminSite`` as ``admin.site``."""

    default_site = "accounts.admin_site.StaffAdminSite"
