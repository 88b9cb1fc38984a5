"""The head-boundary band metric (eval/metrics/frames.py) and its benchmark columns
(eval/bench/scoring.py, eval/bench/tables.py): band geometry on discs of known radius, band
PSNR / SSIM known answers, and the scores of a real preprocessed clip."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.dataset import ProcessedClip
from core.data.masks import head_mask
from eval.metrics.frames import (
    BandConfig,
    band_width,
    boundary_band,
    image_metrics,
    psnr,
    ssim,
)
from eval.bench.scoring import Render, ScoreConfig, score_render
from eval.bench.tables import COLUMNS, CSV_COLUMNS


def _disc(size: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) bool disc of ``radius`` px centred in the frame, and each pixel's
    distance from the centre."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - c, xx - c)
    return r <= radius, r


def test_band_width_scales_with_the_frame():
    assert band_width(256) == 4
    assert band_width(512) == 8 and band_width(128) == 2
    assert band_width(64) == 1 and band_width(16) == 1  # never below one pixel
    assert band_width(450) == 7  # round(4 * 450 / 256) = round(7.03)
    assert band_width(256, BandConfig(width_px=2.0)) == 2
    with pytest.raises(ValueError):
        band_width(0)


@pytest.mark.parametrize("size, radius", [(256, 60.0), (512, 120.0), (128, 30.0)])
def test_band_of_a_disc_is_a_ring_of_known_width(size: int, radius: float):
    head, r = _disc(size, radius)
    band = boundary_band(head)
    b = band_width(size)
    assert b == 4 * size // 256
    # within b px of the circle on either side (one pixel of slack for the pixel grid)
    assert np.abs(r[band] - radius).max() <= b + 1.0
    assert band[np.abs(r - radius) <= b - 1.0].all()
    # area of the ring pi ((R + b)^2 - (R - b)^2) = 4 pi R b, to 5 %
    assert band.sum() == pytest.approx(4 * math.pi * radius * b, rel=0.05)
    # half inside the head, half outside
    assert (band & head).sum() == pytest.approx((band & ~head).sum(), rel=0.1)
    # an explicit width overrides the scaled one
    wide = boundary_band(head, width=2 * b)
    assert wide.sum() == pytest.approx(2 * band.sum(), rel=0.05) and (wide | ~band).all()


def test_band_edge_cases():
    size = 64
    head = np.zeros((size, size), bool)
    assert not boundary_band(head).any()                 # no head, no boundary
    assert not boundary_band(~head).any()                # head fills the frame: no boundary
    head[:, :20] = True                                  # head cut by the frame edge
    band = boundary_band(head, width=3)
    # only the vertical boundary at x = 20 gives a band, the frame edges do not
    assert np.array_equal(np.flatnonzero(band.any(0)), np.arange(17, 23))
    assert band.all(0)[17:23].all()
    # a batch of masks is banded frame by frame
    batch = np.stack([head, np.zeros_like(head)])
    got = boundary_band(batch, width=3)
    assert got.shape == batch.shape and np.array_equal(got[0], band) and not got[1].any()
    with pytest.raises(ValueError):
        boundary_band(np.zeros(5, bool))
    with pytest.raises(ValueError):
        boundary_band(head, width=0)


def test_band_psnr_and_ssim_known_answers():
    size, radius = 256, 70.0
    head, r = _disc(size, radius)
    band = boundary_band(head)
    rng = np.random.default_rng(0)
    gt = rng.integers(20, 200, (size, size, 3), dtype=np.uint8)
    # only band pixels differ, by 10 levels in every channel: band MSE = 100
    pred = gt.copy()
    pred[band] += 10
    r1 = image_metrics([pred], [gt], head_masks=[head], band_masks=[band], use_lpips=False)
    assert r1.psnr_band == pytest.approx(10 * math.log10(255.0 ** 2 / 100.0), abs=1e-9)
    inside = (band & head).sum() / head.sum()  # head MSE = 100 * (band share of the head)
    assert r1.psnr_head == pytest.approx(10 * math.log10(255.0 ** 2 / (100.0 * inside)),
                                         abs=1e-9)
    assert r1.psnr_band < r1.psnr_head - 5.0
    assert r1.ssim_band < r1.ssim_head < 1.0
    assert r1.ssim_band == pytest.approx(ssim(pred, gt, mask=band), abs=1e-12)
    # a change farther from the band than the SSIM window (an 11 x 11 square: up to
    # 5 sqrt(2) px away on a diagonal) moves neither band score, but does move the head and
    # full-frame ones
    gap = band_width(size) + 1 + 5 * math.sqrt(2) + 1
    far_in, far_out = r < radius - gap, r > radius + gap
    pred2 = pred.copy()
    pred2[far_in] = 255 - pred2[far_in]
    pred2[far_out] = 0
    r2 = image_metrics([pred2], [gt], head_masks=[head], band_masks=[band], use_lpips=False)
    assert r2.psnr_band == r1.psnr_band and r2.ssim_band == pytest.approx(r1.ssim_band,
                                                                           abs=1e-12)
    assert r2.psnr_head < r1.psnr_head - 3.0 and r2.psnr < r1.psnr - 3.0
    # identical band pixels: inf (a clip mean skips such frames, as for the full frame)
    assert psnr(pred2, pred, mask=band) == math.inf
    # frames without a band are left out; no band masks at all: no band scores
    r3 = image_metrics([pred, pred], [gt, gt], band_masks=[band, np.zeros_like(band)],
                       use_lpips=False)
    assert r3.psnr_band == pytest.approx(r1.psnr_band) and r3.num_frames == 2
    r4 = image_metrics([pred], [gt], use_lpips=False)
    assert r4.psnr_band is None and r4.ssim_band is None


def test_band_columns_in_the_tables():
    keys = [c.key for c in COLUMNS]
    assert keys.index("psnr_band") == keys.index("psnr_head") + 1
    assert keys.index("ssim_band") == keys.index("ssim_head") + 1
    for k in ("psnr_band", "ssim_band", "shuffled_psnr_band", "silence_ssim_band"):
        assert k in CSV_COLUMNS


@pytest.fixture(scope="module")
def may_clip(may_clip: Path) -> ProcessedClip:
    """The session's may_5s (preprocessed at 128 px, first 75 frames), loaded."""
    return ProcessedClip.load(may_clip)


