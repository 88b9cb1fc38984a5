"""Driving an avatar with new audio (METHOD.md §7).

``python -m core.synthesize AVATAR AUDIO --out video.mp4 [--frame full|crop] [--blend lower-face|box] [--stream DIR]``
``python -m core.synthesize AVATAR --text "..." [--voice NAME | --lang CODE] [--rate R] --out video.mp4``

Any audio file (wav, mp3, m4a, flac, ogg) or the audio track of a video, any sample rate and
length: it is resampled to 16 kHz, cut into ``T = ceil(seconds * 25)`` frames (zero-padded
to ``640 T`` samples), turned into the avatar's audio feature type, and drives the motion
fields; an avatar with a mouth drive gets its mouth code predicted from the audio and its
fields' own audio input held at the features of silence (:func:`field_audio`). Poses,
expression signals and torso/background plates come from the avatar's own frames looped
ping-pong (0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...: no jump). Each frame is the
face and mouth rendering composited over the plate (mouth alpha dilated); the mp4 carries the
audio, frame ``i`` starting at sample ``640 i``, a visible "AI-generated" mark on every frame
and the same statement in its metadata. Typed text is spoken first by an offline voice
(:mod:`core.data.speech`); that audio drives the avatar like a recording, and the mark and
the metadata then say that the voice is synthetic too.

Full frame (``frame='full'``, the default): the video has the recording's own size and
aspect (long side at most 1920 px, even sides). Each rendered crop is resized into the crop
box of the avatar's recorded frame that its plate came from (the training span looped the
same way, read a key-frame group at a time so memory stays bounded) and blended in with
:func:`full_frame_alpha`: by default only the lower face (lips, jaw, cheeks: what the audio
drives), from that frame's tracked landmarks, so eyes, hair, torso and background keep the
recording's own pixels and sharpness; ``blend='box'`` puts the whole crop back with a
feathered edge. Avatars made without the recorded frames render the crop, with a note.

Speed (:class:`TalkConfig`): the motion fields' per-avatar constants are computed once and
the audio-driven part runs for 16 frames per call; frames are rasterized on one thread per
core (each single-threaded), composited over the plate only where the head is, and
encoded on a thread of their own. The frames equal those of the per-frame path
(:func:`render_frames`, kept as the reference) up to float32 rounding. With ``stream_dir``
the video is also written as it is made, in short segments with an HLS playlist.
"""
from __future__ import annotations

import argparse
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from core.data.audio import AudioFeatureConfig, AudioFeatureSpec
from core.data.features import audio_features, feature_config, feature_spec
from core.device import DEVICE_HELP, resolve_device
from core.raster.render import RASTER_CHOICES, RASTER_HELP, raster_backend
from core.model.avatar import MAX_RENDER_RES, MIN_RENDER_RES, Avatar, load_avatar
from core.errors import InputError
from core.model.head import DrivenFrames, FrameCond, InferenceHead, render_frame
from core.model.lead_codes import LeadCodes, LeadConfig
from core.model.motion_field import audio_windows
from core.progress import ProgressFn, run_cli_job

AI_STATEMENT = ("AI-generated video: a synthetic talking-head avatar (InsTaG) speaking the "
                "given audio. It does not show a real recording.")
MARK_TEXT = "AI-generated"
#: The mark when the voice was synthesized from text.
VOICE_MARK_TEXT = "AI-generated, synthetic voice"


def ai_statement(synthetic_voice: str | None = None) -> str:
    """The metadata statement; with ``synthetic_voice`` (e.g. the voice's description) it
    says that the voice is synthetic too."""
    if not synthetic_voice:
        return AI_STATEMENT
    return (AI_STATEMENT.replace("speaking the given audio", "speaking typed text") +
            f" The voice is synthetic too: {synthetic_voice}.")


