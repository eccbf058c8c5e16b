"""The port to language-model providers: what the run services need of one.

Implementations (adapters) live in ``conversations.providers``.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from .errors import ErrorCode


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class FinishReason(StrEnum):
    """Why the provider stopped writing, in its own words (OpenAI's names)."""

    STOP = "stop"  # the reply is whole (also when it ends in a tool call)
    LENGTH = "length"  # cut short by the token limit
    CONTENT_FILTER = "content_filter"  # cut short by the provider's content filter


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage | None = None
    # None when the reply ended without the provider saying why (a stream
    # closed early): then nobody knows whether it is whole.
    finish_reason: FinishReason | None = FinishReason.STOP
    # Stored on the assistant message (the contract's metadata rules apply).
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text; the last item of a stream is a Completion."""

    text: str


class ProviderError(Exception):
    """A provider failed. ``public_message`` is safe to show to the client."""

    code = ErrorCode.PROVIDER_ERROR
    public_message = "The assistant provider returned an error."


class ProviderTimeout(ProviderError):
    code = ErrorCode.PROVIDER_TIMEOUT
    public_message = "The assistant provider did not answer in time."


class ProviderBadResponse(ProviderError):
    code = ErrorCode.PROVIDER_BAD_RESPONSE
    public_message = "The assistant provider returned a response that could not be used."


class Provider(Protocol):
    name: str
    model: str

    def complete(self, messages: list[ChatMessage]) -> Completion: ...

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]: ...
