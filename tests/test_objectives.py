"""Training objectives with known answers: the soft head edge and the region-normalised
opacity term, the separable SSIM against the 2-D window (core.train.objectives)."""
from __future__ import annotations

import pytest
import torch

from core.train.objectives import EDGE_SIGMA_256, alpha_loss, soft_edge


def _edge_width(res: int) -> int:
    """Pixels of a straight vertical edge whose soft weight lies strictly between 0.05 and 0.95."""
    m = torch.zeros(res, res, dtype=torch.bool)
    m[:, res // 2:] = True
    w = soft_edge(m, res)[res // 2]
    return int(((w > 0.05) & (w < 0.95)).sum())


def test_soft_edge_is_symmetric_and_scales_with_resolution() -> None:
    res = 256
    m = torch.zeros(res, res, dtype=torch.bool)
    m[:, res // 2:] = True
    w = soft_edge(m, res)
    # a straight edge: 0.5 halfway between the last outside and the first inside pixel
    assert float(w[10, res // 2 - 1] + w[10, res // 2]) == pytest.approx(1.0, abs=1e-5)
    assert float(w[10, 0]) == 0.0 and float(w[10, -1]) == 1.0
    # the same width in the picture: twice the pixels at twice the resolution
    assert _edge_width(512) == pytest.approx(2 * _edge_width(256), abs=1)
    assert _edge_width(256) >= 2 and EDGE_SIGMA_256 > 0


def test_alpha_loss_weighs_each_side_of_the_edge_by_itself() -> None:
    """A 10x10 head in a 100x100 frame: a fully transparent head costs 1, not 1 % (a frame
    mean); stray opacity over the whole outside costs 1 as well."""
    inside = torch.zeros(100, 100, dtype=torch.bool)
    inside[40:50, 40:50] = True
    transparent = torch.zeros(100, 100, 1)
    assert float(alpha_loss(transparent, inside)) == pytest.approx(1.0)
    exact = inside.float()[..., None]
    assert float(alpha_loss(exact, inside)) == pytest.approx(0.0)
    assert float(alpha_loss(torch.ones(100, 100, 1), inside)) == pytest.approx(1.0)
    # with a soft target the loss is zero at the target and positive for the hard mask
    soft = soft_edge(inside, 256)
    assert float(alpha_loss(soft[..., None], inside, soft)) == pytest.approx(0.0, abs=1e-6)
    assert float(alpha_loss(exact, inside, soft)) > 0.0


def test_edge_band_and_masked_l1_known_answers():
    from core.train.objectives import edge_band, masked_l1

    m = torch.zeros(64, 64, dtype=torch.bool)
    m[20:40, 20:40] = True                                   # a 20 px square head
    band = edge_band(m, res=256)                             # 4 px either side
    assert int(band.sum()) == 28 * 28 - 12 * 12
    assert band[16, 30] and band[23, 30] and not band[24, 30] and not band[15, 30]
    assert int(edge_band(m, res=64).sum()) == 22 * 22 - 18 * 18  # 1 px at 64 px
    edge = torch.zeros(64, 64, dtype=torch.bool)
    edge[:, :10] = True                                      # touches the frame edge
    assert not edge_band(edge, res=256)[:, 0].any()          # the frame edge is no boundary
    pred, target = torch.zeros(64, 64, 3), torch.zeros(64, 64, 3)
    pred[band] = 0.5
    assert float(masked_l1(pred, target, band)) == pytest.approx(0.5)
    assert float(masked_l1(pred, target, ~band)) == 0.0
    assert float(masked_l1(pred, target, torch.zeros_like(band))) == 0.0


def test_separable_ssim_equals_the_2d_window(may_clip) -> None:
    """The training SSIM (two 1-D passes over the five maps at once) equals the 11x11 2-D
    window's computed in float64, value and gradient, on real frames and their noisy copies,
    at even and odd sizes and at the smallest size the window fits (closer to it than the
    float32 2-D form, whose variances lose digits); identical images give exactly 1."""
    from core.data.dataset import ProcessedClip
    from core.train.objectives import ssim, ssim_reference

    frames = ProcessedClip.load(may_clip).frames[:2].float() / 255.0  # (2, 128, 128, 3)
    gen = torch.Generator().manual_seed(0)
    for a, b in [(frames[0], frames[1]), (frames[0][5:62, 9:40], frames[1][5:62, 9:40]),
                 (frames[0][:11, :11], frames[1][:11, :11])]:
        b = (b + 0.05 * torch.randn(b.shape, generator=gen)).clamp(0, 1)
        x, x64 = a.clone().requires_grad_(True), a.double().requires_grad_(True)
        s, s64 = ssim(x, b), ssim_reference(x64, b.double())
        (g,), (g64,) = torch.autograd.grad(s, x), torch.autograd.grad(s64, x64)
        assert 0.0 < float(s64) < 1.0
        assert abs(float(s) - float(s64)) < 1e-6
        assert abs(float(ssim_reference(a, b)) - float(s64)) < 2e-5  # the float32 2-D form
        assert float((g.double() - g64).abs().max()) < 1e-3 * float(g64.abs().max())
    assert float(ssim(frames[0], frames[0])) == pytest.approx(1.0, abs=1e-6)
