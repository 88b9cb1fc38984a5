"""Driving an avatar with new audio (METHOD.md §7).

``python -m core.synthesize AVATAR AUDIO --out video.mp4``
``python -m core.synthesize AVATAR --text "..." [--voice NAME | --lang CODE] [--rate R] --out video.mp4``

Any audio file (wav, mp3, m4a, flac, ogg) or the audio track of a video, any sample rate and
length: it is resampled to 16 kHz, cut into ``T = ceil(seconds * 25)`` frames (zero-padded
to ``640 T`` samples), turned into the avatar's audio feature type, and drives the motion
fields. Poses, expression signals and torso/background plates come from the avatar's own
frames looped ping-pong (0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...: no jump). Each frame is the
face and mouth rendering composited over the plate (mouth alpha dilated); the mp4 carries the
audio, frame ``i`` starting at sample ``640 i``, a visible "AI-generated" mark on every frame
and the same statement in its metadata. Typed text is spoken first by an offline voice
(:mod:`core.data.speech`); that audio drives the avatar like a recording, and the mark and
the metadata then say that the voice is synthetic too.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from core.data.audio import AudioFeatureSpec
from core.data.features import audio_features, feature_config, feature_spec
from core.model.avatar import Avatar, load_avatar
from core.errors import InputError
from core.model.head import FrameCond, render_frame
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


@dataclass
class SynthesisResult:
    """path: the mp4; frames: video frames written; seconds: audio length (s);
    render_fps: frames rendered per second of wall time (rendering only)."""

    path: Path
    frames: int
    seconds: float
    render_fps: float


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
                  mouth: torch.Tensor | None = None) -> Iterator[np.ndarray]:
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
        frame = (img * 255.0).round().to(torch.uint8).numpy()
        if mark:
            frame = draw_mark(frame, mark if isinstance(mark, str) else MARK_TEXT)
        if progress:
            progress(f"rendering frame {t + 1}/{T}", (t + 1) / T)
        yield frame


def synthesize(avatar: str | os.PathLike | Avatar, audio: str | os.PathLike,
               out: str | os.PathLike, progress: ProgressFn | None = None,
               max_seconds: float = 600.0, mark: bool = True,
               allow_download: bool = False, duration: float | None = None,
               synthetic_voice: str | None = None) -> SynthesisResult:
    """Render the avatar speaking ``audio`` into an mp4 with the audio muxed in.

    ``duration``: use only the first this many seconds of the audio (e.g. a preview).
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

    # limits first, from the headers (nothing decoded yet), then a decode capped at them
    limits = DEFAULT_LIMITS.with_seconds(max_seconds if duration is None else math.inf)
    probe(audio, require_video=False, limits=limits)
    wav = read_audio(audio, 16000, limits=DEFAULT_LIMITS.with_seconds(max_seconds),
                     duration=duration)
    av = avatar if isinstance(avatar, Avatar) else load_avatar(avatar)
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
    feats = audio_features(wav, T, cfg)
    mouth = av.drive.predicted(wav, T) if av.drive is not None else None
    t0 = time.perf_counter()
    n_done = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal n_done
        stamp = (VOICE_MARK_TEXT if synthetic_voice else MARK_TEXT) if mark else False
        for f in render_frames(av, feats, stamp, progress, mouth):
            n_done += 1
            yield f

    statement = ai_statement(synthetic_voice)
    meta = {"title": "AI-generated talking head" + (" with a synthetic voice" if synthetic_voice
                                                     else ""),
            "comment": statement, "description": statement}
    path = write_video(out, frames(), fps=25.0, audio=wav, sample_rate=16000, metadata=meta)
    el = time.perf_counter() - t0
    return SynthesisResult(path=Path(path), frames=n_done, seconds=seconds,
                           render_fps=n_done / max(el, 1e-9))


def synthesize_text(avatar: str | os.PathLike | Avatar, text: str, out: str | os.PathLike,
                    voice: str | None = None, language: str | None = None, rate: float = 1.0,
                    progress: ProgressFn | None = None, max_seconds: float = 600.0,
                    mark: bool = True) -> SynthesisResult:
    """:func:`synthesize` driven by ``text`` spoken by an offline voice
    (:func:`core.data.speech.speak`; the text, voice and rate are checked before the avatar
    is opened or anything is written)."""
    import tempfile

    from core.data.speech import speak

    if not isinstance(avatar, Avatar) and not Path(avatar).is_dir():
        raise InputError("unreadable", f"There is no avatar folder at {avatar}.",
                         "Pass a folder written by python -m core.adapt.")
    speech = speak(text, voice, language, rate)
    with tempfile.TemporaryDirectory() as tmp:
        wav = speech.write_wav(Path(tmp) / "speech.wav")
        return synthesize(avatar, wav, out, progress, max_seconds, mark,
                          synthetic_voice=speech.voice.description)


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
    if a.text is None:
        job = lambda bar: synthesize(a.avatar, a.audio, a.out, bar, a.max_seconds,  # noqa: E731
                                     mark=not a.no_mark)
    else:
        job = lambda bar: synthesize_text(a.avatar, a.text, a.out, a.voice, a.lang,  # noqa: E731
                                          a.rate, bar, a.max_seconds, mark=not a.no_mark)
    r, code = run_cli_job(job)
    if code:
        return code
    print(f"{r.path}: {r.frames} frames ({r.seconds:.2f} s of audio), rendering {r.render_fps:.1f} FPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
