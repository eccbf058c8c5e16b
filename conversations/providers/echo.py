"""A development provider: offline, deterministic, no account needed."""

import re
import time
from collections.abc import Iterator

from django.conf import settings

from conversations.llm import ChatMessage, Completion, Delta, FinishReason, Usage

NOTICE = "Development provider: the reply repeats your message."
_PIECE = re.compile(r"\S+\s*|\s+")


class EchoProvider:
    """Replies ``Echo: <last user message>``, streamed word by word."""

    name = "echo"

    def __init__(self, *, model: str = "echo-1", delay_ms: int = 0):
        self.model = model
        self.delay_seconds = delay_ms / 1000

    @classmethod
    def from_settings(cls) -> "EchoProvider":
        return cls(model=settings.LLM_MODEL or "echo-1", delay_ms=settings.ECHO_DELAY_MS)

    def _reply(self, messages: list[ChatMessage]) -> tuple[str, Usage]:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        text = f"Echo: {last_user}"
        prompt_tokens = sum(len(m.content.split()) for m in messages)
        return text, Usage(prompt_tokens=prompt_tokens, completion_tokens=len(text.split()))

    def _completion(self, text: str, usage: Usage) -> Completion:
        return Completion(
            text=text,
            usage=usage,
            finish_reason=FinishReason.STOP,
            metadata={"provider": self.name, "notice": NOTICE},
        )

    def complete(self, messages: list[ChatMessage]) -> Completion:
        return self._completion(*self._reply(messages))

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
        """One piece per word, piece N at N times ``ECHO_DELAY_MS`` from the start.

        Like a remote model, which writes on its own clock whether or not the
        reader keeps up: a reader that was busy finds the pieces that came
        meanwhile waiting, and the reply takes as long as the model, not as
        long as the model plus every delay of the reader.
        """
        text, usage = self._reply(messages)
        started = time.monotonic()
        for index, piece in enumerate(_PIECE.findall(text)):
            wait = started + index * self.delay_seconds - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield Delta(piece)
        yield self._completion(text, usage)
