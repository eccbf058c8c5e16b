"""The port to language-model providers: what the run services need of one.

Implementations (adapters) live in ``chatkit.providers``.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


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


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage | None = None
    # False when the provider stopped early (length limit, content filter).
    finished: bool = True
    # Stored on the assistant message (the contract's metadata rules apply).
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text; the last item of a stream is a Completion."""

    text: str


class ProviderError(Exception):
    """A provider failed. ``public_message`` is safe to show to the client."""

    code = "PROVIDER_ERROR"
    public_message = "The assistant provider returned an error."


class ProviderTimeout(ProviderError):
    code = "PROVIDER_TIMEOUT"
    public_message = "The assistant provider did not answer in time."


class ProviderBadResponse(ProviderError):
    code = "PROVIDER_BAD_RESPONSE"
    public_message = "The assistant provider returned a response that could not be used."


class Provider(Protocol):
    name: str
    model: str

    def complete(self, messages: list[ChatMessage]) -> Completion: ...

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]: ...
