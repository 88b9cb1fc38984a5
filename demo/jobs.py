"""Running jobs: per-avatar use counts with cancellation (so Delete and the expiry sweep
never pull files from under a job), and per-owner counts of waiting jobs (fair queue)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Cancelled(Exception):
    """Raised inside a job whose avatar is being deleted."""


class Busy(Exception):
    """The avatar is being deleted (new jobs refused) or still in use after waiting."""


class AvatarLocks:
    """Jobs *use* an avatar (many at once); Delete takes it *exclusively*: it refuses new
    uses, asks running ones to stop (their :meth:`use` event is set, see
    :func:`cancellable`) and waits for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users: dict[str, int] = {}
        self._closing: set[str] = set()
        self._stop: dict[str, threading.Event] = {}

    @contextmanager
    def use(self, aid: str) -> Iterator[threading.Event]:
        """Hold ``aid`` for a job; yields the event set when the job should stop.

        Raises:
            Busy: the avatar is being deleted.
        """
        with self._cond:
            if aid in self._closing:
                raise Busy(aid)
            self._users[aid] = self._users.get(aid, 0) + 1
            stop = self._stop.setdefault(aid, threading.Event())
        try:
            yield stop
        finally:
            with self._cond:
                self._users[aid] -= 1
                if not self._users[aid]:
                    del self._users[aid]
                    if aid not in self._closing:
                        self._stop.pop(aid, None)
                self._cond.notify_all()

    def in_use(self, aid: str) -> bool:
        with self._cond:
            return aid in self._users or aid in self._closing

    @contextmanager
    def exclusive(self, aid: str, timeout: float) -> Iterator[int]:
        """Stop and wait for the jobs using ``aid`` (at most ``timeout`` s); yields how many
        were stopped. New uses are refused until the block ends.

        Raises:
            Busy: a job was still running after ``timeout``.
        """
        with self._cond:
            if aid in self._closing:
                raise Busy(aid)
            self._closing.add(aid)
            running = self._users.get(aid, 0)
            if running:
                self._stop.setdefault(aid, threading.Event()).set()
            deadline = time.monotonic() + timeout
            while self._users.get(aid, 0):
                left = deadline - time.monotonic()
                if left <= 0:
                    self._closing.discard(aid)
                    raise Busy(aid)
                self._cond.wait(left)
        try:
            yield running
        finally:
            with self._cond:
                self._closing.discard(aid)
                self._stop.pop(aid, None)


def cancellable(report: Callable[[str, float], None], stop: threading.Event
                ) -> Callable[[str, float], None]:
    """A progress callback that raises :class:`Cancelled` once ``stop`` is set (core jobs
    report progress every frame or step, so they stop within one)."""

    def call(text: str, frac: float) -> None:
        if stop.is_set():
            raise Cancelled("stopped: the avatar is being deleted")
        report(text, frac)

    return call


def waiting_jobs(blocks: Any, token_block: Any, token: str) -> int:
    """How many of ``token``'s jobs wait in ``blocks``' queue (not yet started).

    Reads Gradio's queue (5.x: ``Queue.event_queue_per_concurrency_id[..].queue`` of
    events whose ``data.data`` holds the inputs in ``fn.inputs`` order).
    """
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return 0
    n = 0
    for eq in list(queue.event_queue_per_concurrency_id.values()):
        for event in list(eq.queue):
            inputs = list(getattr(event.fn, "inputs", []))
            data = getattr(getattr(event, "data", None), "data", None) or []
            for i, block in enumerate(inputs):
                if block is token_block and i < len(data) and data[i] == token:
                    n += 1
                    break
    return n
