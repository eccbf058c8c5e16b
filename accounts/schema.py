"""OpenAPI extensions of the accounts app (imported at start-up)."""

from django.conf import settings
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent


class JWTScheme(SimpleJWTScheme):
    target_class = "accounts.authentication.JWTAuthentication"


def _min_password_length() -> int:
    for validator in settings.AUTH_PASSWORD_VALIDATORS:
        if validator["NAME"].endswith(".MinimumLengthValidator"):
            return validator.get("OPTIONS", {}).get("min_length", 8)
    return 1


class NewPasswordFieldExtension(OpenApiSerializerFieldExtension):
    """What Django's password validators accept, as far as a pattern can say."""

    target_class = "accounts.serializers.NewPasswordField"

    def map_serializer_field(self, auto_schema, direction):
        # A component: drf-spectacular would put minLength 1 over an inline one.
        schema = {
            "type": "string",
            "minLength": _min_password_length(),
            "maxLength": self.target.max_length,
            # Not only digits; neither a common password nor one too like the
            # username or email, which no pattern can say.
            "pattern": "^[^\\x00]*[^\\x000-9][^\\x00]*$",
            "description": (
                "Django's password validators apply: at least 8 characters, not only digits, "
                "not a common password, not too like the username or email."
            ),
        }
        component = ResolvedComponent(
            "NewPassword", ResolvedComponent.SCHEMA, schema=schema, object="NewPassword"
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref
