"""The project's one media reader/writer (PyAV only: no ffmpeg CLI, no cv2 video IO).

Timeline rule
    Every file has one time origin ``t0`` = the earliest start time of its first video
    and first audio stream (usually 0). Output video frame ``i`` shows the source frame
    displayed at ``t0 + i / fps`` (the last frame whose pts <= that time; the first
    frame before the video starts), and audio sample ``n`` is at ``t0 + n / sample_rate``.
    So ``iter_frames(p)`` frame ``i`` and ``read_audio(p)[640*i : 640*(i+1)]`` line up
    exactly at 25 fps / 16 kHz (core conventions). A frame is only emitted when its
    whole interval ``[i/fps, (i+1)/fps)`` lies inside the video, so a clip yields
    ``floor(video_duration * fps)`` frames, and :func:`num_frames` gives
    ``floor(min(video_end, audio_end) * fps)``.

Rotation
    Display-matrix rotation (portrait phone videos) is applied on read; ``width`` /
    ``height`` and crop boxes are in the *displayed* (upright) orientation.

Limits (hostile uploads)
    Every reader takes a :class:`MediaLimits`. Before decoding anything it checks the
    headers: each stream's start offset from the time origin, the longest stream
    against ``max_seconds`` and the frame size against ``max_pixels`` (our decoders are
    also opened with ``max_pixels``; only the stream probe inside ``av.open`` may decode
    one frame, bounded by FFmpeg's own image-size ceiling, see ``_open``). While
    decoding it refuses a time gap inside a stream beyond ``max_gap_s``, stops at
    ``max_seconds`` of audio or video whatever the header said, and reports a stream
    that ends well before its header's duration (a truncated file). Memory is so
    bounded by the limits, not by the file: at most ``max_seconds * sample_rate``
    audio samples and a few frames of at most ``max_pixels``. Error codes:
    ``timing`` (late start or gap), ``too_long``, ``too_large`` (frame size),
    ``truncated``, ``unreadable``, ``no_video``, ``no_audio``.

Writing
    :func:`write_video` writes H.264 (libx264, present in the PyAV 16.1 wheel) + AAC
    mp4 atomically. Fallback when libx264 is missing: ``libopenh264`` (bitrate-driven,
    4:2:0 only, ``crf`` ignored) then ``mpeg4`` (qscale from ``crf``). ``pix_fmt``:
    ``'yuv420p'`` (players), ``'yuv444p'`` (+ ``crf=0``: lossless in YUV, near-lossless
    in RGB after 8-bit colour conversion) or ``'rgb24'`` (libx264rgb, truly lossless
    RGB; few players show it; for processed training frames).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from core.atomic import atomic_file
from core.errors import InputError

VIDEO_EXTENSIONS = ("mp4", "mov", "mkv", "webm", "mpg")
_UNREADABLE_FIX = (
    "Use a normal video file (mp4, mov, mkv, webm or mpg) or audio file "
    "(wav, mp3, m4a, flac, ogg); re-export it from your phone or editor if it is damaged."
)
_NO_AUDIO_FIX = (
    "Record with the microphone on, or use a clip with speech in it "
    "(or pass a separate audio file)."
)
_EPS = 1e-6  # seconds; tolerance for 'whole frame interval inside the stream'

Size = int | tuple[int, int] | None
Crop = tuple[int, int, int, int] | None


@dataclass(frozen=True)
class MediaLimits:
    """What the readers accept (see the module doc, *Limits*).

    Attributes:
        max_seconds: longest audio or video stream (s); default 600 s (10 min), far above
            any clip or driving audio the project uses. Callers pass their own (the app:
            its clip and audio limits).
        max_start_offset_s: largest start of the first audio / video stream after the
            file's time origin (s); default 2 s (real files: tens of ms of encoder delay).
        max_gap_s: largest jump between consecutive frames (video) or audio frames inside
            a stream (s); default 2 s.
        max_pixels: largest frame, width x height (default 3840 x 2160, 4K UHD).
        truncation_tolerance_s: a stream may end this much before the duration in its
            header (s) before the file counts as truncated; default 0.5 s.
    """

    max_seconds: float = 600.0
    max_start_offset_s: float = 2.0
    max_gap_s: float = 2.0
    max_pixels: int = 3840 * 2160
    truncation_tolerance_s: float = 0.5

    def with_seconds(self, max_seconds: float) -> MediaLimits:
        """These limits with another ``max_seconds``."""
        return replace(self, max_seconds=float(max_seconds))


DEFAULT_LIMITS = MediaLimits()


def _limits(limits: MediaLimits | None) -> MediaLimits:
    return DEFAULT_LIMITS if limits is None else limits


def _fmt_s(seconds: float) -> str:
    """'36000 s (10 h 0 min)' style duration for messages."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{seconds:.0f} s ({h} h {rem // 60} min)" if h else f"{seconds:.0f} s ({rem // 60} min)"


def too_long(name: str, seconds: float, limit: float, what: str = "") -> InputError:
    """The error for media longer than ``limit`` seconds."""
    what = f" {what}" if what else ""
    return InputError("too_long", f"{name}{what} is {_fmt_s(seconds)} long; the limit is "
                      f"{limit:.0f} s.", "Trim it to the part you need, or split it into "
                      "shorter files.")


def _too_large(name: str, w: int, h: int, limit: int) -> InputError:
    return InputError("too_large", f"{name} has frames of {w}x{h} pixels "
                      f"({w * h / 1e6:.1f} megapixels); the limit is {limit / 1e6:.1f} megapixels "
                      f"({limit} pixels).", "Export the video at 1080p (or at most 4K) and upload it "
                      "again.")


def _timing(name: str, problem: str) -> InputError:
    return InputError("timing", f"{name}: {problem}", "Re-export the file (any video editor, or "
                      "'ffmpeg -i in.mkv -c:v libx264 -c:a aac out.mp4') so that audio and video "
                      "start together with no gaps.")


