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


class Refused(Exception):
    """A refine that cannot start now (one already runs on the avatar, or the server runs
    as many as it allows); the message says which."""


class AvatarLocks:
    """Jobs *use* an avatar (many at once); Delete takes it *exclusively*: it refuses new
    uses, asks running ones to stop (their :meth:`use` event is set, see
    :func:`cancellable`) and waits for them. A refine holds a use for its whole run
    (:meth:`refining`: one per avatar, ``limit`` on the server) and, to put the refined
    model in place, :meth:`swapping`: new uses wait, running ones are waited for."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users: dict[str, int] = {}
        self._closing: set[str] = set()
        self._stop: dict[str, threading.Event] = {}
        self._refining: set[str] = set()
        self._swapping: set[str] = set()

    @contextmanager
    def use(self, aid: str) -> Iterator[threading.Event]:
        """Hold ``aid`` for a job; yields the event set when the job should stop.

        Raises:
            Busy: the avatar is being deleted.
        """
        with self._cond:
            while aid in self._swapping and aid not in self._closing:
                self._cond.wait()  # the refined model is being put in place (milliseconds)
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


    @contextmanager
    def refining(self, aid: str, limit: int) -> Iterator[None]:
        """Mark ``aid`` as refining for the block.

        Raises:
            Refused: ``aid`` is already refining, or ``limit`` refines run on the server.
        """
        with self._cond:
            if aid in self._refining:
                raise Refused("This avatar is already being refined; wait for it to finish.")
            if len(self._refining) >= limit:
                raise Refused(f"The server is already refining {len(self._refining)} "
                              "avatar(s), as many as it allows at once; try again later.")
            self._refining.add(aid)
        try:
            yield
        finally:
            with self._cond:
                self._refining.discard(aid)
                self._cond.notify_all()

    def is_refining(self, aid: str) -> bool:
        with self._cond:
            return aid in self._refining

    @contextmanager
    def swapping(self, aid: str, timeout: float, own_uses: int = 1) -> Iterator[None]:
        """Wait until only the caller's ``own_uses`` uses of ``aid`` remain (running jobs,
        such as a Talk render, finish first; at most ``timeout`` s), holding new uses back
        until the block ends, so no job reads the avatar's files while they are replaced.

        Raises:
            Busy: the avatar is being deleted, or jobs still ran after ``timeout``.
        """
        with self._cond:
            if aid in self._closing or aid in self._swapping:
                raise Busy(aid)
            self._swapping.add(aid)
            deadline = time.monotonic() + timeout
            while self._users.get(aid, 0) > own_uses or aid in self._closing:
                left = deadline - time.monotonic()
                if left <= 0 or aid in self._closing:
                    self._swapping.discard(aid)
                    self._cond.notify_all()
                    raise Busy(aid)
                self._cond.wait(left)
        try:
            yield
        finally:
            with self._cond:
                self._swapping.discard(aid)
                self._cond.notify_all()


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
