"""Fields of the chatkit API's request bodies (strict parsing: api_common.StrictInputMixin)."""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from conversations.validators import validate_metadata

# Patterns of the OpenAPI document. Strings the API stores may not hold NUL
# (PostgreSQL cannot store it).
NO_NUL = "^[^\\x00]*$"
# Python's str.isspace() characters, spelled out: a run's input must have
# something else, and regex engines disagree on what \s means.
_SPACE = "\\x09-\\x0d\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
NOT_ONLY_SPACE = f"^[^\\x00]*[^\\x00{_SPACE}][^\\x00]*$"


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
