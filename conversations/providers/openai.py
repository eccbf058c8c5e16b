"""OpenAI-compatible chat completions through the official ``openai`` SDK.

The same protocol serves OpenAI, Ollama, vLLM, LM Studio, OpenRouter and most
gateways: point ``OPENAI_BASE_URL`` at them.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import httpx2
import openai
from django.conf import settings

from conversations.llm import (
    ChatMessage,
    Completion,
    Delta,
    FinishReason,
    ProviderBadResponse,
    ProviderError,
    ProviderTimeout,
    Usage,
)

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    # A reply that ends by calling a tool or function is whole too.
    "tool_calls": FinishReason.STOP,
    "function_call": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
}


@lru_cache(maxsize=8)
def shared_client(
    api_key: str, base_url: str | None, timeout: float, max_retries: int
) -> openai.OpenAI:
    """The SDK client of a configuration: one (and its connection pool) per process."""
    return openai.OpenAI(
        api_key=api_key or "not-needed",
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
    )


def _finish_reason(raw: str | None) -> FinishReason | None:
    """The port's reason for the server's ``finish_reason``; None if it gave none.

    A reason of the server's own (TGI's ``eos_token``, say) still says that
    the reply came to its end.
    """
    if raw is None:
        return None
    return _FINISH_REASONS.get(raw, FinishReason.STOP)


def _usage(raw) -> Usage | None:
    if raw is None:
        return None
    return Usage(prompt_tokens=raw.prompt_tokens or 0, completion_tokens=raw.completion_tokens or 0)


class OpenAIProvider:
    name = "openai"

    def __init__(self, *, client: openai.OpenAI, model: str):
        self.client = client
        self.model = model

    @classmethod
    def from_settings(cls) -> "OpenAIProvider":
        client = shared_client(
            settings.OPENAI_API_KEY,
            settings.OPENAI_BASE_URL,
            settings.LLM_TIMEOUT_SECONDS,
            settings.LLM_MAX_RETRIES,
        )
        return cls(client=client, model=settings.LLM_MODEL or "gpt-4o-mini")

    def _payload(self, messages: list[ChatMessage]) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in messages]

    def _metadata(self) -> dict[str, str]:
        return {"provider": self.name, "model": self.model[:512]}

    def complete(self, messages: list[ChatMessage]) -> Completion:
        with _translated_errors():
            response = self.client.chat.completions.create(
                model=self.model, messages=self._payload(messages)
            )
        choices = getattr(response, "choices", None)
        if not choices or choices[0].message is None:
            raise ProviderBadResponse("response has no choices")
        text = choices[0].message.content
        if not isinstance(text, str) or not text:
            raise ProviderBadResponse("response has no text")
        return Completion(
            text=text,
            usage=_usage(getattr(response, "usage", None)),
            finish_reason=_finish_reason(choices[0].finish_reason),
            metadata=self._metadata(),
        )

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
        pieces: list[str] = []
        usage = None
        finish_reason = None
        with _translated_errors():
            chunks = self.client.chat.completions.create(
                model=self.model,
                messages=self._payload(messages),
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in chunks:
                usage = _usage(getattr(chunk, "usage", None)) or usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                finish_reason = choice.finish_reason or finish_reason
                text = choice.delta.content if choice.delta is not None else None
                if text:
                    pieces.append(text)
                    yield Delta(text)
        if not pieces:
            raise ProviderBadResponse("stream has no text")
        yield Completion(
            text="".join(pieces),
            usage=usage,
            # None if the stream ended before the server said why it stopped.
            finish_reason=_finish_reason(finish_reason),
            metadata=self._metadata(),
        )


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn the SDK's (and, mid-stream, httpx2's) exceptions into the port's.

    The original stays chained as the cause, for the log.
    """
    try:
        yield
    except (openai.APITimeoutError, httpx2.TimeoutException) as exc:
        raise ProviderTimeout(str(exc)) from exc
    except (openai.APIResponseValidationError, ValueError, TypeError, KeyError) as exc:
        raise ProviderBadResponse(str(exc)) from exc
    except (openai.APIError, httpx2.HTTPError) as exc:
        raise ProviderError(str(exc)) from exc
