"""Progress reporting shared by the long jobs.

Every long job takes ``progress(text, fraction)`` (text: what it is doing, with steps and
time left; fraction of the whole job in [0, 1]). The app maps it onto ``gr.Progress``; the
command lines show it with :class:`ProgressBar` (tqdm).
"""
from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[str, float], None]


def format_seconds(seconds: float) -> str:
    """``m:ss`` for a non-negative duration in seconds."""
    s = int(max(0, seconds))
    return f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """A tqdm bar for ``progress(text, fraction)`` callbacks; ``write`` prints above it."""

    def __init__(self, resolution: int = 1000) -> None:
        from tqdm import tqdm

        self.resolution = resolution
        self.bar = tqdm(total=resolution, bar_format="{l_bar}{bar}| {elapsed} {desc}")

    def __call__(self, text: str, fraction: float) -> None:
        self.bar.set_description_str(text, refresh=False)
        self.bar.update(round(min(1.0, max(0.0, fraction)) * self.resolution) - self.bar.n)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
