"""The Talk player: Gradio's streaming video output fed with short MPEG-TS segments.

Gradio 5.49 plays a ``gr.Video(streaming=True)`` output as an HLS stream (hls.js) of the
segments a generator yields, and reads each segment's duration with the ``ffprobe`` program,
which this app does not otherwise need (without it every streamed segment fails and the page
shows nothing). :class:`SegmentVideo` reads the duration with PyAV
(``core.data.media.media_seconds``) and keeps the frontend's ``video`` component (a plain
subclass would ask the page for a component named after the subclass, which it lacks).
"""
from __future__ import annotations

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
