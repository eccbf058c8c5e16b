"""Account writes."""

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import serializers
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

from .models import User


def user_create(*, username: str, password: str, email: str = "") -> User:
    """Create an account; a username taken meanwhile is a validation error, not a 500."""
    try:
        with transaction.atomic(durable=True):
            return User.objects.create_user(username=username, password=password, email=email)
    except IntegrityError:
        raise serializers.ValidationError(
            {"username": ["A user with that username already exists."]}
        ) from None


def purge_expired_tokens() -> int:
    """Forget refresh tokens past their expiry, with their blacklist rows; returns how many.

    What simplejwt's ``flushexpiredtokens`` does. An expired token is refused
    for its expiry alone, so its rows no longer protect anything.
    """
    _, deleted = OutstandingToken.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted.get(OutstandingToken._meta.label, 0)
