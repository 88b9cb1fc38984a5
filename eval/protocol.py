"""The evaluation protocol of METHOD.md §8: held-out frames of the adaptation clip.

Adaptation uses the first ``train_seconds`` of a processed clip; the test part is the last
``test_seconds`` (paper: 12 s; never overlapping the training part), driven by its own
audio, poses and expressions and composited on its own recorded torso/background plate.
:func:`render_heldout` renders those frames with an avatar's model; :func:`score_frames`
computes the image and landmark metrics against the recorded frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from core.avatar import Avatar, load_avatar
from core.dataset import ProcessedClip
from core.head import render_frame
from core.masks import Label
from core.stages import TrainFrames

TEST_SECONDS = 12.0


def test_indices(clip: ProcessedClip, train_seconds: float,
                 test_seconds: float | None = TEST_SECONDS) -> torch.Tensor:
    """Held-out frame indices: the last ``test_seconds`` after the training part (all frames
    after it when the clip is shorter)."""
    _, test = clip.split(train_seconds, test_seconds)
    if test.numel() == 0:
        raise ValueError(f"{clip.root.name}: no frames after the first {train_seconds} s")
    return test


def heldout_frames(clip: ProcessedClip, idx: torch.Tensor, res: int,
                   train_frames: int) -> TrainFrames:
    """The test frames ``idx`` (one contiguous span) at ``res``, as a trained avatar meets
    them: expression inputs normalised with the statistics of the clip's first
    ``train_frames`` frames (the training part), audio featurised from the test span alone
    (like new audio driving the avatar)."""
    start, stop = int(idx[0]), int(idx[-1]) + 1
    if stop - start != idx.numel():
        raise ValueError("held-out frames must be one contiguous span")
    return TrainFrames.from_clip(clip, idx, res, fit_frames=train_frames,
                                 audio_span=(start, stop))


def frame_subset(frames: TrainFrames, pick: torch.Tensor) -> TrainFrames:
    """Frames ``pick`` (positions) of ``frames``, keeping the whole utterance's audio so
    their windows stay those of the full span."""
    shared = ("K", "audio")
    return replace(frames, **{f.name: getattr(frames, f.name)[pick] for f in fields(frames)
                              if f.name not in shared})


@torch.no_grad()
def render_heldout(avatar: Avatar | str | Path, frames: TrainFrames) -> np.ndarray:
    """(n, res, res, 3) uint8 frames of the avatar driven by the test frames' own audio,
    poses and expressions, over their own plates."""
    av = avatar if isinstance(avatar, Avatar) else load_avatar(avatar)
    return render_frames(av.umf, av.ident, frames)


@torch.no_grad()
def render_frames(umf, ident, frames: TrainFrames) -> np.ndarray:
    """(n, res, res, 3) uint8 renders of ``umf`` + ``ident`` for every frame of ``frames``."""
    out = np.empty((frames.n, frames.res, frames.res, 3), np.uint8)
    for j in range(frames.n):
        img = render_frame(umf, ident, frames.cond(j), frames.plates[j])
        out[j] = (img * 255.0).round().to(torch.uint8).numpy()
    return out


def ground_truth(frames: TrainFrames) -> tuple[np.ndarray, np.ndarray]:
    """(n, res, res, 3) uint8 recorded frames and (n, res, res) bool face masks
    (face + mouth interior labels)."""
    gt = (frames.images * 255.0).round().to(torch.uint8).numpy()
    lab = frames.labels.numpy()
    return gt, (lab == Label.FACE) | (lab == Label.MOUTH)


@dataclass
class HeldoutScores:
    """Metrics of one method on one clip's held-out frames (see :mod:`eval.metrics`)."""

    psnr: float
    ssim: float
    psnr_face: float
    ssim_face: float
    lpips: float | str
    lmd_mouth: float
    lmd_face: float
    aue_upper: float
    aue_lower: float
    num_frames: int
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("psnr", "ssim", "psnr_face", "ssim_face", "lpips",
                                           "lmd_mouth", "lmd_face", "aue_upper", "aue_lower",
                                           "num_frames")}
        d.update(self.extra)
        return d


def score_frames(pred: np.ndarray, gt: np.ndarray, face: np.ndarray,
                 landmarks: bool = True) -> HeldoutScores:
    """Image metrics (full frame and face region) and landmark metrics of ``pred`` vs ``gt``
    (both (n, H, W, 3) uint8; ``face`` (n, H, W) bool)."""
    from eval.metrics import image_metrics, video_landmark_metrics

    im = image_metrics(pred, gt, face_masks=face)
    nan = float("nan")
    lm = video_landmark_metrics(pred, gt) if landmarks else None
    return HeldoutScores(
        psnr=im.psnr, ssim=im.ssim, psnr_face=im.psnr_face, ssim_face=im.ssim_face,
        lpips=im.lpips if isinstance(im.lpips, float) else str(im.lpips),
        lmd_mouth=lm.lmd_mouth if lm else nan, lmd_face=lm.lmd_face if lm else nan,
        aue_upper=lm.aue_upper if lm else nan, aue_lower=lm.aue_lower if lm else nan,
        num_frames=int(pred.shape[0]))


def evaluate_avatar(avatar: Avatar | str | Path, clip: ProcessedClip | str | Path,
                    train_seconds: float, test_seconds: float | None = TEST_SECONDS,
                    landmarks: bool = True) -> HeldoutScores:
    """Render and score an avatar on the held-out part of its clip."""
    av = avatar if isinstance(avatar, Avatar) else load_avatar(avatar)
    c = clip if isinstance(clip, ProcessedClip) else ProcessedClip.load(clip)
    frames = heldout_frames(c, test_indices(c, train_seconds, test_seconds), av.res,
                            int(round(train_seconds * 25)))
    pred = render_heldout(av, frames)
    gt, face = ground_truth(frames)
    return score_frames(pred, gt, face, landmarks)


class HeldoutCurve:
    """An ``adapt(observe=...)`` callback: face-region and full-frame PSNR of a fixed subset of
    held-out frames along training. ``points``: list of (steps, psnr, psnr_face)."""

    def __init__(self, clip: ProcessedClip, train_seconds: float, res: int,
                 test_seconds: float | None = TEST_SECONDS, num_frames: int = 25) -> None:
        from eval.metrics import psnr as psnr_metric

        idx = test_indices(clip, train_seconds, test_seconds)
        pick = torch.linspace(0, idx.numel() - 1, min(num_frames, idx.numel())).round().long()
        self.frames = frame_subset(heldout_frames(clip, idx, res, int(round(train_seconds * 25))),
                                   pick)
        self.gt, self.face = ground_truth(self.frames)
        self._psnr = psnr_metric
        self.points: list[tuple[int, float, float]] = []

    @torch.no_grad()
    def __call__(self, steps: int, umf, ident) -> None:
        pred = render_frames(umf, ident, self.frames)
        full = [self._psnr(p, g) for p, g in zip(pred, self.gt)]
        face = [self._psnr(p, g, m) for p, g, m in zip(pred, self.gt, self.face)]
        self.points.append((int(steps), float(np.mean(full)), float(np.mean(face))))
