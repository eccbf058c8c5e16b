"""Runs: one user message in, one assistant reply out.

Start with ``launch.run_launch``, the one service every surface calls. Then:
``lifecycle`` (start, retry, claim) and ``ending`` (finish, cancel, expire), each a
guarded change of a run's status; ``execute`` (the provider loop);
``events`` (event names and the stored event log); ``store`` (the only
module that knows the database vendor). The public names are gathered here.
"""

from .ending import run_abandon, run_cancel, run_deleted_events, run_finish, runs_expire_stale
from .events import TERMINAL_EVENTS, Event, EventName, run_events_after, run_reply_so_far
from .execute import release_connection, run_context, run_execute
from .launch import Launch, Mode, run_launch
from .lifecycle import (
    run_claim,
    run_exists,
    run_is_active,
    run_retry,
    run_start,
    title_from_text,
)

__all__ = [
    "TERMINAL_EVENTS",
    "Event",
    "EventName",
    "Launch",
    "Mode",
    "release_connection",
    "run_abandon",
    "run_cancel",
    "run_claim",
    "run_context",
    "run_deleted_events",
    "run_events_after",
    "run_execute",
    "run_exists",
    "run_finish",
    "run_is_active",
    "run_launch",
    "run_reply_so_far",
    "run_retry",
    "run_start",
    "runs_expire_stale",
    "title_from_text",
]
