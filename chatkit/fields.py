"""Strict request parsing: no type coercion, no unknown or read-only keys."""

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers
from rest_framework.settings import api_settings

from conversations.validators import has_forbidden_characters, validate_metadata


def _type_error(field: serializers.Field, value: Any) -> str | None:
    if isinstance(field, serializers.CharField):
        if not isinstance(value, str):
            return "Must be a string."
        if has_forbidden_characters(value):
            return "Must not contain NUL or surrogate characters."
    elif isinstance(field, serializers.BooleanField):
        if not isinstance(value, bool):
            return "Must be a boolean."
    elif isinstance(field, serializers.IntegerField) and (
        isinstance(value, bool) or not isinstance(value, int)
    ):
        return "Must be an integer."
    return None


class StrictInputMixin:
    """Reject what DRF would otherwise coerce or silently drop.

    A number sent for a string field, ``"true"`` for a boolean, or a field the
    client may not set (``id``, ``user_id``, timestamps, an unknown name) is a
    400 naming that field, so nothing half-understood is ever stored.
    """

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise serializers.ValidationError(
                {api_settings.NON_FIELD_ERRORS_KEY: ["Expected a JSON object."]}
            )
        errors: dict[str, list[str]] = {}
        for name, value in data.items():
            field = self.fields.get(name)
            if field is None:
                errors[name] = ["Unknown field."]
            elif field.read_only:
                errors[name] = ["This field is read-only."]
            elif value is not None:
                problem = _type_error(field, value)
                if problem:
                    errors[name] = [problem]
        if errors:
            raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class MetadataField(serializers.JSONField):
    """The contract's metadata: at most 16 string keys with string values."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dict[str, str]:
        try:
            validate_metadata(data)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return data


class NonBlankTextField(serializers.CharField):
    """Text kept as sent, which must hold something besides whitespace."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["trim_whitespace"] = False
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not value.strip():
            raise serializers.ValidationError("Must contain text, not only whitespace.")
        return value
