"""Validation rules shared by the models and the API (no HTTP here)."""

import re
from typing import Any

from django.core.exceptions import ValidationError

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_VALUE_LENGTH = 512


# NUL cannot be stored by PostgreSQL; lone surrogates cannot be encoded as UTF-8.
_FORBIDDEN_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


def has_forbidden_characters(text: str) -> bool:
    """Whether ``text`` holds NUL or a surrogate (a scan in C: inputs run to 32,000 characters)."""
    return _FORBIDDEN_CHARACTERS.search(text) is not None


def validate_metadata(value: Any) -> None:
    """An object of at most 16 string keys (<= 64 chars) with string values (<= 512)."""
    if not isinstance(value, dict):
        raise ValidationError("Metadata must be a JSON object.", code="invalid")
    if len(value) > METADATA_MAX_KEYS:
        raise ValidationError(
            f"Metadata may have at most {METADATA_MAX_KEYS} keys.", code="max_keys"
        )
    for key, item in value.items():
        if not key or len(key) > METADATA_MAX_KEY_LENGTH or has_forbidden_characters(key):
            raise ValidationError(
                f"Metadata keys must be 1 to {METADATA_MAX_KEY_LENGTH} characters "
                "without NUL or surrogate characters.",
                code="invalid_key",
            )
        if not isinstance(item, str):
            raise ValidationError("Metadata values must be strings.", code="invalid_value")
        if len(item) > METADATA_MAX_VALUE_LENGTH or has_forbidden_characters(item):
            raise ValidationError(
                f"Metadata values must be at most {METADATA_MAX_VALUE_LENGTH} characters "
                "without NUL or surrogate characters.",
                code="invalid_value",
            )
