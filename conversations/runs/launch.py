"""The one way to start a run: REST, ChatKit and ``manage.py chat`` call ``run_launch``.

Where a run starts: ``lifecycle.run_start``; is carried out:
``execute.run_execute``; ends: ``ending.run_finish``; is cancelled:
``ending.run_cancel``; expires: ``ending.runs_expire_stale``; gets its events
stored and read: ``events``; meets the database: ``store``.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .. import tasks
from ..llm import Provider
from ..models import Message, Run, RunMode, Thread
from ..providers import get_provider
from .events import Event
from .execute import run_context, run_execute
from .lifecycle import run_retry, run_start

# How the caller takes part in the run, stored with it (Run.mode). WAIT:
# carried out before run_launch returns, one provider call, no pieces. STREAM:
# carried out as the caller reads the events, piece by piece. BACKGROUND:
# queued for a worker, handed over on commit.
Mode = RunMode


@dataclass(frozen=True)
class Launch:
    """A started run and its events.

    WAIT: every event to the end, already stored. STREAM: the stored start
    events, then the events as the provider's pieces are stored; reading
    them carries out the run (read them to the end, or the reaper expires
    the run). BACKGROUND: none; the run is queued.
    """

    run: Run
    events: Iterator[Event]


def run_launch(
    *,
    thread: Thread,
    input: str = "",
    mode: Mode | str,
    instructions: str = "",
    metadata: dict[str, str] | None = None,
    provider: Provider | None = None,
    retry_of: Message | None = None,
) -> Launch:
    """Start a run of ``input`` on ``thread`` in ``mode``; see ``Launch`` for its events.

    With ``retry_of`` (a user message of ``thread``), the run is a new reply
    to it instead, and what followed it is superseded (``run_retry``); its
    events start at the run (the user message is not sent again). A retry
    waits or streams, never in the background. ``provider``: the configured
    one (``LLM_PROVIDER``) unless given. Raises the domain errors of
    ``run_start`` and ``run_retry`` (a run in progress, a limit reached)
    before anything is stored.
    """
    mode = Mode(mode)
    if retry_of is not None and (mode is Mode.BACKGROUND or retry_of.thread_id != thread.pk):
        raise ValueError("a retry waits or streams, on the thread of its message")
    provider = provider or get_provider()
    start: dict[str, Any] = {
        "thread": thread,
        "input": input,
        "provider": provider.name,
        "model": provider.model,
        "instructions": instructions,
        "metadata": metadata,
        "mode": mode,
    }
    if mode is Mode.BACKGROUND:
        run = run_start(**start, queued=True, on_commit=tasks.enqueue_run)
        return Launch(run=run, events=iter(()))
    if retry_of is not None:
        del start["thread"], start["input"]
        run = run_retry(message=retry_of, **start)
    else:
        run = run_start(**start)
    if mode is Mode.WAIT:
        events = list(run.start_events)
        events += run_execute(run=run, provider=provider, stream=False)
        return Launch(run=run, events=iter(events))
    # Read with the caller's connection now: the events may be read elsewhere
    # (a thread of a live stream), holding no connection meanwhile.
    messages = run_context(run=run)
    return Launch(run=run, events=_streamed(run, provider, messages))


def _streamed(run: Run, provider: Provider, messages: list) -> Iterator[Event]:
    yield from run.start_events
    yield from run_execute(run=run, provider=provider, stream=True, messages=messages)
