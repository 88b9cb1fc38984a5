"""Preprocessing: a talking clip becomes a tracked, masked, audio-aligned training set.

``python -m core.preprocess CLIP --out DIR [--res N] [--audio mel|hubert]``

Pipeline (one pass per concept, every step streams or holds ``uint8`` frames only):

1. ``core.data.media.probe``: refuse unreadable files, no video, no audio, too short, too long.
2. ``core.data.crop.track_video``: FaceMesh on downscaled full frames (no face / two faces),
   one stable square crop around the head, FaceMesh again inside the crop at ``res``
   (face lost).
3. The cropped ``res x res`` frames at 25 fps (``core.data.media.iter_frames``) and the audio
   at 16 kHz trimmed to exactly ``640 * T`` samples.
4. ``core.data.pose.fit_head_pose``: canonical shape, per-frame world-to-camera pose, one
   focal per clip, temporal smoothing.
5. ``core.data.masks``: per-pixel labels (background, torso, hair, face, mouth), lips boxes,
   static background plate.
6. ``core.data.expression``: blink / brow / lid / lips-apart signals and AU stand-ins.
7. ``core.data.audio``: 50 Hz feature steps (log-mel by default, or HuBERT).

The processed-clip folder (format version :data:`FORMAT_VERSION`) is written to a
temporary sibling folder and renamed into place only when complete, so a failure never
leaves a half-written folder and an existing folder is replaced only by a complete one:

``manifest.json``
    format version, source (file name, sha256, size, fps, duration, resolution),
    ``num_frames``, ``fps``, ``sample_rate``, ``res``, ``crop`` (source pixels),
    ``focal`` (pixels at ``res``), ``audio`` (feature spec), tracking statistics,
    label names, library versions, and the sha256 of every other file; made by
    ``python -m core.preprocess`` (:func:`core.preprocess.preprocess_clip`) it also holds
    ``av_offset``, the recording's audio-video offset.
``frames.mp4``
    the ``res x res`` frames at 25 fps, H.264 4:4:4 at crf 0 (measured on a 5 s 256² clip:
    3.7 MB, 52 dB PSNR, at most 2 levels off; true lossless RGB is 1.75x larger), with the
    audio muxed in for viewing (the exact audio is in ``arrays.safetensors``).
``arrays.safetensors``
    ``audio`` (640 T,) float32 16 kHz; ``audio_steps`` (S, D) float32 50 Hz features;
    ``points2d`` (T, 478, 2) and ``points3d`` (T, 478, 3) float32 FaceMesh landmarks in
    crop pixels at ``res`` (misses interpolated); ``valid`` (T,) uint8 (FaceMesh found the
    face); ``viewmats`` (T, 4, 4) float32; ``K`` (3, 3) float32; ``canonical`` (478, 3)
    float32 metres; ``expr`` (T, 6) float32 model input (AU01, 04, 05, 06, 07, blink);
    ``au`` (T, 7) float32; ``signals`` (T, 6) float32 raw signals; ``lips_box`` (T, 4)
    int32; ``bg`` (res, res, 3) uint8 background plate.
``labels.npz``
    ``labels`` (T, res, res) uint8, see :class:`core.data.masks.Label` (compressed).
``source.mp4`` (format version 2; absent when ``PreprocessConfig.full_frame`` is off)
    the recorded frames themselves on the same 25 fps timeline, scaled so the long side is
    at most 1920 px with even sides (:func:`core.data.full_frame.output_size`), H.264 4:2:0
    at crf :attr:`PreprocessConfig.full_frame_crf` (18; measured on the 7.5 s 1920x1080
    clip: see docs/results/full_frame.md), no audio; the manifest's ``full_frame`` entry
    holds the sizes and the crop box in its pixels (:class:`core.data.full_frame.FullFrame`).
    Full-frame output (``core.synthesize --frame full``) needs it.

Version 1 folders (no ``source.mp4``) still load; their avatars render in crop mode.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file

from core.atomic import atomic_folder
from core.data.full_frame import SOURCE_FILE, FullFrame
from core.errors import InputError
from core.progress import ProgressFn

FORMAT_VERSION = 2
#: Format versions :class:`core.data.dataset.ProcessedClip` reads (1: no source frames).
READABLE_VERSIONS = (1, 2)
FPS = 25.0
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640



@dataclass
class PreprocessConfig:
    """Settings of :func:`preprocess`.

    Attributes:
        res: side of the square working frames in pixels (256 on CPU, 512 on GPU).
        audio: audio feature kind (:data:`core.data.audio.KINDS`): ``'mel'`` (offline
            default), ``'phones'``, ``'mel+phones'`` or ``'hubert'``.
        hubert_model: HuBERT hub id or local folder (only for ``audio='hubert'``).
        allow_download: let huggingface-hub download HuBERT weights if missing.
        min_seconds: shortest accepted clip (s); the paper adapts on 5 s.
        max_seconds: longest accepted clip (s); default 5 minutes.
        max_frames: keep only the first N frames (None = all); for quick runs.
        full_frame: also keep the recorded frames (``source.mp4``, long side at most
            ``full_frame_max_side``) for full-frame output.
        full_frame_max_side: longest side of the kept frames in pixels (1920).
        full_frame_crf: their x264 constant rate factor (18: visually lossless).
    """

    res: int = 256
    audio: str = "mel"
    hubert_model: str = "facebook/hubert-large-ls960-ft"
    allow_download: bool = False
    min_seconds: float = 4.0
    max_seconds: float = 300.0
    max_frames: int | None = None
    full_frame: bool = True
    full_frame_max_side: int = 1920
    full_frame_crf: int = 18


#: ``annotate(arrays) -> manifest entries``: measurements the data layer does not make itself
#: (the audio-video offset needs the audio-to-mouth prior of ``core.model``; see
#: :mod:`core.preprocess`). ``arrays``: ``points3d`` (T, 478, 3), ``audio`` (640 T,) 16 kHz,
#: ``valid`` (T,) bool.
Annotator = Callable[[dict[str, np.ndarray]], dict]


def default_res() -> int:
    """Working resolution for this machine: 512 with CUDA, 256 on CPU."""
    return 512 if torch.cuda.is_available() else 256


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import av
    import mediapipe

    return {"torch": torch.__version__, "mediapipe": mediapipe.__version__,
            "av": av.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


def check_media(path: str | os.PathLike, cfg: PreprocessConfig):
    """Cheap checks before any decoding. Returns the source's ``MediaInfo``.

    Raises:
        InputError: 'unreadable', 'no_video', 'no_audio', 'too_short', 'too_long'.
    """
    from core.data.media import probe

    info = probe(path)
    name = Path(path).name
    if not info.has_audio:
        raise InputError("no_audio", f"{name} has no audio track.",
                         "Use a clip recorded with the microphone on, with you speaking.")
    seconds = min(info.video_end_s, info.audio_end_s) or info.duration_s
    if seconds < cfg.min_seconds:
        raise InputError("too_short", f"{name} is only {seconds:.1f} s long.",
                         f"Record at least {cfg.min_seconds:g} s of yourself talking "
                         "(5-20 s works best).")
    if seconds > cfg.max_seconds:
        raise InputError("too_long", f"{name} is {seconds:.0f} s long; the limit is "
                         f"{cfg.max_seconds:.0f} s.",
                         "Trim it to a shorter part (5-20 s of talking is enough).")
    return info


def preprocess(clip: str | os.PathLike, out_dir: str | os.PathLike,
               cfg: PreprocessConfig | None = None, progress: ProgressFn | None = None,
               overwrite: bool = False, annotate: Annotator | None = None) -> Path:
    """Turn a talking clip into a processed-clip folder (format in the module doc).

    Args:
        clip: video file with one face and speech (mp4, mov, mkv, webm, mpg, ...).
        out_dir: folder to create. Must not exist unless ``overwrite``.
        cfg: :class:`PreprocessConfig`.
        progress: optional ``progress(stage, fraction)`` callback (the app's progress bar).
        overwrite: replace an existing folder (only once the new one is complete).
        annotate: optional :data:`Annotator`: more manifest entries measured from the
            clip's arrays, written in the same atomic step (``python -m core.preprocess``
            adds the audio-video offset this way).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        InputError: the clip cannot be used (the message names the problem and the fix).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    from core.data.audio import AudioFeatureConfig
    from core.data.features import feature_spec, feature_steps
    from core.data.expression import expression_signals
    from core.data.masks import Label, background_plate, lips_boxes, segment
    from core.data.media import fit_length, iter_frames, read_audio, write_video
    from core.data.crop import track_video
    from core.data.pose import fit_head_pose, reprojection_error, rotation_angles_deg

    cfg = cfg or PreprocessConfig()
    clip, out = Path(clip), Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    report = progress or (lambda stage, frac: None)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 3)
        return now

    report("checking the file", 0.0)
    info = check_media(clip, cfg)
    audio_cfg = AudioFeatureConfig(kind=cfg.audio, hubert_model=cfg.hubert_model,
                                   allow_download=cfg.allow_download)
    spec = feature_spec(audio_cfg)  # fails early (clear message) if HuBERT weights are absent
    # the whole audio track first (seconds, even for minutes of audio): a file cut short is
    # refused as such before any face tracking, also when only its first seconds of video
    # are kept (max_frames) and the video decoder never reaches the cut
    whole_audio = read_audio(clip, SAMPLE_RATE)
    t = lap("probe", t_start)

    report("finding the face", 0.05)
    vt = track_video(clip, res=cfg.res, fps=FPS, max_frames=cfg.max_frames)
    T = len(vt.track)
    t = lap("tracking", t)

    report("reading frames", 0.45)
    frames = np.empty((T, cfg.res, cfg.res, 3), np.uint8)
    n = 0
    for n, img in enumerate(iter_frames(clip, fps=FPS, size=cfg.res, crop=vt.crop, max_frames=T), 1):
        frames[n - 1] = img
    if n != T:
        raise InputError("unreadable", f"{clip.name}: frames ended early ({n} of {T}).",
                         "Re-export the video (e.g. as mp4) and try again.")
    audio = fit_length(whole_audio, T * SAMPLES_PER_FRAME)
    t = lap("decode", t)

    report("solving head pose", 0.55)
    points3d = vt.track.filled()
    points2d = points3d[..., :2]
    pose = fit_head_pose(points2d, points3d, cfg.res)
    t = lap("pose", t)

    report("segmenting", 0.65)
    labels = segment(frames, points2d)
    bg = background_plate(frames, labels)
    t = lap("masks", t)

    report("expression and audio features", 0.8)
    expr = expression_signals(points3d)
    steps = feature_steps(audio, audio_cfg)
    t = lap("expression_audio", t)

    notes: dict = {}
    if annotate is not None:
        report("audio-video offset", 0.85)
        notes = annotate({"points3d": points3d, "audio": audio, "valid": vt.track.valid})
        t = lap("annotate", t)

    err_all = reprojection_error(pose, points2d, "all")
    err_rigid = reprojection_error(pose, points2d, "rigid")
    jitter = rotation_angles_deg(np.einsum("tij,tkj->tik", pose.R[1:], pose.R[:-1])) if T > 1 else np.zeros(1)
    dist = pose.camera_distance()

    report("writing", 0.9)
    with atomic_folder(out) as tmp:
        write_video(tmp / "frames.mp4", iter(frames), fps=FPS, audio=audio,
                    sample_rate=SAMPLE_RATE, crf=0, pix_fmt="yuv444p", preset="veryfast")
        full_entry: dict = {}
        if cfg.full_frame:
            ff = FullFrame.from_source(info.width, info.height, vt.crop, cfg.full_frame_max_side)
            write_video(tmp / SOURCE_FILE,
                        iter_frames(clip, fps=FPS, size=(ff.width, ff.height), max_frames=T),
                        fps=FPS, crf=cfg.full_frame_crf, preset="veryfast")
            full_entry = {"full_frame": {**ff.to_dict(), "file": SOURCE_FILE,
                                         "crf": cfg.full_frame_crf, "pix_fmt": "yuv420p"}}
            t = lap("source_frames", t)
        arrays = {
            "audio": torch.from_numpy(np.ascontiguousarray(audio, np.float32)),
            "audio_steps": steps.float().contiguous(),
            "points2d": torch.from_numpy(np.ascontiguousarray(points2d, np.float32)),
            "points3d": torch.from_numpy(np.ascontiguousarray(points3d, np.float32)),
            "valid": torch.from_numpy(vt.track.valid.astype(np.uint8)),
            "viewmats": torch.from_numpy(pose.viewmats()),
            "K": torch.from_numpy(pose.K()),
            "canonical": torch.from_numpy(np.ascontiguousarray(pose.canonical, np.float32)),
            "expr": torch.from_numpy(np.ascontiguousarray(expr.model_input(), np.float32)),
            "au": torch.from_numpy(np.ascontiguousarray(expr.au, np.float32)),
            "signals": torch.from_numpy(np.ascontiguousarray(expr.values, np.float32)),
            "lips_box": torch.from_numpy(lips_boxes(points2d, cfg.res).astype(np.int32)),
            "bg": torch.from_numpy(np.ascontiguousarray(bg, np.uint8)),
        }
        save_file(arrays, str(tmp / "arrays.safetensors"))
        np.savez_compressed(tmp / "labels.npz", labels=labels)
        t = lap("write", t)
        manifest = {
            "format": "instag-processed-clip",
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": {
                "name": clip.name, "sha256": sha256_file(clip), "bytes": clip.stat().st_size,
                "fps": info.fps, "width": info.width, "height": info.height,
                "duration_s": info.duration_s, "audio_sample_rate": info.audio_sample_rate,
            },
            "num_frames": T, "fps": FPS, "sample_rate": SAMPLE_RATE, "res": cfg.res,
            "crop": [int(c) for c in vt.crop], "focal": float(pose.focal),
            "audio": spec.to_dict(),
            "expr_names": ["au01", "au04", "au05", "au06", "au07", "au45_blink"],
            "au_names": list(expr.au_names), "signal_names": list(expr.names),
            "labels": {lab.name.lower(): int(lab) for lab in Label},
            "tracking": {
                "found_fraction": float(vt.track.found_fraction),
                "reproj_err_px_mean": float(err_all.mean()),
                "reproj_err_rigid_px_mean": float(err_rigid.mean()),
                "jitter_deg_median": float(np.median(jitter)),
                "camera_distance_m_median": float(np.median(dist)),
            },
            **full_entry,
            **notes,
            "timings_s": {**timings, "total": round(time.perf_counter() - t_start, 3)},
            "versions": _versions(),
            "files": {name: sha256_file(tmp / name)
                      for name in ("frames.mp4", "arrays.safetensors", "labels.npz",
                                   *((SOURCE_FILE,) if full_entry else ()))},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    report("done", 1.0)
    return out