def _truncated(name: str, what: str, got: float, header: float) -> InputError:
    return InputError("truncated", f"{name} is cut short: its {what} stops at {got:.1f} s but "
                      f"its header says {header:.1f} s (an interrupted upload or copy?).",
                      "Upload the complete file again, or re-export it.")


# ----------------------------------------------------------------------------- probing
@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds. Times in seconds on the file's timeline (see module doc).

    Attributes:
        path: the file.
        container: demuxer name, e.g. ``'mov,mp4,m4a,3gp,3g2,mj2'``, ``'mpeg'``, ``'wav'``.
        duration_s: container duration (s), or the longest stream end if unknown.
        has_video / has_audio: whether a video / audio stream exists.
        fps: average video frame rate (frames/s; 0 if no video). VFR files report
            their average; ``nominal_fps`` is the stream's base (tick) rate.
        width, height: displayed frame size in pixels (after rotation).
        rotation: counter-clockwise display rotation in degrees (0, 90, 180, 270)
            applied on read; 0 when the file has none.
        video_codec / audio_codec: decoder names ('' when absent).
        num_video_frames: frame count from the header (0 when the container lacks it).
        audio_sample_rate: Hz (0 if no audio); audio_channels: channel count.
        t0: time origin (s) = min start of the first video and audio stream.
        video_end_s / audio_end_s: stream end relative to ``t0`` (s; 0 if absent).
    """

    path: Path
    container: str
    duration_s: float
    has_video: bool
    has_audio: bool
    fps: float = 0.0
    nominal_fps: float = 0.0
    width: int = 0
    height: int = 0
    rotation: int = 0
    video_codec: str = ""
    num_video_frames: int = 0
    audio_codec: str = ""
    audio_sample_rate: int = 0
    audio_channels: int = 0
    t0: float = 0.0
    video_end_s: float = 0.0
    audio_end_s: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)


_SIGNATURES = ((b"PK\x03\x04", "a ZIP archive"), (b"%PDF", "a PDF document"),
               (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
               (b"Rar!", "a RAR archive"), (b"7z\xbc\xaf", "a 7-Zip archive"),
               (b"\x1f\x8b", "a gzip archive"))


def _what_is(p: Path) -> str:
    """A guess of what a non-media file is, from its first bytes (for the error)."""
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError:
        return ""
    if not head:
        return "an empty file"
    if head[4:8] == b"ftyp":
        return "an MP4/MOV file"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return ""


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    """Open for reading; every failure becomes InputError('unreadable').

    Opening probes the streams, which may decode one frame: that is bounded by FFmpeg's
    own image-size ceiling, not by ``max_pixels``, because PyAV 16.1 frees its per-stream
    option array past its end (a crash) when a demuxer adds streams while probing
    (MPEG-PS does), so no decoder option can be given here. Every decode after that is
    capped (:func:`_open_decoder`).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("unreadable", f"Media file not found: {p}.", "Check the path and file name.")
    try:
        return av.open(str(p), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        what = _what_is(p)
        if what == "an MP4/MOV file":  # its index ('moov', often written last) is missing
            raise InputError("truncated", f"{p.name} is an MP4/MOV file whose index cannot be "
                             "read: it is damaged or cut short (an interrupted upload or "
                             "copy?).", "Upload the complete file again, or re-export it.") from exc
        problem = (f"{p.name} is {what}, not audio or video." if what else
                   f"Cannot read {p.name} as audio or video ({exc.__class__.__name__}).")
        raise InputError("unreadable", problem, _UNREADABLE_FIX) from exc


def _open_decoder(stream: av.stream.Stream, name: str, limits: MediaLimits) -> None:
    """Cap the decoder's frame size before the first decode (it refuses larger frames)."""
    if stream.type == "video":
        stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
        w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
        if w * h > limits.max_pixels:
            raise _too_large(name, w, h, limits.max_pixels)


def _check_headers(c: av.container.InputContainer, name: str, limits: MediaLimits) -> float:
    """Refuse, from the headers alone, a late-starting stream, a stream longer than
    ``limits.max_seconds`` and frames above ``limits.max_pixels``. Returns the time
    origin t0 (s)."""
    firsts = c.streams.video[:1] + c.streams.audio[:1]
    spans = {s.type: _stream_span(s, c) for s in firsts}
    t0 = min((a for a, _ in spans.values()), default=0.0)
    for kind, (start, end) in spans.items():
        if start - t0 > limits.max_start_offset_s:
            other = "video" if kind == "audio" else "audio"
            raise _timing(name, f"its {kind} starts {_fmt_s(start - t0)} after its {other} "
                          f"(the limit is {limits.max_start_offset_s:g} s).")
    longest = max((end - t0 for _, end in spans.values()), default=0.0)
    if c.duration is not None and c.duration > 0:
        longest = max(longest, c.duration / av.time_base)
    if longest > limits.max_seconds + 0.5:
        raise too_long(name, longest, limits.max_seconds)
    if c.streams.video:
        cc = c.streams.video[0].codec_context
        if (cc.width or 0) * (cc.height or 0) > limits.max_pixels:
            raise _too_large(name, cc.width, cc.height, limits.max_pixels)
    return t0


def _declared_end(stream: av.stream.Stream, t0: float) -> float | None:
    """End of a stream from its own header duration (s from t0), or None when the
    container gives none per stream (mkv, webm): only then can truncation be told."""
    tb = stream.time_base
    if stream.duration is None or stream.duration <= 0 or not tb:
        return None
    start = float(stream.start_time * tb) if stream.start_time is not None else t0
    return start + float(stream.duration * tb) - t0


def _stream_span(stream: av.stream.Stream, container: av.container.InputContainer
                 ) -> tuple[float, float]:
    """(start, end) in seconds on the container timeline from header metadata."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if (stream.start_time is not None and tb) else None
    if start is None:
        start = container.start_time / av.time_base if container.start_time is not None else 0.0
    if stream.duration is not None and stream.duration > 0 and tb:
        end = start + float(stream.duration * tb)
    elif container.duration is not None and container.duration > 0:
        c0 = container.start_time / av.time_base if container.start_time is not None else 0.0
        end = c0 + container.duration / av.time_base
    else:
        end = start
    return start, end


def _time_origin(container: av.container.InputContainer) -> float:
    starts = [_stream_span(s, container)[0]
              for s in (container.streams.video[:1] + container.streams.audio[:1])]
    return min(starts) if starts else 0.0


def _display_rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation of a decoded frame, snapped to 0/90/180/270."""
    try:
        rot = frame.rotation
    except (AttributeError, av.FFmpegError):  # pragma: no cover - older PyAV
        return 0
    if not rot:
        return 0
    return round(rot / 90.0) % 4 * 90


def probe(path: str | os.PathLike, require_video: bool = True,
          limits: MediaLimits | None = None) -> MediaInfo:
    """Read the headers (and decode one frame for the rotation) of a media file.

    Raises:
        InputError('unreadable'): missing file, not media, or damaged header.
        InputError('no_video'): ``require_video`` and the file has no video stream.
        InputError('timing' | 'too_long' | 'too_large'): beyond ``limits``, told from
            the headers (nothing large is decoded).
    """
    p = Path(path)
    lim = _limits(limits)
    with _open(p) as c:
        vs = c.streams.video[0] if c.streams.video else None
        as_ = c.streams.audio[0] if c.streams.audio else None
        if vs is None and as_ is None:
            raise InputError("unreadable", f"{p.name} contains no audio or video stream.",
                             _UNREADABLE_FIX)
        if vs is None and require_video:
            raise InputError("no_video", f"{p.name} has no video track (audio only?).",
                             "Use a video of the person talking to the camera "
                             "(mp4, mov, mkv, webm or mpg).")
        t0 = _check_headers(c, p.name, lim)
        ends: list[float] = []
        info: dict = {"path": p, "container": c.format.name, "has_video": vs is not None,
                      "has_audio": as_ is not None, "t0": t0,
                      "metadata": {str(k): str(v) for k, v in c.metadata.items()}}
        if vs is not None:
            _, vend = _stream_span(vs, c)
            ends.append(vend)
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            rotation, w, h = 0, vs.codec_context.width, vs.codec_context.height
            try:
                _open_decoder(vs, p.name, lim)
                first = next(c.decode(vs))
                rotation, w, h = _display_rotation(first), first.width, first.height
            except (StopIteration, av.FFmpegError, ValueError) as exc:
                raise InputError("unreadable", f"{p.name}: the video track cannot be decoded.",
                                 _UNREADABLE_FIX) from exc
            if rotation in (90, 270):
                w, h = h, w
            info.update(fps=float(rate) if rate else 0.0,
                        nominal_fps=float(vs.base_rate) if vs.base_rate else 0.0,
                        width=int(w), height=int(h), rotation=rotation,
                        video_codec=vs.codec_context.name, num_video_frames=int(vs.frames or 0),
                        video_end_s=vend - t0)
        if as_ is not None:
            _, aend = _stream_span(as_, c)
            ends.append(aend)
            info.update(audio_codec=as_.codec_context.name,
                        audio_sample_rate=int(as_.codec_context.sample_rate or as_.rate or 0),
                        audio_channels=int(as_.codec_context.channels or 0),
                        audio_end_s=aend - t0)
        if c.duration is not None and c.duration > 0:
            info["duration_s"] = c.duration / av.time_base
        else:
            info["duration_s"] = max(ends) - t0 if ends else 0.0
    return MediaInfo(**info)


def num_frames(info: MediaInfo, fps: float = 25.0) -> int:
    """Frame count T of a clip at ``fps``: ``floor(min(video_end, audio_end) * fps)``.

    Without audio: ``floor(video_end * fps)``. Ends are relative to the time origin.
    """
    if not info.has_video:
        return 0
    end = info.video_end_s
    if info.has_audio:
        end = min(end, info.audio_end_s)
    return max(0, math.floor(end * fps + _EPS))


# ----------------------------------------------------------------------------- video
def _target_size(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        w = h = int(size)
    else:
        w, h = (int(s) for s in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return w, h


def _convert(frame: av.VideoFrame, rotation: int, size: tuple[int, int] | None, crop: Crop
             ) -> np.ndarray:
    """Decoded frame -> (H, W, 3) uint8 RGB, upright, cropped, resized (area filter).

    The YUV matrix follows the frame's colorspace tag (BT.601 when untagged); full-range
    frames are honoured (PyAV treats a plain ``yuv420p`` frame as limited range unless
    told, even when it is tagged full range).
    """
    rng = {"src_color_range": "JPEG"} if frame.color_range == 2 else {}  # AVCOL_RANGE_JPEG
    if crop is None and rotation == 0:  # one swscale pass: YUV -> RGB at the target size
        if size is None:
            return frame.to_ndarray(format="rgb24", **rng)
        return frame.to_ndarray(format="rgb24", width=size[0], height=size[1],
                                interpolation="AREA", **rng)
    img = frame.to_ndarray(format="rgb24", **rng)
    if rotation:
        img = np.rot90(img, k=rotation // 90)
    if crop is not None:
        x0, y0, x1, y1 = crop
        img = img[y0:y1, x0:x1]
    img = np.ascontiguousarray(img)
    if size is not None and (img.shape[1], img.shape[0]) != size:
        img = av.VideoFrame.from_ndarray(img, format="rgb24").to_ndarray(
            format="rgb24", width=size[0], height=size[1], interpolation="AREA")
    return img


def _check_crop(crop: Crop, width: int, height: int, name: str) -> Crop:
    if crop is None:
        return None
    x0, y0, x1, y1 = (round(v) for v in crop)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"crop {crop} is outside the {width}x{height} frame of {name}")
    return x0, y0, x1, y1


def iter_frames(path: str | os.PathLike, fps: float = 25.0, size: Size = None,
                crop: Crop = None, max_frames: int | None = None,
                limits: MediaLimits | None = None) -> Iterator[np.ndarray]:
    """Stream frames resampled to exactly ``fps`` (see the module's timeline rule).

    Args:
        path: video file (mp4, mov, mkv, webm, mpg, ...); CFR or VFR.
        fps: output frame rate (frames/s).
        size: output size: ``None`` (unchanged), ``s`` (``s x s``; stretches a
            non-square input, so crop to a square first) or ``(w, h)`` in pixels.
        crop: ``(x0, y0, x1, y1)`` in displayed source pixels (after rotation),
            applied before resizing.
        max_frames: stop after this many output frames.
        limits: :class:`MediaLimits` (default :data:`DEFAULT_LIMITS`).

    Returns:
        An iterator of ``(H, W, 3) uint8`` RGB frames; it holds at most a few decoded
        frames in memory. The headers are checked eagerly (errors raise on the call).

    Raises:
        InputError('unreadable' | 'no_video' | 'timing' | 'too_long' | 'too_large'
        | 'truncated'); the last four may also come while iterating.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    p = Path(path)
    lim = _limits(limits)
    with _open(p) as c:
        if not c.streams.video:
            raise InputError("no_video", f"{p.name} has no video track.",
                             "Use a video of the person talking to the camera "
                             "(mp4, mov, mkv, webm or mpg).")
        _check_headers(c, p.name, lim)
    return _iter_frames(p, fps, _target_size(size), crop, max_frames, lim)


def _iter_frames(p: Path, fps: float, tsize: tuple[int, int] | None, crop: Crop,
                 max_frames: int | None, lim: MediaLimits) -> Iterator[np.ndarray]:
    limit = math.inf if max_frames is None else int(max_frames)
    if limit <= 0:
        return
    c = _open(p)
    prev = None                      # (ts, frame) most recent source frame
    declared_end: float | None = None
    try:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        _open_decoder(vs, p.name, lim)
        t0 = _time_origin(c)
        declared_end = _declared_end(vs, t0)
        tb = float(vs.time_base) if vs.time_base else None
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        nominal_dt = 1.0 / float(rate) if rate else 1.0 / 25.0

        i = 0                        # next output frame index
        prev_img: np.ndarray | None = None
        last_dt = nominal_dt
        rotation = 0
        checked_crop: Crop = None
        pending: list[tuple[int, np.ndarray]] = []
        first_img: np.ndarray | None = None

        def image_of(frame: av.VideoFrame) -> np.ndarray:
            return _convert(frame, rotation, tsize, checked_crop)

        def flush(end_known: float) -> Iterator[np.ndarray]:
            nonlocal pending
            while pending and (pending[0][0] + 1) / fps <= end_known + _EPS:
                yield pending.pop(0)[1]
            # entries past end_known wait until the stream end is known better

        n_src = 0
        for frame in c.decode(vs):
            if frame.pts is not None and tb:
                ts = frame.pts * tb - t0
            else:
                ts = (prev[0] + nominal_dt) if prev is not None else 0.0
            if prev is not None and ts <= prev[0]:
                continue  # duplicate / non-monotonic timestamp: keep the earlier frame
            # bounds: the pending list and the work both grow with these, not the file
            if frame.width * frame.height > lim.max_pixels:
                raise _too_large(p.name, frame.width, frame.height, lim.max_pixels)
            if prev is None and ts > lim.max_start_offset_s:
                raise _timing(p.name, f"its first video frame is at {_fmt_s(ts)} (the limit "
                              f"is {lim.max_start_offset_s:g} s).")
            if prev is not None and ts - prev[0] > lim.max_gap_s:
                raise _timing(p.name, f"its video jumps from {_fmt_s(prev[0])} to "
                              f"{_fmt_s(ts)} (gaps up to {lim.max_gap_s:g} s are accepted).")
            if ts > lim.max_seconds:
                raise InputError("too_long", f"{p.name}: its video runs past the limit of "
                                 f"{lim.max_seconds:.0f} s.", "Trim it to the part you need.")
            if n_src == 0:
                rotation = _display_rotation(frame)
                w, h = frame.width, frame.height
                if rotation in (90, 270):
                    w, h = h, w
                checked_crop = _check_crop(crop, w, h, p.name)
            n_src += 1
            if prev is not None:
                last_dt = ts - prev[0]
            # output times t_i < ts are shown by prev (or this frame if it is the first)
            while i < limit and i / fps < ts - _EPS:
                if prev is None:  # before the first frame: show the first frame
                    if first_img is None:
                        first_img = image_of(frame)
                    src_img = first_img
                else:
                    if prev_img is None:
                        prev_img = image_of(prev[1])
                    src_img = prev_img
                pending.append((i, src_img))
                i += 1
            # a frame exists at ts, so the video lasts at least until ts
            yield from flush(ts)
            if i >= limit and not pending:
                return
            prev, prev_img = (ts, frame), (first_img if prev is None else None)
        if prev is None:
            raise InputError("unreadable", f"{p.name}: no video frame could be decoded.",
                             _UNREADABLE_FIX)
        dur = prev[1].duration
        last = dur * tb if (dur and tb) else last_dt
        end = prev[0] + last
        if declared_end is not None and end < declared_end - lim.truncation_tolerance_s:
            raise _truncated(p.name, "video", end, declared_end)
        while i < limit and (i + 1) / fps <= end + _EPS:
            if prev_img is None:
                prev_img = image_of(prev[1])
            pending.append((i, prev_img))
            i += 1
        yield from flush(end)
    except av.FFmpegError as exc:
        if (prev is not None and declared_end is not None
                and prev[0] < declared_end - lim.truncation_tolerance_s):
            raise _truncated(p.name, "video", float(prev[0]), declared_end) from exc
        raise InputError("unreadable", f"{p.name}: decoding failed ({exc}).",
                         _UNREADABLE_FIX) from exc
    finally:
        c.close()


class FrameLoop:
    """Random access to the frames of a short video written by :func:`write_video` with
    ``keyint=chunk`` (constant ``fps``, a key frame every ``chunk`` frames), in bounded
    memory: a frame is decoded with the rest of its ``chunk``-frame group, and only the
    last ``keep`` groups stay decoded. Reading the frames forwards or backwards (a
    ping-pong loop) decodes each group once per pass.

    ``loop[i]`` -> (H, W, 3) uint8 RGB of frame ``i`` (0 <= i < ``num_frames``). Not for
    several threads at once. Close it (or use it as a context manager) to free the file.

    Raises:
        InputError('corrupt'): the file lacks frames it should hold.
    """

    def __init__(self, path: str | os.PathLike, num_frames: int, chunk: int,
                 fps: float = 25.0, keep: int = 1) -> None:
        self.path, self.num_frames, self.chunk = Path(path), int(num_frames), int(chunk)
        self.fps, self.keep = float(fps), max(1, int(keep))
        self._c = _open(self.path)
        self._vs = self._c.streams.video[0]
        self._vs.thread_type = "AUTO"
        self._tb = float(self._vs.time_base)
        self._t0 = _time_origin(self._c)
        self._groups: dict[int, list[np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} outside 0..{self.num_frames - 1}")
        g = i // self.chunk
        if g not in self._groups:
            if len(self._groups) >= self.keep:
                self._groups.pop(next(iter(self._groups)))
            self._groups[g] = self._decode(g)
        else:  # most recently used last
            self._groups[g] = self._groups.pop(g)
        return self._groups[g][i - g * self.chunk]

    def _decode(self, g: int) -> list[np.ndarray]:
        first, want = g * self.chunk, min(self.chunk, self.num_frames - g * self.chunk)
        self._c.seek(max(0, int((first / self.fps + self._t0) / self._tb)), stream=self._vs,
                     backward=True, any_frame=False)
        out: list[np.ndarray] = []
        try:
            for frame in self._c.decode(self._vs):
                if frame.pts is None:
                    continue
                idx = round((frame.pts * self._tb - self._t0) * self.fps)
                if idx < first + len(out):
                    continue
                if idx > first + len(out):
                    break
                out.append(_convert(frame, 0, None, None))
                if len(out) == want:
                    break
        except av.FFmpegError as exc:
            raise InputError("corrupt", f"{self.path.name}: decoding failed ({exc}).",
                             "Create the avatar again.") from exc
        if len(out) != want:
            raise InputError("corrupt", f"{self.path.name}: frames {first}..{first + want - 1} "
                             f"expected, {len(out)} decoded.", "Create the avatar again.")
        return out

    def close(self) -> None:
        self._groups.clear()
        self._c.close()

    def __enter__(self) -> "FrameLoop":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- audio
def _decode_audio(c: av.container.InputContainer, name: str, sample_rate: int, t0: float,
                  align: bool, lim: MediaLimits, duration: float | None = None) -> np.ndarray:
    """Decode the first audio stream to float32 mono at ``sample_rate``, sample 0 at the
    time origin ``t0`` when ``align`` (else at the stream's first sample).

    At most ``lim.max_seconds`` of output are kept (more raises 'too_long'), or the first
    ``duration`` seconds when given (no error); start offsets and gaps beyond the limits
    raise 'timing'. Channels are averaged (stereo -> (L+R)/2): libswresample's own mono
    down-mix uses 0.707*(L+R), which can clip, and mishandles layouts of unknown order.
    """
    if not c.streams.audio:
        raise InputError("no_audio", f"{name} has no audio track.", _NO_AUDIO_FIX)
    st = c.streams.audio[0]
    declared_end = _declared_end(st, t0)
    cap = (math.ceil(lim.max_seconds * sample_rate) + sample_rate  # hard cap, + 1 s slack
           if math.isfinite(lim.max_seconds) else math.inf)
    want = None if duration is None else max(0, round(duration * sample_rate))
    resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
    chunks: list[np.ndarray] = []
    total = 0                  # output samples kept (after the alignment shift)
    src_t: float | None = None  # source time (s) where the next decoded frame should start

    def stopped_early() -> bool:
        """The decoded audio ends before the declared end (beyond the tolerance)."""
        return (src_t is not None and declared_end is not None
                and src_t - t0 < declared_end - lim.truncation_tolerance_s)

    def keep(block: np.ndarray) -> bool:
        """Append; False once ``duration`` is reached."""
        nonlocal total
        if want is not None and total + block.shape[0] >= want:
            chunks.append(block[: want - total])
            total = want
            return False
        chunks.append(block)
        total += block.shape[0]
        if total > cap:
            raise too_long(name, total / sample_rate, lim.max_seconds, "(audio)")
        return True

    try:
        for frame in c.decode(st):
            t = float(frame.pts * frame.time_base) if (frame.pts is not None
                                                       and frame.time_base) else None
            if src_t is None:  # first frame: place it on the timeline
                start = (t - t0) if t is not None else 0.0
                if start > lim.max_start_offset_s:
                    raise _timing(name, f"its audio starts at {_fmt_s(start)} (the limit is "
                                  f"{lim.max_start_offset_s:g} s).")
                shift = round(start * sample_rate) if align else 0
                if shift > 0 and not keep(np.zeros(shift, np.float32)):
                    break
                skip = -shift if shift < 0 else 0
                src_t = t if t is not None else 0.0
            elif t is not None and t - src_t > lim.max_gap_s:
                raise _timing(name, f"its audio jumps from {_fmt_s(src_t - t0)} to "
                              f"{_fmt_s(t - t0)} (gaps up to {lim.max_gap_s:g} s are accepted).")
            if frame.sample_rate:
                src_t = (t if t is not None else src_t) + frame.samples / frame.sample_rate
            done = False
            for out in resampler.resample(frame):
                block = out.to_ndarray().mean(axis=0)
                if skip:
                    block, skip = block[skip:], max(0, skip - block.shape[0])
                if not keep(block):
                    done = True
                    break
            if done:
                break
        else:
            for out in resampler.resample(None):
                keep(out.to_ndarray().mean(axis=0))
            if want is None and stopped_early():
                raise _truncated(name, "audio", src_t - t0, declared_end)
    except av.FFmpegError as exc:
        if stopped_early():  # the decoder failed part way: the file was cut there
            raise _truncated(name, "audio", src_t - t0, declared_end) from exc
        raise InputError("unreadable", f"{name}: the audio track cannot be decoded ({exc}).",
                         _UNREADABLE_FIX) from exc
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else \
        np.zeros(0, np.float32)
    if audio.size == 0:
        raise InputError("no_audio", f"{name} has an audio track with no samples.", _NO_AUDIO_FIX)
    return audio


def read_audio(path: str | os.PathLike, sample_rate: int = 16000,
               limits: MediaLimits | None = None, duration: float | None = None) -> np.ndarray:
    """Read any audio file (wav, mp3, m4a, flac, ogg, ...) or a video's audio track.

    Args:
        path: the file.
        sample_rate: output rate (Hz).
        limits: :class:`MediaLimits` (default :data:`DEFAULT_LIMITS`); audio longer than
            ``limits.max_seconds`` raises 'too_long' (from the header when it says so,
            else as soon as decoding passes the limit).
        duration: read only the first this many seconds (s; no error for longer files).

    Returns:
        ``(N,) float32`` mono in about [-1, 1] (resampling a clipped source can
        overshoot slightly; not clipped) at ``sample_rate`` Hz. For a file with video,
        sample 0 is at the time origin shared with :func:`iter_frames` (leading
        silence is inserted / early samples dropped if the audio starts late / early).

    Raises:
        InputError('unreadable' | 'no_audio' | 'timing' | 'too_long' | 'too_large'
        | 'truncated').
    """
    p = Path(path)
    lim = _limits(limits)
    with _open(p) as c:
        if duration is None:
            t0 = _check_headers(c, p.name, lim)
        else:  # only the first seconds are read: the total length does not matter
            t0 = _check_headers(c, p.name, lim.with_seconds(math.inf))
        return _decode_audio(c, p.name, sample_rate, t0, bool(c.streams.video), lim, duration)


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad a 1-D signal to exactly ``n`` samples."""
    if audio.shape[0] >= n:
        return audio[:n]
    return np.concatenate([audio, np.zeros(n - audio.shape[0], audio.dtype)])


@dataclass
class Clip:
    """A short clip in memory, frames and audio exactly aligned.

    Attributes:
        frames: ``(T, H, W, 3) uint8`` RGB at ``fps``.
        audio: ``(T * sample_rate / fps,) float32`` mono (640 samples per frame at
            16 kHz / 25 fps), trimmed or zero-padded to that length.
        fps: frames/s; sample_rate: Hz; info: the source's :class:`MediaInfo`.
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    info: MediaInfo

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def samples_per_frame(self) -> int:
        return round(self.sample_rate / self.fps)


def read_clip(path: str | os.PathLike, fps: float = 25.0, sample_rate: int = 16000,
              size: Size = None, crop: Crop = None, max_frames: int | None = None,
              max_bytes: int = 3 << 30, limits: MediaLimits | None = None) -> Clip:
    """Read a short talking clip fully: T frames + exactly T * sample_rate/fps samples.

    ``T = floor(min(video_end, audio_end) * fps)`` (capped by ``max_frames``, and by
    the frames actually decodable). For long clips use :func:`iter_frames`.

    Raises:
        InputError('unreadable' | 'no_video' | 'no_audio' | 'timing' | 'too_large'
        | 'truncated'), InputError('too_long') beyond ``limits.max_seconds`` or when the
        frames would need more than ``max_bytes`` of memory.
    """
    spf = sample_rate / fps
    if abs(spf - round(spf)) > 1e-9:
        raise ValueError(f"sample_rate/fps must be an integer, got {sample_rate}/{fps}")
    spf_i = round(spf)
    info = probe(path, limits=limits)
    if not info.has_audio:
        raise InputError("no_audio", f"{info.path.name} has no audio track.", _NO_AUDIO_FIX)
    T = num_frames(info, fps)
    if max_frames is not None:
        T = min(T, int(max_frames))
    w, h = _target_size(size) or (
        (crop[2] - crop[0], crop[3] - crop[1]) if crop else (info.width, info.height))
    need = T * w * h * 3
    if need > max_bytes:
        raise InputError("too_long", f"{info.path.name}: {T} frames of {w}x{h} need "
                         f"{need / 2**30:.1f} GiB of memory.",
                         "Use a shorter clip, a smaller size, or stream it with iter_frames().")
    frames = np.empty((T, h, w, 3), np.uint8)
    n = 0
    for n, img in enumerate(iter_frames(path, fps=fps, size=size, crop=crop, max_frames=T,
                                        limits=limits), 1):
        frames[n - 1] = img
    frames = frames[:n]
    audio = fit_length(read_audio(path, sample_rate, limits=limits, duration=n / fps), n * spf_i)
    return Clip(frames=frames, audio=audio, fps=fps, sample_rate=sample_rate, info=info)


# ----------------------------------------------------------------------------- writing
def _video_codec(pix_fmt: str) -> str:
    if pix_fmt in ("rgb24", "bgr24", "bgr0"):
        if "libx264rgb" not in av.codecs_available:
            raise RuntimeError("pix_fmt 'rgb24' needs libx264rgb, missing from this PyAV build")
        return "libx264rgb"
    for name in ("libx264", "libopenh264", "mpeg4"):
        if name in av.codecs_available:
            return name
    raise RuntimeError("no H.264 or MPEG-4 encoder in this PyAV build")


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 25.0,
                audio: np.ndarray | None = None, sample_rate: int = 16000,
                metadata: dict[str, str] | None = None, crf: int = 18,
                pix_fmt: str = "yuv420p", preset: str = "medium",
                audio_bitrate: int = 96_000, keyint: int | None = None) -> Path:
    """Write an mp4 (H.264 + AAC) atomically: a temp file in the same folder, then rename.

    Args:
        path: output ``.mp4``.
        frames: iterable of ``(H, W, 3) uint8`` RGB, all the same size (streamed; a
            generator is fine). 4:2:0 needs even width and height.
        fps: frames/s.
        audio: optional ``(N,) float32`` mono in about [-1, 1] (resampling a clipped source can
        overshoot slightly; not clipped) at ``sample_rate``; it is
            trimmed / zero-padded to ``T * sample_rate / fps`` so sample ``640*i`` starts
            with frame ``i`` (16 kHz / 25 fps).
        metadata: container tags, e.g. ``{'title': ..., 'comment': ...}``; any key is
            kept (mp4 ``use_metadata_tags``).
        crf: x264 constant rate factor (0 = lossless, 18 = visually lossless).
        pix_fmt: ``'yuv420p'`` (plays everywhere), ``'yuv444p'`` (no chroma
            subsampling; with ``crf=0`` near-lossless) or ``'rgb24'`` (libx264rgb,
            lossless RGB with ``crf=0``).
        preset: x264 speed preset.
        audio_bitrate: AAC bit rate (bit/s).
        keyint: a key frame every ``keyint`` frames exactly (libx264; None = x264's
            default), so :class:`FrameLoop` decodes any frame from at most ``keyint``.

    Returns:
        The final path. On any error the temp file is removed and nothing is left.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    codec = _video_codec(pix_fmt)
    spf = sample_rate / fps
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if abs(spf - round(spf)) > 1e-9:
            raise ValueError(f"sample_rate/fps must be an integer, got {sample_rate}/{fps}")
    with atomic_file(out, suffix=".tmp.mp4") as tmp:
        _write_mp4(tmp, frames, fps, audio, sample_rate, metadata, codec, crf, pix_fmt, preset,
                   audio_bitrate, keyint=keyint)
    return out


def _write_mp4(tmp: Path, frames: Iterable[np.ndarray], fps: float, audio: np.ndarray | None,
               sample_rate: int, metadata: dict[str, str] | None, codec: str, crf: int,
               pix_fmt: str, preset: str, audio_bitrate: int, fmt: str = "mp4",
               start: int = 0, tune: str | None = None, keyint: int | None = None) -> None:
    """Encode into ``tmp`` (closing the container even on failure). ``fmt``: ``'mp4'`` or
    ``'mpegts'``; ``start``: index of the first frame (its timestamp, and the audio sample
    ``start * sample_rate / fps`` it starts with)."""
    spf = sample_rate / fps
    c = None
    try:
        opts = {"movflags": "+faststart+use_metadata_tags"} if fmt == "mp4" else {}
        c = av.open(str(tmp), mode="w", format=fmt, options=opts)
        for k, v in (metadata or {}).items():
            c.metadata[str(k)] = str(v)
        vs = None
        as_ = None
        a_pos = start * round(spf)  # audio samples sent to the encoder
        rate = Fraction(fps).limit_denominator(100000)
        for n, img in enumerate(frames):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"frames must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
            if vs is None:
                h, w = img.shape[:2]
                if pix_fmt.endswith("420p") and (w % 2 or h % 2):
                    raise ValueError(f"{pix_fmt} needs an even frame size, got {w}x{h}")
                vs = c.add_stream(codec, rate=rate)
                vs.width, vs.height = w, h
                vs.pix_fmt = "yuv420p" if codec == "libopenh264" else pix_fmt
                if codec.startswith("libx264"):
                    vs.options = {"crf": str(int(crf)), "preset": preset,
                                  **({"tune": tune} if tune else {}),
                                  **({"x264-params": f"keyint={int(keyint)}:min-keyint="
                                      f"{int(keyint)}:scenecut=0"} if keyint else {})}
                elif codec == "mpeg4":
                    vs.codec_context.qscale = max(1, min(31, 1 + crf // 3))
                else:
                    vs.bit_rate = 8 * w * h * round(fps) // 10
                if codec != "libx264rgb":
                    cc = vs.codec_context  # tag what the RGB->YUV conversion below does
                    cc.colorspace = 6        # AVCOL_SPC_SMPTE170M (BT.601 matrix)
                    cc.color_primaries = 6   # AVCOL_PRI_SMPTE170M
                    cc.color_trc = 6         # AVCOL_TRC_SMPTE170M
                    cc.color_range = 1       # AVCOL_RANGE_MPEG (limited, 16-235)
                if audio is not None:
                    as_ = c.add_stream("aac", rate=sample_rate, layout="mono")
                    as_.bit_rate = audio_bitrate
            elif img.shape[:2] != (vs.height, vs.width):
                raise ValueError(f"frame {n} is {img.shape[1]}x{img.shape[0]}, "
                                 f"expected {vs.width}x{vs.height}")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if codec != "libx264rgb":
                vf = vf.reformat(format=vs.pix_fmt, dst_colorspace="ITU601",
                                 dst_color_range="MPEG")
            vf.pts = start + n
            for pkt in vs.encode(vf):
                c.mux(pkt)
            if as_ is not None:  # interleave: audio up to the end of frame n
                a_pos = _encode_audio(c, as_, audio, a_pos, (start + n + 1) * round(spf),
                                      sample_rate)
        if vs is None:
            raise ValueError("write_video got no frames")
        for pkt in vs.encode(None):
            c.mux(pkt)
        if as_ is not None:
            for pkt in as_.encode(None):
                c.mux(pkt)
        c.close()
        c = None
    except BaseException:
        if c is not None:
            with contextlib.suppress(Exception):  # best effort while failing anyway
                c.close()
        raise


def write_segment(path: str | os.PathLike, frames: Sequence[np.ndarray], start: int,
                  fps: float = 25.0, audio: np.ndarray | None = None, sample_rate: int = 16000,
                  crf: int = 18, preset: str = "veryfast", audio_bitrate: int = 96_000) -> Path:
    """Write frames ``start .. start + len(frames) - 1`` of a video as one self-contained
    MPEG-TS segment (H.264 4:2:0 + AAC), atomically.

    Timestamps continue from ``start`` (frame ``i`` at ``i / fps`` s) and the segment carries
    the audio samples of its frames (``audio`` is the *whole* track, as for
    :func:`write_video`), so segments play one by one (an HLS playlist) and their
    concatenation is one playable stream. ``tune=zerolatency``: no frames held back by the
    encoder's look-ahead.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not len(frames):
        raise ValueError("write_segment got no frames")
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    with atomic_file(out, suffix=".tmp.ts") as tmp:
        _write_mp4(tmp, frames, fps, audio, sample_rate, None, _video_codec("yuv420p"), crf,
                   "yuv420p", preset, audio_bitrate, fmt="mpegts", start=start,
                   tune="zerolatency")
    return out


def media_seconds(path: str | os.PathLike) -> float:
    """Playing time of a short media file such as a :func:`write_segment` segment (s): the
    summed durations of its video packets (demuxed, not decoded), else the container's
    duration.

    Raises:
        InputError: the file cannot be opened or holds no timing.
    """
    try:
        with av.open(str(path)) as c:
            if c.streams.video:
                vs = c.streams.video[0]
                tot = sum(int(p.duration or 0) for p in c.demux(vs) if p.size)
                if tot > 0 and vs.time_base is not None:
                    return float(tot * vs.time_base)
            if c.duration:
                return c.duration / av.time_base
    except av.error.FFmpegError as e:
        raise InputError("unreadable", f"{Path(path).name} cannot be read as media ({e}).",
                         "Write it again.") from None
    raise InputError("unreadable", f"{Path(path).name} holds no timing.", "Write it again.")


class SegmentStream:
    """A video written as it is made: numbered MPEG-TS segments (:func:`write_segment`) of
    ``segment_frames`` frames in ``folder`` (the first one ``first_frames`` long, so it is
    ready sooner) and ``playlist.m3u8``, an HLS event playlist rewritten atomically after
    every segment and closed (``#EXT-X-ENDLIST``) by :meth:`close`. A run stopped at any
    point leaves a playable prefix: the playlist, or the segments concatenated in order.

    ``add(frame)`` returns the path of the segment it completed, else None.
    """

    PLAYLIST = "playlist.m3u8"

    def __init__(self, folder: str | os.PathLike, fps: float = 25.0,
                 audio: np.ndarray | None = None, sample_rate: int = 16000,
                 segment_frames: int = 25, first_frames: int | None = None) -> None:
        if segment_frames < 1:
            raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fps, self.audio, self.sample_rate = fps, audio, sample_rate
        self.segment_frames = segment_frames
        self.first_frames = segment_frames if first_frames is None else max(1, first_frames)
        self.segments: list[tuple[Path, int]] = []  # (path, frames)
        self._pending: list[np.ndarray] = []
        self._next = 0  # index of the first pending frame

    def add(self, frame: np.ndarray) -> Path | None:
        self._pending.append(frame)
        want = self.first_frames if not self.segments else self.segment_frames
        return self._flush() if len(self._pending) >= want else None

    def close(self) -> Path | None:
        """Write the last (shorter) segment, if any, and end the playlist."""
        last = self._flush() if self._pending else None
        self._write_playlist(ended=True)
        return last

    def _flush(self) -> Path:
        path = self.folder / f"segment_{len(self.segments):05d}.ts"
        write_segment(path, self._pending, self._next, self.fps, self.audio, self.sample_rate)
        self.segments.append((path, len(self._pending)))
        self._next += len(self._pending)
        self._pending = []
        self._write_playlist(ended=False)
        return path

    def _write_playlist(self, ended: bool) -> None:
        from core.atomic import write_text

        longest = max((n for _, n in self.segments), default=1) / self.fps
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT",
                 f"#EXT-X-TARGETDURATION:{math.ceil(longest)}", "#EXT-X-MEDIA-SEQUENCE:0"]
        for path, n in self.segments:
            lines += [f"#EXTINF:{n / self.fps:.3f},", path.name]
        if ended:
            lines.append("#EXT-X-ENDLIST")
        write_text(self.folder / self.PLAYLIST, "\n".join(lines) + "\n")


def _encode_audio(c: av.container.OutputContainer, stream: av.audio.stream.AudioStream,
                  audio: np.ndarray, start: int, stop: int, sample_rate: int) -> int:
    """Encode samples [start, stop) of ``audio`` (zero beyond its end); returns stop."""
    if stop <= start:
        return start
    chunk = audio[start:stop]
    if chunk.shape[0] < stop - start:
        chunk = np.concatenate([chunk, np.zeros(stop - start - chunk.shape[0], np.float32)])
    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None, :]), format="flt",
                                    layout="mono")
    af.sample_rate = sample_rate
    af.pts = start
    for pkt in stream.encode(af):
        c.mux(pkt)
    return stop


__all__: Sequence[str] = (
    "DEFAULT_LIMITS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "MediaInfo",
    "MediaLimits",
    "fit_length",
    "iter_frames",
    "media_seconds",
    "num_frames",
    "probe",
    "read_audio",
    "read_clip",
    "SegmentStream",
    "too_long",
    "write_segment",
    "write_video",
)