@dataclass(frozen=True)
class TalkConfig:
    """How driven frames are made (none of it changes the frames beyond float32 rounding).

    batch: frames whose motion fields are evaluated in one call (16).
    workers: threads rasterizing frames side by side, each running torch single-threaded;
        None = ``torch.get_num_threads()`` (one per core PyTorch would use).
    tile: rasterizer tile edge in pixels (8: less work on the small splats of a head
        than gsplat's 16).
    segment_frames: frames per stream segment (25 = 1 s); first_segment_frames: the
        first one (10 = 0.4 s), so playing starts sooner.
    lead: a streamed Talk of long audio drives its first frames from the audio's first
        seconds while the whole file's front end runs beside the render
        (:class:`core.model.lead_codes.LeadCodes`), so the first segment does not wait for
        it; without a stream folder the whole file is read first.
    full_preset: x264 preset of full-frame output ("veryfast": a 1080p frame costs about
        as much to encode as to render at 256² with "medium"); crop output keeps "medium".
    full_queue: finished full frames waiting for the encoder at most (8: about 50 MB at
        1080p; crop output allows 64 small ones).
    reference: render with the per-frame path (:func:`render_frames`) instead: one frame at
        a time, fields evaluated frame by frame, encoding on the same thread (the baseline
        the benchmark compares with).
    """

    batch: int = 16
    workers: int | None = None
    tile: int = 8
    segment_frames: int = 25
    first_segment_frames: int = 10
    lead: LeadConfig = LeadConfig()
    reference: bool = False
    full_preset: str = "veryfast"
    full_queue: int = 8


#: What ``frame=`` accepts: the source's own frame with the head put back, or the crop.
FRAME_MODES = ("full", "crop")
#: What ``blend=`` accepts in full-frame mode (see :func:`full_frame_alpha`).
BLEND_MODES = ("lower-face", "box")
#: What ``head_res=`` accepts besides a side in pixels (see :func:`head_resolution`).
HEAD_RES_MODES = ("auto", "avatar", "native")
#: The largest head render of ``head_res='native'`` (px): the crop box's own side up to this.
MAX_HEAD_RES = 512


def check_head_res(head_res: str | int) -> str | int:
    """``head_res`` as :func:`head_resolution` takes it (digits become an int).

    Raises:
        ValueError: neither one of :data:`HEAD_RES_MODES` nor a side of 16-2048 px."""
    if isinstance(head_res, str) and head_res.isdigit():
        head_res = int(head_res)
    span = f"{MIN_RENDER_RES}-{MAX_RENDER_RES}"
    if isinstance(head_res, int) and not isinstance(head_res, bool):
        if not MIN_RENDER_RES <= head_res <= MAX_RENDER_RES:
            raise ValueError(f"head_res must be {span} px, got {head_res}")
        return head_res
    if head_res not in HEAD_RES_MODES:
        raise ValueError(f"head_res must be one of {HEAD_RES_MODES} or a side in pixels "
                         f"({span}), got {head_res!r}")
    return head_res


def native_head_side(avatar_res: int, box_side: int) -> int:
    """The side (px) of ``head_res='native'``: the crop box's side at the output size, at
    most :data:`MAX_HEAD_RES`, never below the avatar's ``res``."""
    return max(int(avatar_res), min(MAX_HEAD_RES, int(box_side)))


def head_resolution(av: Avatar, frame: str, head_res: str | int, device: torch.device) -> int:
    """The side (px) of the square the head is rendered at.

    ``'avatar'``: the avatar's own ``res``. ``'native'``: in full-frame output, the crop
    box's side at the output size (a 512² source's box is 512 px, a 1080p one's about
    830), at most :data:`MAX_HEAD_RES` and never below the avatar's ``res``: the head is
    drawn with the pixels it will have on screen instead of upscaled. ``'auto'`` (the
    default): ``'native'`` on a GPU, ``'avatar'`` on a CPU, where a 512² head costs several
    times a 256² one and Talk would fall behind real time. An int: that side (16-2048).
    Crop output always has the avatar's ``res`` (its size is the crop's)."""
    head_res = check_head_res(head_res)
    if frame != "full" or av.full is None:
        return av.res
    if isinstance(head_res, int):
        return head_res
    if head_res == "auto":
        head_res = "native" if device.type != "cpu" else "avatar"
    if head_res == "avatar":
        return av.res
    return native_head_side(av.res, av.full.side)