def test_scoring_has_band_columns_on_a_real_clip(may_clip: ProcessedClip):
    from eval.bench.baselines import test_audio
    from eval.bench.protocol import ground_truth, heldout_frames

    idx = torch.arange(25, 50)
    gt = ground_truth(heldout_frames(may_clip, idx, 128, 25))
    # the recorded labels (labels >= HAIR) give the ground truth's head
    assert np.array_equal(head_mask(may_clip.labels[25:50].numpy()), gt.head)
    assert gt.head.any((1, 2)).all() and not gt.head.all((1, 2)).any()
    band = boundary_band(gt.head)
    assert band_width(128) == 2 and band.any((1, 2)).all()
    # the recorded head over a wrong plate (the frame darkened outside the head): head
    # scores perfect, the band sees the plate half of the ring
    wrong = np.where(gt.head[..., None], gt.frames, gt.frames // 2)
    r = Render(wrong, test_audio(may_clip, idx), None, None, gt)
    s = score_render(r, ScoreConfig(landmarks=False))
    for k in ("psnr_band", "ssim_band", "psnr_head", "ssim_head"):
        assert k in s
    assert s["psnr_head"] == "inf" and s["ssim_head"] == pytest.approx(1.0, abs=0.05)
    per_frame = []
    for t in range(len(idx)):
        m = band[t]
        d = wrong[t][m].astype(float) - gt.frames[t][m].astype(float)
        per_frame.append(10 * math.log10(255.0 ** 2 / (d ** 2).mean()))
    assert s["psnr_band"] == pytest.approx(float(np.mean(per_frame)), abs=1e-9)
    assert 0.0 < s["ssim_band"] < s["ssim_head"]
    # the recording itself (``gt`` None) has no image scores
    s0 = score_render(Render(gt.frames, r.audio, None, None, None),
                      ScoreConfig(landmarks=False))
    assert s0["psnr_band"] == s0["ssim_band"] == "n/a"


def test_band_floor_of_a_real_clip(may_clip: ProcessedClip):
    """The recording against itself moved by a pixel: perfect nowhere, and worse in the band
    (where the edges are) than over the head; a gentle blur costs far less than the shift."""
    from eval.studies.band_floor import band_floor

    r = band_floor(may_clip.root, train_seconds=1.0, num_frames=10)
    shift_head, shift_band = r["1 px right"]
    blur_head, blur_band = r["blur 0.7 px"]
    assert 15 < shift_band < shift_head < 60
    assert blur_band > shift_band + 3 and blur_head > shift_head + 3
    assert r["gradient ratio"] > 1.0
