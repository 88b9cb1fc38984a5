"""Known answers for the render-quality metrics: stray dots (``eval.metrics.speckle``) on a
real frame, and the open-mouth scores (``eval.metrics.open_mouth``) on landmark tracks whose
lip gaps are set by hand."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from eval.metrics.frames import EYE_CORNERS, INNER_LIP_PAIRS
from eval.metrics.open_mouth import open_frames, open_mouth_scores
from eval.metrics.speckle import speckle_mask, speckles, speckles_per_frame


@pytest.fixture(scope="module")
def frame(clips_dir: Path) -> np.ndarray:
    """Frame 10 of may_5s at 256², and a render-like copy (a light 3x3 box blur)."""
    from core.data.media import iter_frames

    for i, f in enumerate(iter_frames(clips_dir / "may_5s.mp4", size=(256, 256))):
        if i == 10:
            return f
    raise AssertionError("may_5s has fewer than 11 frames")


def _blurred(f: np.ndarray) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(f.astype(np.float64), size=(3, 3, 1), mode="nearest").round().astype(np.uint8)


def test_speckles_count_the_dots_a_render_adds(frame: np.ndarray) -> None:
    render = _blurred(frame)
    assert speckles(render, frame) == 0           # a soft render of the frame: no dots
    dots = [(40, 40), (60, 200), (128, 128), (200, 30), (220, 220)]
    for y, x in dots:
        render[y, x] = (255, 0, 255)
    assert speckles(render, frame) == 5
    render[100:102, 150:152] = (0, 255, 0)        # a 2x2 splat is one dot
    assert speckles(render, frame) == 6
    rec = frame.copy()
    rec[40, 40] = render[40, 40]                  # a dot the recording has too does not count
    assert speckles(render, rec) == 5
    assert speckle_mask(render, frame).sum() == 5 + 4
    assert speckles(render, frame, threshold=255) == 0
    assert speckles_per_frame(np.stack([render, _blurred(frame)]), np.stack([frame, frame])) == 3.0


def _track(gaps: np.ndarray, eye: float = 100.0) -> np.ndarray:
    """(T, 478, 2) landmarks whose inner-lip gap over the eye-corner distance is ``gaps``."""
    p = np.zeros((len(gaps), 478, 2))
    p[:, EYE_CORNERS[0]] = (100.0, 80.0)
    p[:, EYE_CORNERS[1]] = (100.0 + eye, 80.0)
    for a, b in INNER_LIP_PAIRS:
        p[:, a] = (150.0, 180.0)
        p[:, b, 0] = 150.0
        p[:, b, 1] = 180.0 + gaps * eye
    from core.data.masks import OUTER_LIPS

    for k in OUTER_LIPS:          # a lips box around (150, 180)
        p[:, k] = (150.0 + 20 * math.cos(k), 185.0 + 10 * math.sin(k))
    return p


def test_open_mouth_scores_on_known_gaps() -> None:
    rng = np.random.default_rng(0)
    T = 40
    gt_gap = np.linspace(0.0, 0.39, T)
    gt = _track(gt_gap)
    mumble = _track(0.7 * gt_gap)                 # opens 70 % as far
    assert open_frames(gt_gap, 0.9).sum() == 4 and open_frames(gt_gap, 0.75).sum() == 10
    frames = rng.integers(0, 255, (T, 256, 256, 3), dtype=np.uint8)
    head = np.zeros((T, 256, 256), bool)
    head[:, 50:250, 50:250] = True
    render = frames.copy()
    # wrong pixels only inside the mouth box of the open frames
    render[30:, 170:196, 125:176] = 255 - render[30:, 170:196, 125:176]
    s = open_mouth_scores(render, frames, head, mumble, gt)
    assert s.aperture_ratio_top == pytest.approx(0.7, abs=1e-9)
    assert s.frames_top == 4 and s.frames_open == 10
    assert s.psnr_mouth_open < s.psnr_head_open < 40
    exact = open_mouth_scores(frames, frames, head, gt, gt)
    assert exact.aperture_ratio_top == pytest.approx(1.0) and math.isinf(exact.psnr_mouth_open)
    assert math.isnan(open_mouth_scores(frames, frames, head, None, gt).aperture_ratio_top)
