from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from rest_framework import exceptions, serializers
from rest_framework_simplejwt import serializers as jwt_serializers
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import (
    BlacklistedToken,
    OutstandingToken,
)
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.utils import datetime_from_epoch

from api_common import StrictInputMixin

from .models import User


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ("id", "username", "email", "date_joined")
        read_only_fields = fields


class NewPasswordField(serializers.CharField):
    """A password being set: Django's password validators apply (see ``validate``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(write_only=True, max_length=128, trim_whitespace=False, **kwargs)


class RegisterSerializer(StrictInputMixin, serializers.ModelSerializer):
    password = NewPasswordField()
    email = serializers.EmailField(required=False, allow_blank=True, max_length=254)

    class Meta:
        model = User
        fields = ("id", "username", "password", "email", "date_joined")
        read_only_fields = ("id", "date_joined")

    def validate(self, attrs: dict) -> dict:
        candidate = User(username=attrs["username"], email=attrs.get("email", ""))
        try:
            password_validation.validate_password(attrs["password"], user=candidate)
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"password": list(exc.messages)}) from None
        return attrs


class TokenObtainSerializer(StrictInputMixin, jwt_serializers.TokenObtainPairSerializer):
    pass


def revoke_refresh_token(token: RefreshToken) -> None:
    """Blacklist a refresh token exactly once.

    simplejwt's own ``blacklist()`` uses get_or_create, so two concurrent
    refreshes of one token would both succeed; the unique constraint on the
    blacklist row makes the second one lose.
    """
    outstanding, _ = OutstandingToken.objects.get_or_create(
        jti=token[jwt_settings.JTI_CLAIM],
        defaults={
            "token": str(token),
            "expires_at": datetime_from_epoch(token["exp"]),
        },
    )
    try:
        with transaction.atomic():
            BlacklistedToken.objects.create(token=outstanding)
    except IntegrityError:
        raise exceptions.AuthenticationFailed("Token is blacklisted.") from None


class TokenRefreshSerializer(StrictInputMixin, serializers.Serializer):
    refresh = serializers.CharField(write_only=True)
    access = serializers.CharField(read_only=True)

    def validate(self, attrs: dict) -> dict:
        refresh = RefreshToken(attrs["refresh"])
        try:
            user = User.objects.filter(pk=refresh.payload.get(jwt_settings.USER_ID_CLAIM)).first()
        except (DjangoValidationError, ValueError, TypeError):
            user = None  # a sub that is no UUID names nobody
        if user is None or not jwt_settings.USER_AUTHENTICATION_RULE(user):
            raise exceptions.AuthenticationFailed("No active account found for the given token.")
        revoke_refresh_token(refresh)
        new_refresh = RefreshToken.for_user(user)
        return {"access": str(new_refresh.access_token), "refresh": str(new_refresh)}


class LogoutSerializer(StrictInputMixin, serializers.Serializer):
    refresh = serializers.CharField(write_only=True)
