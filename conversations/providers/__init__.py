"""Assistant providers behind the ``conversations.llm.Provider`` port.

``LLM_PROVIDER`` picks one: ``echo`` (offline, deterministic, the default)
or ``openai`` (any OpenAI-compatible chat-completions server).
"""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from conversations.llm import Provider

from .echo import EchoProvider
from .openai import OpenAIProvider

PROVIDERS = {"echo": EchoProvider, "openai": OpenAIProvider}


def get_provider() -> Provider:
    """The provider configured by the settings, built for this call."""
    try:
        provider_class = PROVIDERS[settings.LLM_PROVIDER]
    except KeyError:
        raise ImproperlyConfigured(
            f"LLM_PROVIDER must be one of {sorted(PROVIDERS)}, got {settings.LLM_PROVIDER!r}"
        ) from None
    return provider_class.from_settings()
