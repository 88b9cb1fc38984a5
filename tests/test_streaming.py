"""The Talk player's stream (demo.streaming): the playlist's target duration follows the
segments (the longest so far, rounded up), so hls.js reloads the playlist in time for the
next segment instead of stalling after the first one."""
from __future__ import annotations

import asyncio

from gradio import route_utils

from demo.streaming import honest_target_duration


def _target_after(durations: list[float]) -> int:
    stream = route_utils.MediaStream()
    for d in durations:
        asyncio.run(stream.add_segment({"data": b"", "duration": d, "extension": ".ts"}))
    return stream.max_duration


def test_target_duration_is_the_longest_segment_rounded_up() -> None:
    assert honest_target_duration() and honest_target_duration()   # applied once, idempotent
    assert _target_after([0.4]) == 1              # Gradio's own rule said 6
    assert _target_after([0.4, 1.0, 1.0, 1.0]) == 1   # ... and 9 here
    assert _target_after([0.4, 1.0, 2.5, 1.0]) == 3
    assert _target_after([]) == 5                 # before any segment: Gradio's start value
