"""Progress reporting shared by the long jobs.

Every long job takes ``progress(text, fraction)`` (text: what it is doing, with steps and
time left; fraction of the whole job in [0, 1]). The app maps it onto ``gr.Progress``; the
command lines show it with :class:`ProgressBar` (tqdm on a terminal, a line every few
seconds in logs).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO, TypeVar

from core.errors import InputError

ProgressFn = Callable[[str, float], None]
T = TypeVar("T")


def format_seconds(seconds: float) -> str:
    """``m:ss`` for a non-negative duration in seconds."""
    s = int(max(0, seconds))
    return f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """``progress(text, fraction)`` for a command line: a tqdm bar on a terminal; anywhere
    else (CI logs, files) one plain line ``[m:ss]  42.0% text`` at most every ``interval``
    seconds, plus the last update, so a log does not get a line per frame (``lines``: force
    one mode; None = by whether ``stream`` is a terminal). ``write`` prints a line above the bar (or into the log)."""

    def __init__(self, resolution: int = 1000, interval: float = 10.0,
                 stream: TextIO | None = None, lines: bool | None = None) -> None:
        self.resolution = resolution
        self.interval = float(interval)
        self.stream = stream or sys.stderr
        self.tty = not lines if lines is not None else \
            bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.last = -math.inf
        self.pending: tuple[str, float] | None = None
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=resolution, bar_format="{l_bar}{bar}| {elapsed} {desc}",
                            file=self.stream)

    def __call__(self, text: str, fraction: float) -> None:
        fraction = min(1.0, max(0.0, fraction))
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(round(fraction * self.resolution) - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._line(text, fraction)
            self.last, self.pending = now, None
        else:
            self.pending = (text, fraction)

    def _line(self, text: str, fraction: float) -> None:
        print(f"[{format_seconds(time.monotonic() - self.t0)}] {100 * fraction:5.1f}% {text}",
              file=self.stream, flush=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.pending is not None:
            self._line(*self.pending)
            self.pending = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_cli_job(job: Callable[[ProgressBar], T]) -> tuple[T | None, int]:
    """Run a command line's job under a :class:`ProgressBar`: ``(result, 0)``, or
    ``(None, 2)`` after printing ``error: ...`` to stderr when the job refuses its input
    (:class:`core.errors.InputError`; the bar is closed first so the message stays visible).
    Other exceptions propagate."""
    with ProgressBar() as bar:
        try:
            return job(bar), 0
        except InputError as e:
            bar.close()
            print(f"error: {e}", file=sys.stderr)
            return None, 2
