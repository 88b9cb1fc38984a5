"""Training objectives shared by pre-training and adaptation (METHOD.md §4-5).

Images are (H, W, 3) float32 in [0, 1]; masks (H, W) bool.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WEIGHT = 0.2        # L1 + 0.2 (1 - SSIM)
ALPHA_WEIGHT = 0.05      # |alpha - soft head mask|, each side of the edge averaged over itself
EDGE_SIGMA_256 = 0.7     # soft head edge: Gaussian sigma in pixels at 256 px (scaled with res)
MOTION_WEIGHT = 1e-5     # |dxyz| + |drot| + |dscale| + |p_xyz|
GATE_WEIGHT = 1e-4       # eye gate off the lips box, both gates off hair
MOUTH_OUTSIDE_WEIGHT = 1e-2  # mouth alpha outside the lips box
LIPS_WEIGHT = 0.5        # extra photometric term on the lips box (face stage)
EDGE_BAND_256 = 4        # head-edge band half-width in pixels at 256 px (scaled with res)


def _gauss_window(size: int = 11, sigma: float = 1.5,
                  device: torch.device | None = None) -> Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two (H, W, C) images in [0, 1]: Gaussian window 11x11, sigma 1.5,
    C1 = 0.01², C2 = 0.03², 'same' zero-padded filtering (the 3DGS training loss form).

    The window is the outer product of a 1-D Gaussian, so the five local means are taken
    in one pass of two 1-D filterings (rows, then columns) over the five maps stacked as
    channels: 22 instead of 121 multiply-adds per pixel and map. Equal to the 2-D filtering
    (:func:`ssim_reference`) up to float32 rounding (``tests/test_objectives.py``)."""
    c = a.shape[-1]
    g = _gauss_window(window, sigma, a.device).to(a)
    x, y = a.permute(2, 0, 1), b.permute(2, 0, 1)
    maps = torch.cat([x, y, x * x, y * y, x * y])[None]  # (1, 5C, H, W)
    n = maps.shape[1]
    pad = window // 2
    f = F.conv2d(maps, g.view(1, 1, 1, window).expand(n, 1, 1, window), padding=(0, pad),
                 groups=n)
    f = F.conv2d(f, g.view(1, 1, window, 1).expand(n, 1, window, 1), padding=(pad, 0),
                 groups=n)
    mx, my, fxx, fyy, fxy = f[0].split(c)
    return _ssim_from_moments(mx, my, fxx - mx * mx, fyy - my * my, fxy - mx * my)


