"""The open mouth: how far the rendered lips open, and how the mouth looks, when the
recorded mouth is widest open.

Averages over all held-out frames hide the frames that matter for a mumbling mouth: most
frames show a closed or half-open mouth. Here the frames are picked by the *recorded* inner-lip
gap (:func:`eval.metrics.frames.lip_aperture`, eye-distance units):

- ``aperture_ratio_top``: mean rendered gap / mean recorded gap over the frames whose recorded
  gap is in the top decile (1 = opens as far; 0.7 = mumbles);
- ``psnr_head_open`` / ``psnr_mouth_open``: PSNR over the head, and over the recorded
  outer-lip box grown by a quarter of its width (teeth, tongue and lips), on the frames in the
  top quartile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.data.masks import OUTER_LIPS
from eval.metrics.frames import lip_aperture, psnr

__all__ = ["OpenMouthScores", "open_frames", "mouth_box_mask", "open_mouth_scores"]


@dataclass
class OpenMouthScores:
    """See the module doc; NaN where fewer than 2 frames qualify."""

    aperture_ratio_top: float
    psnr_head_open: float
    psnr_mouth_open: float
    frames_top: int
    frames_open: int


def open_frames(gt_gap: np.ndarray, quantile: float) -> np.ndarray:
    """(T,) bool: frames whose recorded gap (NaN where no face) is at or above its
    ``quantile`` over the frames with a face."""
    ok = np.isfinite(gt_gap)
    if ok.sum() == 0:
        return ok
    return ok & (gt_gap >= np.quantile(gt_gap[ok], quantile))


def mouth_box_mask(points: np.ndarray, height: int, width: int, grow: float = 0.25) -> np.ndarray:
    """(H, W) bool: the box of one frame's outer-lip landmarks ((478, 2+) pixels) grown by
    ``grow`` of its width on every side."""
    p = np.asarray(points)[list(OUTER_LIPS), :2]
    x0, y0 = p.min(0)
    x1, y1 = p.max(0)
    g = grow * (x1 - x0)
    m = np.zeros((height, width), bool)
    ys, xs = slice(max(0, int(y0 - g)), min(height, int(math.ceil(y1 + g)) + 1)), \
        slice(max(0, int(x0 - g)), min(width, int(math.ceil(x1 + g)) + 1))
    m[ys, xs] = True
    return m


def open_mouth_scores(frames: np.ndarray, gt_frames: np.ndarray, head: np.ndarray,
                      points: np.ndarray | None, gt_points: np.ndarray) -> OpenMouthScores:
    """Scores of (T, H, W, 3) uint8 renders against the recording (``head`` (T, H, W) bool
    head masks; ``points`` / ``gt_points`` (T, 478, 2+) FaceMesh in pixels, NaN where no
    face; ``points`` None skips the aperture ratio)."""
    gt_gap = lip_aperture(gt_points)
    top, opened = open_frames(gt_gap, 0.9), open_frames(gt_gap, 0.75)
    ratio = math.nan
    if points is not None:
        gap = lip_aperture(points)
        sel = top & np.isfinite(gap)
        if sel.sum() >= 2 and gt_gap[sel].mean() > 0:
            ratio = float(gap[sel].mean() / gt_gap[sel].mean())
    h, w = gt_frames.shape[1:3]
    idx = np.nonzero(opened)[0]
    ph = pm = math.nan
    if len(idx) >= 2:
        ph = float(np.mean([psnr(frames[i], gt_frames[i], head[i]) for i in idx]))
        pm = float(np.mean([psnr(frames[i], gt_frames[i], mouth_box_mask(gt_points[i], h, w))
                            for i in idx]))
    return OpenMouthScores(ratio, ph, pm, int(top.sum()), int(opened.sum()))
