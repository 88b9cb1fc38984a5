"""The Talk player: Gradio's streaming video output fed with short MPEG-TS segments.

Gradio 5.49 plays a ``gr.Video(streaming=True)`` output as an HLS stream of the segments a
generator yields; it reads each segment's duration with the ``ffprobe`` program, which this
app does not otherwise need. :class:`SegmentVideo` reads it with PyAV instead
(``core.data.media.media_seconds``), so streaming works wherever the app does.
"""
from __future__ import annotations

import gradio as gr

from core.data.media import media_seconds

from gradio.events import Dependency

class SegmentVideo(gr.Video):
    """``gr.Video`` whose streamed segments' durations come from PyAV, not ``ffprobe``."""

    @staticmethod
    def get_video_duration_ffprobe(filename: str) -> float:  # Gradio's hook, same name
        return media_seconds(filename)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component