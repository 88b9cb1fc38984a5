"""Stray dots: isolated off-colour pixels a render adds that the recording does not have.

A single Gaussian off the surface (a point the prior carried into a place no training frame
corrects, a tiny saturated splat) shows as a dot of one or a few pixels whose colour stands
out from everything around it. A pixel is *flagged* when it differs by more than
``threshold`` (60 of 255 in some channel) from both the median of its own 3x3 neighbourhood
in the render and the recorded pixel at the same place: the median test makes it isolated
(an edge or a region, however wrong, has its own colour on at least half of the window), the
recording test keeps the recording's own small bright or dark details (a catch-light, a
freckle) from counting. Flagged pixels within one pixel of each other are one *dot* (a 2x2
splat flags its four corners' worth of pixels once), and :func:`speckles` counts dots.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SPECKLE_THRESHOLD", "speckle_mask", "speckles", "speckles_per_frame"]

#: difference (0-255, any channel) from the 3x3 median and from the recording
SPECKLE_THRESHOLD = 60


def speckle_mask(render: np.ndarray, recorded: np.ndarray,
                 threshold: int = SPECKLE_THRESHOLD) -> np.ndarray:
    """(H, W) bool: the flagged pixels of one (H, W, 3) uint8 render against the (H, W, 3)
    uint8 recording (see the module doc)."""
    from scipy.ndimage import median_filter

    if render.shape != recorded.shape or render.ndim != 3:
        raise ValueError(f"render {render.shape} and recording {recorded.shape} must be (H, W, 3)")
    r = render.astype(np.int16)
    med = median_filter(r, size=(3, 3, 1), mode="nearest")
    off_med = np.abs(r - med).max(-1) > threshold
    off_rec = np.abs(r - recorded.astype(np.int16)).max(-1) > threshold
    return off_med & off_rec


def speckles(render: np.ndarray, recorded: np.ndarray,
             threshold: int = SPECKLE_THRESHOLD) -> int:
    """Stray dots in one frame: connected groups of flagged pixels, pixels up to one apart
    counting as one group."""
    from scipy.ndimage import binary_dilation, label

    m = speckle_mask(render, recorded, threshold)
    if not m.any():
        return 0
    grown = binary_dilation(m, structure=np.ones((3, 3), bool))
    lab, n = label(grown, structure=np.ones((3, 3), bool))
    return int(len(np.unique(lab[m])))


def speckles_per_frame(renders: np.ndarray, recorded: np.ndarray,
                       threshold: int = SPECKLE_THRESHOLD) -> float:
    """Mean :func:`speckles` over (n, H, W, 3) uint8 renders and their recordings."""
    if len(renders) == 0:
        return float("nan")
    return float(np.mean([speckles(a, b, threshold) for a, b in zip(renders, recorded)]))
