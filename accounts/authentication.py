from django.core.exceptions import ValidationError
from rest_framework_simplejwt import authentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed


class JWTAuthentication(authentication.JWTAuthentication):
    """simplejwt's bearer authentication; a ``sub`` that is no UUID is a 401, not a 500.

    Such a token can only come from whoever holds the signing key, but the
    lookup must still fail as an authentication error.
    """

    def get_user(self, validated_token):
        try:
            return super().get_user(validated_token)
        except (ValidationError, ValueError, TypeError):
            raise AuthenticationFailed("User not found.", code="user_not_found") from None
