"""Calls from many threads carried out together, a group at a time, by one thread.

Under many concurrent streams, each storing a small batch of pieces every
few hundred milliseconds, the cost is in the round trips (a pooled
connection, a statement, a commit), not in the rows. ``Grouped`` lets every
caller wait for its own result while one thread per process carries out
whatever has piled up since its last round in one go. Nobody waits for a
timer: a call that finds the thread idle is carried out at once, alone; the
busier the process, the bigger the groups.
"""

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)


class Grouped(Generic[T, R]):
    """``grouped(item)`` returns ``carry_out([..., item, ...])[its position]``.

    ``carry_out`` gets the items of every call waiting at that moment and
    returns one result per item, in order; a result that is an exception is
    raised to that item's caller alone. If ``carry_out`` raises, every
    caller of the group gets the exception (as ``Future.result`` does).
    """

    def __init__(
        self,
        name: str,
        carry_out: Callable[[list[T]], list[R | BaseException]],
        idle: Callable[[], None] = lambda: None,
    ):
        self._name = name
        self._carry_out = carry_out
        self._idle = idle
        self._forget()
        # A forked child (a server worker) starts its own thread when needed.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._waiting: list[tuple[T, Future]] = []
        self._thread: threading.Thread | None = None

    def __call__(self, item: T) -> R:
        future: Future = Future()
        with self._lock:
            self._waiting.append((item, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._ready.notify()
        return future.result()

    def _serve(self) -> None:
        let_go = True
        while True:
            with self._lock:
                let_go = let_go or not self._waiting
            if let_go:
                # Nothing more to do at once, or the last group failed: let go
                # of what groups hold (``idle``) before waiting for calls.
                self._let_go()
            with self._lock:
                while not self._waiting:
                    self._ready.wait()
                group, self._waiting = self._waiting, []
            let_go = False
            try:
                results = self._carry_out([item for item, _ in group])
                if len(results) != len(group):
                    raise RuntimeError(f"{len(results)} results for {len(group)} items")
            except Exception as exc:  # handed to every caller, who raises it
                for _, future in group:
                    future.set_exception(exc)
                let_go = True
                continue
            for (_, future), result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _let_go(self) -> None:
        try:
            self._idle()
        except Exception:
            # The thread must go on serving: log it, and try again next time.
            logger.exception("%s could not let go of its resources", self._name)
