"""A run carried in a thread of the test process, by a provider the test paces.

``GatedProvider`` gives each piece of its reply only when the test says so
(``release``), so a test can act while the provider is silent and knows
exactly when a piece is stored. ``carried`` runs ``run_execute`` in a
thread for the block and always lets it finish.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

from conversations import runs
from conversations.llm import ChatMessage, Completion, Delta, FinishReason
from conversations.models import Run

WAIT = 60.0


class GatedProvider:
    """Streams ``pieces``, each once released; the end once all are."""

    name = "gated"
    model = "gated-1"

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self._released = threading.Semaphore(0)

    def release(self, count: int = 1) -> None:
        self._released.release(count)

    def close(self) -> None:
        """Let every piece go: the run ends (or finds that it was ended)."""
        self._released.release(len(self.pieces) + 1)

    def complete(self, messages: list[ChatMessage]) -> Completion:
        raise NotImplementedError

    def stream(self, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
        for piece in self.pieces:
            self._released.acquire(timeout=WAIT)
            yield Delta(piece)
        text = "".join(self.pieces)
        yield Completion(text=text, finish_reason=FinishReason.STOP)


@contextmanager
def carried(run: Run, provider: GatedProvider) -> Iterator[threading.Thread]:
    """``run_execute`` of ``run`` in a thread, as a worker would; finished after the block."""

    def carry() -> None:
        try:
            for _event in runs.run_execute(run=run, provider=provider, stream=True):
                pass
        finally:
            connection.close()

    thread = threading.Thread(target=carry, name=f"carrier-{run.pk}")
    thread.start()
    try:
        yield thread
    finally:
        provider.close()
        thread.join(timeout=30)
