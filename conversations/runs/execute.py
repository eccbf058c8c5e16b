"""The provider loop: the run's context in, pieces stored in batches, the run's end.

The provider is called outside any transaction, holding no connection.
Streamed pieces are stored in batches (at most one write per
``STREAM_FLUSH_MS``); the batches that the runs of one process have ready
at the same moment are stored together, in one round trip
(``conversations/grouping.py``). The end goes through ``run_finish``.
"""

import logging
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import DataError, connection

from .. import metrics
from ..grouping import Grouped
from ..llm import ChatMessage, Completion, Delta, Provider, ProviderBadResponse, ProviderError
from ..models import Run, RunStatus
from . import store
from .ending import run_finish
from .events import Event, deltas, run_events_after

logger = logging.getLogger(__name__)


def run_context(*, run: Run) -> list[ChatMessage]:
    """What the provider sees: instructions, then the newest messages within budget.

    Never the whole history: at most ``LLM_CONTEXT_MAX_MESSAGES`` messages and
    ``LLM_CONTEXT_MAX_CHARS`` characters, newest kept first; the run's own
    input is always included.
    """
    max_chars = settings.LLM_CONTEXT_MAX_CHARS
    history: list[ChatMessage] = []
    used = 0
    for role, content in store.newest_messages(run.thread_id, settings.LLM_CONTEXT_MAX_MESSAGES):
        used += len(content)
        if history and used > max_chars:
            break
        history.append(ChatMessage(role=role, content=content))
    history.reverse()
    system = run.instructions or run.thread.conversation.instructions
    if system:
        history.insert(0, ChatMessage(role="system", content=system))
    return history


def release_connection() -> None:
    """Hand the connection back (to the pool) rather than hold it idle while waiting.

    Inside a transaction (tests) there is nothing to hand back.
    """
    if not connection.in_atomic_block:
        connection.close()


def _as_stream(provider: Provider, messages: list[ChatMessage]) -> Iterator[Delta | Completion]:
    completion = provider.complete(messages)
    yield Delta(completion.text)
    yield completion


def _provider_items(
    provider: Provider, messages: list[ChatMessage], *, stream: bool
) -> Iterator[Delta | Completion]:
    """What the provider answers; anything else it raises becomes a ProviderError.

    A provider is a plug-in that talks to the network: an exception its
    adapter did not translate (its HTTP client's transport error, a bug in
    it) must still end the run as failed, never leave it in progress. The
    original stays chained as the cause, so the log has its stack trace;
    the client gets only the generic message.
    """
    try:
        yield from provider.stream(messages) if stream else _as_stream(provider, messages)
    except ProviderError:
        raise
    except Exception as exc:
        raise ProviderError(f"unexpected {type(exc).__name__} from the provider") from exc


def run_execute(
    *,
    run: Run,
    provider: Provider,
    stream: bool = True,
    messages: list[ChatMessage] | None = None,
) -> Iterator[Event]:
    """Carry out an ``in_progress`` run; yield its events as they are stored.

    Each batch of pieces renews the run's heartbeat and checks that nobody
    ended the run meanwhile (cancel, reaper): if somebody did, the provider
    is dropped at once and the events they stored follow. Provider failures
    end the run as ``failed``; they are expected conditions, logged with
    their stack trace, never raised. So does a reply that ends before the
    provider says why it stopped (a stream closed early): its text is kept
    as an incomplete message. ``messages`` is the run's context when the
    caller has read it already.
    """
    if messages is None:
        messages = run_context(run=run)
    release_connection()
    flush_interval = settings.STREAM_FLUSH_MS / 1000
    # Streaming, the first piece is stored (and sent) at once, whatever the
    # clock reads; without streaming nobody waits for it: store it with the end.
    last_flush = None if stream else time.monotonic()
    pieces: list[str] = []
    pending: list[str] = []
    completion: Completion | None = None
    source = _provider_items(provider, messages, stream=stream)
    try:
        for item in source:
            if isinstance(item, Completion):
                completion = item
                continue
            if not pieces:
                metrics.run_first_delta(run)
            pieces.append(item.text)
            pending.append(item.text)
            if not flush_due(last_flush, time.monotonic(), flush_interval):
                continue
            stored = _store_deltas(run, pending)
            if stored is None:
                yield from run_events_after(run_id=run.pk, seq=run.last_event_seq)
                return
            yield from stored
            pending = []
            last_flush = time.monotonic()
        if completion is None or completion.finish_reason is None:
            raise ProviderBadResponse("the reply ended before the provider said it was finished")
    except ProviderError as exc:
        logger.exception("Run %s failed: %s", run.pk, exc.code)
        metrics.provider_error(run, exc.code)
        status, error = RunStatus.FAILED, (exc.code, exc.public_message)
    else:
        status, error = RunStatus.COMPLETED, None
    finally:
        source.close()
    final = run_finish(
        run=run,
        pending=pending,
        status=status,
        text="".join(pieces),
        completion=completion,
        error=error,
    )
    if final is None:
        yield from run_events_after(run_id=run.pk, seq=run.last_event_seq)
        return
    yield from final


def flush_due(last: float | None, now: float, interval: float) -> bool:
    """Whether a new tick of the process-wide flush clock began since ``last``.

    Every stream of a process flushes on the same clock, so their batches
    reach the delta writer together and are stored in a few big groups
    rather than in many small ones. ``last`` None: the stream has not
    flushed yet, so it is due whatever the clock's phase (``monotonic()``
    may well be inside the clock's first tick, on a freshly started host).
    """
    return last is None or not interval or now // interval > last // interval


def _store_deltas(run: Run, pending: list[str]) -> list[Event] | None:
    """Store a batch of pieces and renew the lease; None if the run was ended.

    Inside a transaction (tests) the batch is part of it; otherwise it is
    stored together with the batches other runs of this process have ready:
    one round trip for all of them.
    """
    batch = store.DeltaBatch(run.pk, str(run.reply_message_id), list(pending))
    if connection.in_atomic_block:
        last_seq = store.write_delta_batches([batch])[0]
    else:
        last_seq = delta_writer(batch)
    if last_seq is None:
        logger.info("Run %s was ended elsewhere; dropping the provider", run.pk)
        return None
    run.last_event_seq = last_seq
    first_seq = last_seq - len(batch.deltas) + 1
    return list(deltas(batch.message_id, first_seq, batch.deltas))


def write_delta_group(batches: list[store.DeltaBatch]) -> list[Any]:
    """``store.write_delta_batches`` for the writer thread, keeping runs apart.

    Each batch's last seq, None if its run was ended, or the DataError that
    refused it. A value the database refuses (a provider's NUL character,
    say) fails the whole statement, and nothing of it is stored: then each
    batch is stored alone, so that only its own run fails.
    """
    try:
        return store.write_delta_batches(batches)
    except DataError:
        if len(batches) == 1:
            raise
        logger.warning("A group of %d batches was refused; storing them one by one", len(batches))
        results: list[int | DataError | None] = []
        for batch in batches:
            try:
                results.append(store.write_delta_batches([batch])[0])
            except DataError as exc:
                results.append(exc)
        return results


# One per process: see conversations/grouping.py. Its connection goes back
# to the pool whenever no batch is waiting.
delta_writer = Grouped("run-deltas", write_delta_group, idle=release_connection)