@dataclass
class SynthesisResult:
    """path: the mp4; frames: video frames written; seconds: audio length (s);
    render_fps: frames rendered per second of wall time (rendering only);
    segments: stream segments written (empty without a stream folder); frame: ``'full'``
    or ``'crop'``, what was made; size: its (width, height); note: why a full frame was
    asked for and the crop made (an avatar without the recorded frames), else None."""

    path: Path
    frames: int
    seconds: float
    render_fps: float
    segments: list[Path] = field(default_factory=list)
    frame: str = "crop"
    size: tuple[int, int] = (0, 0)
    note: str | None = None


def pingpong(t: int, n: int) -> int:
    """Index of output frame ``t`` in ``n`` looped frames, bouncing at the ends."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    k = t % period
    return k if k < n else period - k


def draw_mark(frame: np.ndarray, text: str = MARK_TEXT) -> np.ndarray:
    """Stamp a visible label in the bottom-left corner of an (H, W, 3) uint8 frame."""
    import cv2

    h, w = frame.shape[:2]
    scale = max(0.3, w / 640)
    thick = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = max(2, round(0.02 * w)), h - max(2, round(0.02 * h)) - base
    out = np.ascontiguousarray(frame)
    cv2.rectangle(out, (x - 2, y - th - 3), (x + tw + 2, y + base + 1), (0, 0, 0), -1)
    cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    return out


def render_frames(av: Avatar, feats: torch.Tensor, mark: bool | str = True,
                  progress: ProgressFn | None = None,
                  mouth: torch.Tensor | LeadCodes | None = None) -> Iterator[np.ndarray]:
    """Yield the (res, res, 3) uint8 frames driven by per-frame audio windows (T, 16, D)
    and, for a model with a mouth-code input, the mouth codes (T, 4) predicted from the
    same audio (:meth:`core.model.mouth_drive.MouthDrive.predicted`). ``mark``: True
    stamps :data:`MARK_TEXT`, a string stamps that text. Pose, expression
    (upper face) and plate come from the avatar's own frames, looped back and forth."""
    T = feats.shape[0]
    res = av.res
    if av.umf.code_dim and mouth is None:
        raise ValueError("this avatar takes mouth codes: pass mouth=(T, 4)")
    for t in range(T):
        i = pingpong(t, av.num_frames)
        cond = FrameCond(viewmat=av.viewmats[i], K=av.K, width=res, height=res,
                         audio_win=audio_windows(feats, t)[0], expr=av.expr[i],
                         mouth=None if mouth is None else mouth[t])
        plate = av.plates[i].float() / 255.0
        img = render_frame(av.umf, av.ident, cond, plate)
        frame = (img * 255.0).round().to(torch.uint8).cpu().numpy()
        if mark:
            frame = draw_mark(frame, mark if isinstance(mark, str) else MARK_TEXT)
        if progress:
            progress(f"rendering frame {t + 1}/{T}", (t + 1) / T)
        yield frame


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` PyTorch intra-op threads, restoring the count after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def render_frames_fast(av: Avatar, feats: torch.Tensor, mark: bool | str = True,
                       progress: ProgressFn | None = None,
                       mouth: torch.Tensor | LeadCodes | None = None,
                       cfg: TalkConfig = TalkConfig()) -> Iterator[np.ndarray]:
    """:func:`render_frames`, faster: the per-avatar constants of the fields computed once
    (:class:`core.model.head.InferenceHead`), the fields evaluated for ``cfg.batch`` frames
    per call, ``cfg.workers`` threads rasterizing frames side by side (each single-threaded,
    so two cores render two frames), only the box the head covers composited. Frames come
    out in order; the same frames as :func:`render_frames` up to float32 rounding."""
    if not InferenceHead.supports(av.ident):
        yield from render_frames(av, feats, mark, progress, mouth)
        return
    T = feats.shape[0]
    if av.umf.code_dim and mouth is None:
        raise ValueError("this avatar takes mouth codes: pass mouth=(T, 4)")
    workers = max(1, cfg.workers or torch.get_num_threads())
    head = InferenceHead(av.umf, av.ident)
    K = av.K.float()
    depth = 2 * workers + cfg.batch  # frames in flight: bounded memory, workers never idle

    def one(motions, b: int, i: int) -> np.ndarray:
        frame = head.render(motions, b, av.viewmats[i], K, av.plates[i], tile=cfg.tile).numpy()
        if not mark:
            return frame
        return draw_mark(frame, mark if isinstance(mark, str) else MARK_TEXT)

    pending: deque[Future] = deque()
    with _torch_threads(1 if workers > 1 else torch.get_num_threads()), \
            ThreadPoolExecutor(workers, thread_name_prefix="render") as pool:
        try:
            done = 0
            for s in range(0, T, cfg.batch):
                idx = [pingpong(t, av.num_frames) for t in range(s, min(s + cfg.batch, T))]
                motions = head.motions(DrivenFrames(
                    audio_win=audio_windows(feats, torch.arange(s, s + len(idx))),
                    expr=av.expr[idx], mouth=None if mouth is None else mouth[s:s + len(idx)]))
                for b, i in enumerate(idx):
                    pending.append(pool.submit(one, motions, b, i))
                while len(pending) > depth or (pending and pending[0].done()):
                    done += 1
                    yield pending.popleft().result()
                    if progress:
                        progress(f"rendering frame {done}/{T}", done / T)
            while pending:
                done += 1
                yield pending.popleft().result()
                if progress:
                    progress(f"rendering frame {done}/{T}", done / T)
        finally:
            for f in pending:
                f.cancel()


def full_frame_alpha(av: Avatar, i: int, blend: str = "lower-face",
                     feather: float = 0.06) -> np.ndarray:
    """(res, res) float32 weight of the rendered crop over looped frame ``i`` of the
    recording in full-frame output.

    ``'box'``: the whole rendered crop, fading out over the last ``feather`` x side of the
    crop box (:func:`core.data.full_frame.box_feather`). ``'lower-face'`` (the default):
    only the part the audio drives, :func:`core.data.full_frame.lower_face_mask` of frame
    ``i``'s tracked landmarks (so it follows the head pose), times the box fade. Elsewhere
    the recording's own pixels stay: in Talk the upper face, hair, torso and background are
    the person's own training frames looped, at the source's resolution, where a 256²
    render upscaled to a 1080p frame would only blur them.
    """
    from core.data.full_frame import box_feather, lower_face_mask

    res = av.res
    fade = box_feather(res, max(1.0, feather * res))
    if blend == "box":
        return fade
    if blend != "lower-face":
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    assert av.landmarks is not None
    return lower_face_mask(av.landmarks[i].numpy() * res, res) * fade


def full_frames(av: Avatar, crops: Iterator[np.ndarray], mark: bool | str = True,
                blend: str = "lower-face") -> Iterator[np.ndarray]:
    """The rendered crops ``crops`` (output frame t shows looped frame
    ``pingpong(t, n)``) put back into the avatar's recorded frames: (H, W, 3) uint8 at
    ``av.full``'s size, the mark stamped on the full frame. The recorded frames are read
    through a :class:`core.data.media.FrameLoop` (a few decoded at a time) and each frame
    is handed on before the next is made, so memory does not grow with the audio's length.
    """
    from core.data.full_frame import composite

    assert av.full is not None
    box = av.full.box
    with av.source_frames() as src:
        for t, head in enumerate(crops):
            i = pingpong(t, av.num_frames)
            frame = composite(src[i], head, box, full_frame_alpha(av, i, blend))
            if mark:
                frame = draw_mark(frame, mark if isinstance(mark, str) else MARK_TEXT)
            yield frame


class _Encoder:
    """Encodes frames on its own thread: the complete mp4 (:func:`write_video`) and, with a
    stream folder, its :class:`core.data.media.SegmentStream` segments; ``on_segment(path)``
    is called (on the encoder thread) for every finished segment."""

    _END, _ABORT = object(), object()

    def __init__(self, out: str | os.PathLike, wav: np.ndarray, meta: dict[str, str],
                 stream_dir: str | os.PathLike | None, cfg: TalkConfig,
                 on_segment: Callable[[Path], None] | None, preset: str = "medium",
                 queue_frames: int = 64) -> None:
        from core.data.media import SegmentStream

        self.q: queue.Queue = queue.Queue(maxsize=queue_frames)
        self.preset = preset
        self.out, self.wav, self.meta = out, wav, meta
        self.stream = None if stream_dir is None else SegmentStream(
            stream_dir, 25.0, wav, 16000, cfg.segment_frames, cfg.first_segment_frames)
        self.on_segment = on_segment
        self.path: Path | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="encoder", daemon=True)
        self.thread.start()

    def _frames(self) -> Iterator[np.ndarray]:
        while True:
            item = self.q.get()
            if item is self._END:
                return
            if item is self._ABORT:
                raise RuntimeError("synthesis stopped before the last frame")
            if self.stream is not None:
                seg = self.stream.add(item)
                if seg is not None and self.on_segment:
                    self.on_segment(seg)
            yield item

    def _run(self) -> None:
        from core.data.media import write_video

        try:
            self.path = write_video(self.out, self._frames(), fps=25.0, audio=self.wav,
                                    sample_rate=16000, metadata=self.meta, preset=self.preset)
            if self.stream is not None:
                seg = self.stream.close()
                if seg is not None and self.on_segment:
                    self.on_segment(seg)
        except BaseException as e:  # reported by finish()
            self.error = e
            while True:  # keep the producer from blocking on a full queue
                try:
                    self.q.get_nowait()
                except queue.Empty:
                    break

    def put(self, frame: np.ndarray) -> None:
        while self.error is None:
            try:
                self.q.put(frame, timeout=0.5)
                return
            except queue.Full:
                continue
        raise self.error

    def finish(self) -> Path:
        self.q.put(self._END)
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.path is not None
        return self.path

    def abort(self) -> None:
        """Stop after the frames so far: no mp4 (its temp file is removed); the segments
        written so far stay, with the playlist as it was."""
        try:
            self.q.put(self._ABORT, timeout=5.0)
        except queue.Full:
            pass
        self.thread.join(timeout=30.0)


def field_audio(av: Avatar, wav: np.ndarray, num_frames: int,
                cfg: AudioFeatureConfig | None = None) -> torch.Tensor:
    """(num_frames, window, D) the motion fields' audio input for ``wav`` (16 kHz, ``640 T``
    samples): its features (``cfg``, default the avatar's kind) for an avatar without a mouth
    drive; the features of silence for one with a drive, whose mouth follows the code
    predicted from ``wav`` (:func:`core.model.mouth_drive.silent_fields_audio`)."""
    from core.model.mouth_drive import silent_fields_audio

    cfg = cfg or feature_config(AudioFeatureSpec.from_dict(av.meta["audio"]))
    if av.drive is not None:
        return silent_fields_audio(num_frames, cfg)
    return audio_features(wav, num_frames, cfg)


def synthesize(avatar: str | os.PathLike | Avatar, audio: str | os.PathLike,
               out: str | os.PathLike, progress: ProgressFn | None = None,
               max_seconds: float = 600.0, mark: bool = True,
               allow_download: bool = False, duration: float | None = None,
               stream_dir: str | os.PathLike | None = None,
               on_segment: Callable[[Path], None] | None = None,
               talk: TalkConfig = TalkConfig(),
               device: str | torch.device | None = "auto",
               synthetic_voice: str | None = None, frame: str = "full",
               blend: str = "lower-face", head_res: str | int = "auto") -> SynthesisResult:
    """Render the avatar speaking ``audio`` into an mp4 with the audio muxed in.

    ``frame``: ``'full'`` (default): the recording's own frame size and aspect (long side
    at most 1920 px), the rendered head put back into the crop box over the avatar's
    recorded frames looped (:func:`full_frames`, ``blend`` as :func:`full_frame_alpha`);
    an avatar without the recorded frames renders the crop instead and the result's
    ``note`` says why. ``'crop'``: the avatar's ``res x res`` square. ``head_res``: the
    side the head is rendered at in full-frame output (:func:`head_resolution`; default:
    the crop box's own side up to 512 px on a GPU, the avatar's ``res`` on a CPU).

    ``device``: where the frames render (:func:`core.device.resolve_device`); the audio
    front end and the mouth drive run on the CPU once, their outputs move to the device once,
    and each finished frame comes back to the CPU for encoding. The fast path of
    :class:`TalkConfig` (threads, 8 px tiles) is for the CPU; on a GPU frames are made one by
    one with the device's rasterizer.

    ``duration``: use only the first this many seconds of the audio (e.g. a preview).
    ``stream_dir``: also write the video there as it is rendered, in short MPEG-TS segments
    with an HLS playlist (:class:`core.data.media.SegmentStream`), calling
    ``on_segment(path)`` for each; a stopped run leaves the segments so far. A streamed
    Talk of long audio drives its first frames from the audio's first seconds
    (``talk.lead``), so the first segment does not wait for the whole file's front end.
    ``talk``: how frames are made (:class:`TalkConfig`).
    ``synthetic_voice``: the audio was synthesized from text by this voice (its
    description): the mark reads :data:`VOICE_MARK_TEXT` and the metadata says so.
    The audio is checked against ``max_seconds`` (and core.data.media's start-offset, gap and
    frame-size limits) from its headers before anything is decoded, and decoding stops
    at the limit, so a hostile file costs at most ``max_seconds`` of samples.

    Raises:
        InputError: unreadable audio, no audio track, empty or too long audio, late starts
            or gaps ('timing'), or an avatar whose audio features cannot be computed here.
    """
    from core.data.media import DEFAULT_LIMITS, probe, read_audio, write_video

    if frame not in FRAME_MODES:
        raise ValueError(f"frame must be one of {FRAME_MODES}, got {frame!r}")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    head_res = check_head_res(head_res)
    dev = resolve_device(device)
    # limits first, from the headers (nothing decoded yet), then a decode capped at them
    limits = DEFAULT_LIMITS.with_seconds(max_seconds if duration is None else math.inf)
    probe(audio, require_video=False, limits=limits)
    wav = read_audio(audio, 16000, limits=DEFAULT_LIMITS.with_seconds(max_seconds),
                     duration=duration)
    av = avatar if isinstance(avatar, Avatar) else load_avatar(avatar)
    note = None
    if frame == "full" and av.full is None:
        frame, note = "crop", av.full_note or "this avatar renders the crop only"
    size = (av.full.width, av.full.height) if frame == "full" else (av.res, av.res)
    av = av.at_res(head_resolution(av, frame, head_res, dev))
    seconds = wav.shape[0] / 16000
    name = Path(audio).name
    if seconds < 0.2 or not np.any(np.abs(wav) > 1e-4):
        raise InputError("too_short", f"{name} holds no audible speech ({seconds:.1f} s).",
                         "Use a recording with speech in it.")
    if seconds > max_seconds:
        raise InputError("too_long", f"{name} is {seconds:.0f} s long; the limit is "
                         f"{max_seconds:.0f} s.", "Use a shorter recording or split it.")
    T = math.ceil(wav.shape[0] / 640)
    wav = np.concatenate([wav, np.zeros(T * 640 - wav.shape[0], np.float32)])
    spec = AudioFeatureSpec.from_dict(av.meta["audio"])
    cfg = feature_config(spec, allow_download)
    feature_spec(cfg).check_matches(spec)
    feats = field_audio(av, wav, T, cfg)
    mouth: torch.Tensor | LeadCodes | None = None
    if av.drive is not None and stream_dir is not None and talk.lead.lead_frames(T):
        drive = av.drive
        mouth = LeadCodes(lambda n: drive.predicted(wav, T, lead_frames=n), T, talk.lead, dev)
    elif av.drive is not None:
        mouth = av.drive.predicted(wav, T).to(dev)
    av = av.to(dev)
    feats = feats.to(dev)
    t0 = time.perf_counter()
    n_done = 0
    stamp = (VOICE_MARK_TEXT if synthetic_voice else MARK_TEXT) if mark else False
    full = frame == "full"
    crop_stamp = False if full else stamp

    def framed(crops: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        return full_frames(av, crops, stamp, blend) if full else crops

    def result(path: str | os.PathLike, segs: list[Path] | None = None) -> SynthesisResult:
        return SynthesisResult(path=Path(path), frames=n_done, seconds=seconds,
                               render_fps=n_done / max(time.perf_counter() - t0, 1e-9),
                               segments=segs or [], frame=frame, size=size, note=note)
    statement = ai_statement(synthetic_voice)
    meta = {"title": "AI-generated talking head" + (" with a synthetic voice" if synthetic_voice
                                                     else ""),
            "comment": statement, "description": statement}
    if talk.reference and stream_dir is None:
        def frames() -> Iterator[np.ndarray]:
            nonlocal n_done
            for f in framed(render_frames(av, feats, crop_stamp, progress, mouth)):
                n_done += 1
                yield f

        path = write_video(out, frames(), fps=25.0, audio=wav, sample_rate=16000, metadata=meta,
                           preset=talk.full_preset if full else "medium")
        return result(path)
    segments: list[Path] = []

    def segment_done(p: Path) -> None:
        segments.append(p)
        if on_segment:
            on_segment(p)

    enc = _Encoder(out, wav, meta, stream_dir, talk, segment_done,
                   preset=talk.full_preset if full else "medium",
                   queue_frames=talk.full_queue if full else 64)
    gen = framed(render_frames(av, feats, crop_stamp, progress, mouth)
                 if talk.reference or dev.type != "cpu"
                 else render_frames_fast(av, feats, crop_stamp, progress, mouth, talk))
    try:
        for f in gen:
            enc.put(f)
            n_done += 1
    except BaseException:
        # a lead's whole-file front end, if still running, ends by itself (its decode runs
        # in a child process): a stopped stream does not wait for it
        gen.close()
        enc.abort()
        raise
    path = enc.finish()
    return result(path, segments)


class Stopped(Exception):
    """Raised inside a synthesis whose :func:`stream_synthesis` consumer went away."""


def stream_synthesis(avatar: str | os.PathLike | Avatar, audio: str | os.PathLike,
                     out: str | os.PathLike, stream_dir: str | os.PathLike,
                     progress: ProgressFn | None = None,
                     **kwargs) -> Iterator[Path | SynthesisResult]:
    """:func:`synthesize` on a worker thread, as a generator: yields each stream segment's
    path as soon as it is written, then the :class:`SynthesisResult`. Errors of the
    synthesis are raised here. Closing the generator early (``close()``, or a consumer that
    stops iterating and drops it) stops the rendering within a frame, waits for the worker
    to end (so whatever it held is free again) and leaves no mp4.
    """
    items: queue.Queue = queue.Queue()
    stop = threading.Event()

    def report(text: str, frac: float) -> None:
        if stop.is_set():
            raise Stopped("the stream's consumer went away")
        if progress:
            progress(text, frac)

    def work() -> None:
        try:
            items.put(synthesize(avatar, audio, out, progress=report, stream_dir=stream_dir,
                                 on_segment=items.put, **kwargs))
        except BaseException as e:
            items.put(e)

    worker = threading.Thread(target=work, name="synthesis", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, SynthesisResult):
                return
    finally:
        stop.set()
        worker.join()


def synthesize_text(avatar: str | os.PathLike | Avatar, text: str, out: str | os.PathLike,
                    voice: str | None = None, language: str | None = None, rate: float = 1.0,
                    progress: ProgressFn | None = None, max_seconds: float = 600.0,
                    mark: bool = True, **kwargs) -> SynthesisResult:
    """:func:`synthesize` driven by ``text`` spoken by an offline voice
    (:func:`core.data.speech.speak`; the text, voice and rate are checked before the avatar
    is opened or anything is written). ``kwargs``: :func:`synthesize`'s (``device``,
    ``stream_dir``, ...)."""
    import tempfile

    from core.data.speech import speak

    if not isinstance(avatar, Avatar) and not Path(avatar).is_dir():
        raise InputError("unreadable", f"There is no avatar folder at {avatar}.",
                         "Pass a folder written by python -m core.adapt.")
    speech = speak(text, voice, language, rate)
    with tempfile.TemporaryDirectory() as tmp:
        wav = speech.write_wav(Path(tmp) / "speech.wav")
        return synthesize(avatar, wav, out, progress, max_seconds, mark,
                          synthetic_voice=speech.voice.description, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.synthesize", description=__doc__.split("\n")[0])
    p.add_argument("avatar", help="avatar folder (from python -m core.adapt)")
    p.add_argument("audio", nargs="?", default=None,
                   help="audio file or video with an audio track (or --text)")
    p.add_argument("--text", default=None, help="text to speak instead of an audio file "
                   "(offline voice, at most 600 characters)")
    p.add_argument("--voice", default=None, help="voice for --text (default joe; "
                   "--list-voices shows them)")
    p.add_argument("--lang", default=None, help="language for --text (e.g. fr): its first voice")
    p.add_argument("--rate", type=float, default=1.0, help="speaking rate for --text "
                   "(0.5-2, 1 = normal)")
    p.add_argument("--list-voices", action="store_true", help="print the voices and exit")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--no-mark", action="store_true", help="omit the visible AI-generated label "
                   "(the metadata statement stays)")
    p.add_argument("--stream", metavar="DIR", default=None,
                   help="also write the video into DIR while rendering: 1 s MPEG-TS segments "
                   "and an HLS playlist (playlist.m3u8); a stopped run leaves a playable prefix")
    p.add_argument("--frame", choices=FRAME_MODES, default="full",
                   help="full (default): the recording's own frame size and aspect (long side "
                   "at most 1920 px) with the head put back; crop: the avatar's square crop")
    p.add_argument("--blend", choices=BLEND_MODES, default="lower-face",
                   help="full frame only: lower-face (default) renders only what the audio "
                   "drives and keeps the recording's sharper pixels elsewhere; box: the whole "
                   "rendered crop with a feathered edge")
    p.add_argument("--head-res", default="auto", metavar="auto|avatar|native|PX",
                   help="full frame only: the side the head is rendered at; native: the crop "
                   f"box's own side up to {MAX_HEAD_RES} px (sharper on larger sources), avatar: "
                   "the avatar's own (fastest), auto (default): native on a GPU, avatar on a CPU")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--raster", choices=RASTER_CHOICES, default="auto", help=RASTER_HELP)
    if "--list-voices" in (sys.argv[1:] if argv is None else argv):  # needs no avatar
        from core.data.speech import voices
        for v in voices():
            print(f"{v.name:12s} {v.language:6s} {v.label}")
        return 0
    a = p.parse_args(argv)
    if (a.audio is None) == (a.text is None):
        p.error("give either AUDIO or --text")
    if a.audio is not None and (a.voice or a.lang or a.rate != 1.0):
        p.error("--voice, --lang and --rate go with --text")
    try:
        a.head_res = check_head_res(a.head_res)
    except ValueError as e:
        p.error(str(e))
    if a.text is None:
        job = lambda bar: synthesize(a.avatar, a.audio, a.out, bar, a.max_seconds,  # noqa: E731
                                     mark=not a.no_mark, stream_dir=a.stream, device=a.device,
                                     frame=a.frame, blend=a.blend, head_res=a.head_res)
    else:
        job = lambda bar: synthesize_text(a.avatar, a.text, a.out, a.voice, a.lang,  # noqa: E731
                                          a.rate, bar, a.max_seconds, mark=not a.no_mark,
                                          stream_dir=a.stream, device=a.device,
                                          frame=a.frame, blend=a.blend,
                                          head_res=a.head_res)
    with raster_backend(a.raster):
        r, code = run_cli_job(job)
    if code:
        return code
    if r.note:
        print(f"note: {r.note}")
    print(f"{r.path}: {r.frames} frames of {r.size[0]}x{r.size[1]} ({r.frame} frame, "
          f"{r.seconds:.2f} s of audio), rendering {r.render_fps:.1f} FPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