def ssim_reference(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """:func:`ssim` with the 11x11 window applied as one 2-D filter per map (the plain
    form; slower)."""
    c = a.shape[-1]
    g = _gauss_window(window, sigma, a.device).to(a)
    w = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, w, padding=window // 2, groups=c)

    mx, my = filt(x), filt(y)
    return _ssim_from_moments(mx, my, filt(x * x) - mx * mx, filt(y * y) - my * my,
                              filt(x * y) - mx * my)


def _ssim_from_moments(mx: Tensor, my: Tensor, sxx: Tensor, syy: Tensor, sxy: Tensor) -> Tensor:
    """Mean of the SSIM map from local means ``mx``, ``my``, variances and covariance."""
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def photometric(pred: Tensor, target: Tensor) -> Tensor:
    """``L1 + 0.2 (1 - SSIM)`` over the whole image (METHOD §5)."""
    return (pred - target).abs().mean() + SSIM_WEIGHT * (1.0 - ssim(pred, target))


def box_photometric(pred: Tensor, target: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """:func:`photometric` on the crop ``box = (y0, y1, x0, x1)`` (end-exclusive); L1 alone
    when the crop is smaller than the 11 px SSIM window, 0 when it is empty."""
    y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        return pred.sum() * 0.0
    p, t = pred[y0:y1, x0:x1], target[y0:y1, x0:x1]
    if (y1 - y0) >= 11 and (x1 - x0) >= 11:
        return photometric(p, t)
    return (p - t).abs().mean()


def soft_edge(mask: Tensor, res: int | None = None) -> Tensor:
    """(H, W) float weights in [0, 1]: the bool ``mask`` (H, W) with its edge softened by a
    Gaussian of ``EDGE_SIGMA_256 * res / 256`` pixels (``res`` defaults to the mask width), so
    the edge is as wide in the picture at every resolution. Recorded boundary pixels mix the
    head with what lies behind it; a hard 0/1 target asks the renderer for a step it cannot
    make and leaves a seam."""
    res = res or mask.shape[-1]
    sigma = EDGE_SIGMA_256 * res / 256.0
    m = mask.to(torch.float32)
    if sigma < 0.25:
        return m
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=m.device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = (g / g.sum()).to(m)
    t = F.pad(m[None, None], (r, r, r, r), mode="replicate")
    t = F.conv2d(t, g.view(1, 1, 1, -1))
    t = F.conv2d(t, g.view(1, 1, -1, 1))
    return t[0, 0].clamp(0.0, 1.0)


def edge_band(mask: Tensor, res: int | None = None) -> Tensor:
    """(H, W) bool: pixels within ``EDGE_BAND_256 * res / 256`` px (at least 1; a square
    neighbourhood) of the boundary of the bool ``mask`` (H, W), on either side; outside the
    frame counts as neither, so the frame edge adds no band. ``res`` defaults to the mask
    width. The band the benchmark scores (``eval.metrics.frames.boundary_band``, a disc) is this
    band's inscribed subset."""
    res = res or mask.shape[-1]
    b = max(1, round(EDGE_BAND_256 * res / 256))
    m = mask.to(torch.float32)[None, None]
    grown = F.max_pool2d(m, 2 * b + 1, stride=1, padding=b)[0, 0] > 0.5
    shrunk = -F.max_pool2d(-m, 2 * b + 1, stride=1, padding=b)[0, 0] > 0.5
    return grown & ~shrunk


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean ``|pred - target|`` over the pixels of bool ``mask`` (H, W) (images (H, W, C));
    0 when the mask is empty."""
    m = mask.to(pred.dtype)[..., None]
    n = m.sum() * pred.shape[-1]
    return ((pred - target).abs() * m).sum() / n.clamp_min(1.0)


def alpha_loss(alpha: Tensor, inside: Tensor, target: Tensor | None = None) -> Tensor:
    """Opacity term: ``|alpha - target|`` averaged over the head (``inside``) plus the same
    averaged over the rest of the frame, each side over its own pixels (so a head of 20 % of
    the frame weighs as much as its surroundings, and the edge is not lost in a frame mean).

    alpha: (H, W, 1); inside: (H, W) bool head mask; target: (H, W) soft mask
    (:func:`soft_edge`), default the hard mask."""
    a = alpha[..., 0]
    m = inside.to(a.dtype)
    t = m if target is None else target.to(a)
    err = (a - t).abs()
    n_in = m.sum().clamp_min(1.0)
    n_out = (1.0 - m).sum().clamp_min(1.0)
    return (err * m).sum() / n_in + (err * (1.0 - m)).sum() / n_out


def box_mask(box: Tensor | Sequence[int], height: int, width: int, pad: int = 0,
             device: torch.device | None = None) -> Tensor:
    """(H, W) bool mask of an ``x0, y0, x1, y1`` pixel box (end-exclusive), grown by ``pad``,
    on ``device``; ``box`` a host tensor or Python numbers."""
    x0, y0, x1, y1 = [int(v) for v in (box.tolist() if isinstance(box, Tensor) else box)]
    m = torch.zeros(height, width, dtype=torch.bool, device=device)
    m[max(0, y0 - pad):min(height, y1 + pad), max(0, x0 - pad):min(width, x1 + pad)] = True
    return m


def gate_loss(gates_img: Tensor, lips: Tensor, hair: Tensor) -> Tensor:
    """Gate regulariser on rendered gate magnitudes ``gates_img`` (H, W, 2) = (audio, eye):
    the eye gate should be silent on the lips box, both gates silent on hair. Each term is a
    mean over its own region (not over the frame, where the lips box is ~1 % of the pixels)."""
    audio_g, eye_g = gates_img[..., 0], gates_img[..., 1]
    lips_m, hair_m = lips.to(eye_g), hair.to(eye_g)
    l_eye = (eye_g * lips_m).sum() / lips_m.sum().clamp_min(1.0)
    l_hair = ((audio_g + eye_g) * hair_m).sum() / hair_m.sum().clamp_min(1.0)
    return l_eye + l_hair
