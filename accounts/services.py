"""Account writes."""

from django.db import IntegrityError, transaction
from rest_framework import serializers

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
