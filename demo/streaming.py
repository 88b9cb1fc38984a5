"""The Talk player: Gradio's streaming video output fed with short MPEG-TS segments.

Gradio 5.49 plays a ``gr.Video(streaming=True)`` output as an HLS stream (hls.js) of the
segments a generator yields, and reads each segment's duration with the ``ffprobe`` program,
which this app does not otherwise need (without it every streamed segment fails and the page
shows nothing). :class:`SegmentVideo` reads the duration with PyAV
(``core.data.media.media_seconds``) and keeps the frontend's ``video`` component (a plain
subclass would ask the page for a component named after the subclass, which it lacks).

Gradio 5.49 also announces the stream's ``EXT-X-TARGETDURATION`` as 5 s plus one second per
segment received, whatever the segments last, and hls.js paces its reloads of a live
playlist by that figure: after the first 0.4 s segment the picture stood still for about
3 s until the next reload (``python -m bench.stream_player``). :func:`honest_target_duration`
makes it the longest segment so far rounded up, as HLS defines it (RFC 8216, 4.3.3.1).
"""
from __future__ import annotations

import math

import gradio as gr

from core.data.media import media_seconds


class SegmentVideo(gr.Video):
    """``gr.Video`` whose streamed segments' durations (s) come from PyAV, not ``ffprobe``;
    drawn by the page as a plain video."""

    def get_block_name(self) -> str:
        return "video"

    @staticmethod
    def get_video_duration_ffprobe(filename: str) -> float:  # Gradio's hook, same name
        return media_seconds(filename)


def honest_target_duration() -> bool:
    """Make Gradio's streamed playlists announce the longest segment so far, rounded up to
    whole seconds (at least 1), as their target duration (see the module doc). Idempotent;
    returns False, changing nothing, where Gradio has no ``MediaStream.add_segment`` (another
    version: its own rule stays)."""
    from gradio import route_utils

    stream = getattr(route_utils, "MediaStream", None)
    add = getattr(stream, "add_segment", None)
    if add is None:
        return False
    if getattr(add, "honest_target", False):
        return True

    async def add_segment(self, data) -> None:  # noqa: ANN001 - Gradio's chunk dict
        await add(self, data)
        if self.segments:
            self.max_duration = max(1, math.ceil(max(s["duration"] for s in self.segments)))

    add_segment.honest_target = True
    stream.add_segment = add_segment
    return True


honest_target_duration()
