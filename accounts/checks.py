"""Start-up checks: refresh rotation is only safe with the blacklist in place."""

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_token_blacklist(app_configs, **kwargs) -> list[Error]:
    errors = []
    if "rest_framework_simplejwt.token_blacklist" not in settings.INSTALLED_APPS:
        errors.append(
            Error(
                "rest_framework_simplejwt.token_blacklist is not installed",
                hint="Logout and refresh rotation need it to revoke refresh tokens.",
                id="accounts.E001",
            )
        )
    jwt = getattr(settings, "SIMPLE_JWT", {})
    if not (jwt.get("ROTATE_REFRESH_TOKENS") and jwt.get("BLACKLIST_AFTER_ROTATION")):
        errors.append(
            Error(
                "SIMPLE_JWT must rotate refresh tokens and blacklist the old ones",
                hint="Set ROTATE_REFRESH_TOKENS and BLACKLIST_AFTER_ROTATION to True.",
                id="accounts.E002",
            )
        )
    if jwt.get("USER_ID_CLAIM") != "sub" or jwt.get("USER_ID_FIELD") != "id":
        errors.append(
            Error(
                "SIMPLE_JWT must put the user's UUID in the 'sub' claim",
                id="accounts.E003",
            )
        )
    return errors
