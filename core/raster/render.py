"""Differentiable 3D Gaussian rasterization with gsplat ``rasterization()`` semantics.

One camera, pinhole (conventions in :mod:`core`: OpenCV camera, world-to-camera ``viewmat``,
pixel centres at +0.5, wxyz quaternions, activated scales). Backends:

* ``"gsplat"``: gsplat's CUDA kernels; chosen by ``"auto"`` for CUDA tensors. gsplat is
  imported lazily inside that branch only (never on CPU-only machines).
* ``"torch"``: tiled torch compositor with a hand-written backward; ``"auto"`` otherwise.
* ``"reference"``: float64 brute force, for tests (slow; outputs are float64).

All three follow the same rules (see :mod:`core.raster.projection` and
:mod:`core.raster.torch_backend`): EWA splatting with gsplat's frustum clamp, ``eps2d`` blur,
opacity-aware 3.33-sigma boxes, ``alpha = min(0.999, o exp(-sigma))``, skip ``alpha < 1/255``,
stop before the transmittance reaches ``1e-4``.

CPU speed (torch backend, 2 cores, 10k Gaussians): ~35 ms render / ~75 ms render+backward at
256^2 on an idle machine (``python -m bench.render``). Intra-op threads synchronise on every
large op, so on a CPU shared with other busy processes ``torch.set_num_threads(1)`` is often
faster than 2.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from core.raster.projection import camera_center, project
from core.raster.sh import sh_to_rgb
from core.raster.tiles import TILE, bin_gaussians
from core.raster.torch_backend import DEFAULT_BUDGET, composite

__all__ = ["RenderOutput", "rasterize", "raster_backend", "RASTER_CHOICES", "RASTER_HELP"]

#: what a job's ``--raster`` option takes
RASTER_CHOICES = ("auto", "gsplat", "torch")
RASTER_HELP = ("rasterizer: auto (gsplat's CUDA kernels for CUDA tensors, else ours), gsplat, or "
               "torch (ours, also on CUDA)")

#: the backend ``rasterize(backend=None)`` uses; set with :func:`raster_backend`
_DEFAULT_BACKEND = "auto"


@contextmanager
def raster_backend(name: str) -> Iterator[None]:
    """Within the block, ``rasterize`` calls that name no backend use ``name`` (one of
    :data:`RASTER_CHOICES` or ``"reference"``): how a job's ``--raster`` reaches every render
    without threading it through the model code."""
    global _DEFAULT_BACKEND
    if name not in RASTER_CHOICES + ("reference",):
        raise ValueError(f"unknown backend {name!r}; one of {RASTER_CHOICES}")
    old, _DEFAULT_BACKEND = _DEFAULT_BACKEND, name
    try:
        yield
    finally:
        _DEFAULT_BACKEND = old

# Torch backend: project in float64 (O(N), cheap) and cast the screen-space results to the
# input dtype; keeps float32 gradients of thin / near-camera Gaussians accurate.
PROJECT_FP64 = True


@dataclass
class RenderOutput:
    """Rendered image and per-Gaussian screen-space data.

    image: (H, W, C) float32, features composited front to back over ``background``
        (C = colour channels including any extra feature channels).
    alpha: (H, W, 1) accumulated opacity ``1 - T_final``.
    depth: (H, W, 1) expected camera-space z: ``sum_i w_i z_i / max(alpha, 1e-10)`` with the
        compositing weights ``w_i = alpha_i T_i`` (gsplat's "ED"); exactly 0 where nothing
        was composited. World units.
    means2d: (N, 2) projected centres in pixels (0 where culled). In the autograd graph with
        ``retain_grad()`` called, so after ``backward()`` ``means2d.grad`` is the screen-space
        gradient (pixels^-1, not normalised) used for densification.
    radii: (N,) int32 pixel radius ``max(rx, ry)`` of the opacity-aware box, 0 where culled.
    visible: (N,) bool, ``radii > 0``.
    """

    image: Tensor
    alpha: Tensor
    depth: Tensor
    means2d: Tensor
    radii: Tensor
    visible: Tensor


def _check(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
           viewmat: Tensor, K: Tensor, sh_degree: int | None) -> None:
    N = means.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or scales.shape != (N, 3):
        raise ValueError(f"means/quats/scales must be (N,3)/(N,4)/(N,3), got "
                         f"{tuple(means.shape)}/{tuple(quats.shape)}/{tuple(scales.shape)}")
    if opacities.shape != (N,):
        raise ValueError(f"opacities must be (N,), got {tuple(opacities.shape)}")
    if sh_degree is None and (colors.dim() != 2 or colors.shape[0] != N):
        raise ValueError(f"colors must be (N, C) without sh_degree, got {tuple(colors.shape)}")
    if sh_degree is not None and (colors.dim() != 3 or colors.shape[0] != N):
        raise ValueError(f"SH colors must be (N, K, 3), got {tuple(colors.shape)}")
    if viewmat.shape != (4, 4) or K.shape != (3, 3):
        raise ValueError(f"viewmat must be (4,4) and K (3,3), got {tuple(viewmat.shape)}, {tuple(K.shape)}")


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmat: Tensor, K: Tensor, width: int, height: int,
              background: Tensor | None = None, sh_degree: int | None = None,
              near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
              backend: str | None = None, tile: int = TILE) -> RenderOutput:
    """Render N Gaussians into one (height, width) view.

    Args:
        means: (N, 3) world positions.  quats: (N, 4) wxyz, any norm.
        scales: (N, 3) activated (positive) world-unit standard deviations.
        opacities: (N,) in [0, 1] (activated).
        colors: (N, C) features rendered as they are (RGB and/or extra channels), or, with
            ``sh_degree = d`` in {0, 1, 2}, SH coefficients (N, K >= (d+1)^2, 3) evaluated
            along camera centre -> mean, then ``max(. + 0.5, 0)`` as gsplat / 3DGS.
        viewmat: (4, 4) world-to-camera.  K: (3, 3) intrinsics (pixels).
        width, height: image size in pixels.
        background: (C,) colour behind the Gaussians; None = zeros.
        near_plane, far_plane: camera-z culling range (world units).
        eps2d: screen-space blur added to the 2D covariance (pixels^2).
        backend: "auto" (gsplat on CUDA tensors, else torch), "torch", "gsplat", "reference";
            None: the one :func:`raster_backend` set (default "auto").
        tile: tile edge in pixels of the torch backend (16 as gsplat; the image does not
            depend on it beyond float32 rounding; 8 does less work on small splats).
    Returns:
        :class:`RenderOutput`.
    """
    _check(means, quats, scales, opacities, colors, viewmat, K, sh_degree)
    if backend is None:
        backend = _DEFAULT_BACKEND
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "torch"
    if backend not in ("torch", "gsplat", "reference"):
        raise ValueError(f"unknown backend {backend!r}")
    viewmat = viewmat.to(means)
    K = K.to(means)
    feats = colors
    if sh_degree is not None:
        feats = sh_to_rgb(sh_degree, colors, means, camera_center(viewmat))
    C = feats.shape[1]
    bg = feats.new_zeros(C) if background is None else background.to(feats)
    if bg.shape != (C,):
        raise ValueError(f"background must be ({C},), got {tuple(bg.shape)}")

    if backend == "gsplat":
        if not means.is_cuda:
            raise ValueError("the gsplat backend needs CUDA tensors")
        from core.raster.gsplat_backend import rasterize_gsplat
        r = rasterize_gsplat(means, quats, scales, opacities, feats, viewmat, K, width, height,
                             bg, near_plane, far_plane, eps2d)
    elif backend == "reference":
        from core.raster.reference import reference_rasterize
        r = reference_rasterize(means, quats, scales, opacities, feats, viewmat, K, width, height,
                                bg, near_plane, far_plane, eps2d)
    else:
        r = _rasterize_torch(means, quats, scales, opacities, feats, viewmat, K, width, height,
                             bg, near_plane, far_plane, eps2d, tile=tile)
    alpha = r["alpha"]
    depth = r["depth_acc"] / alpha.clamp_min(1e-10)
    radii = r["radii"].max(dim=-1).values.to(torch.int32)
    return RenderOutput(image=r["image"], alpha=alpha, depth=depth, means2d=r["means2d"],
                        radii=radii, visible=r["visible"])


def _rasterize_torch(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                     feats: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
                     bg: Tensor, near_plane: float, far_plane: float, eps2d: float,
                     budget: int = DEFAULT_BUDGET, tile: int = TILE) -> dict[str, Tensor]:
    """Torch backend: autograd projection + tiled compositing (depth as an extra channel)."""
    # float64 projection: cheap (O(N)) and keeps float32 gradients accurate for thin or
    # nearly pixel-sized Gaussians, where J Sigma J^T + eps2d loses digits
    d = torch.float64 if means.dtype == torch.float32 and PROJECT_FP64 else means.dtype
    proj = project(means.to(d), quats.to(d), scales.to(d), opacities, viewmat.to(d), K.to(d),
                   width, height, near_plane, far_plane, eps2d)
    means2d = proj.means2d.to(means.dtype)
    if means2d.requires_grad:
        means2d.retain_grad()
    C = feats.shape[1]
    f = torch.cat([feats, proj.depths.unsqueeze(1).to(feats)], 1)
    bg1 = torch.cat([bg, bg.new_zeros(1)])
    bins = bin_gaussians(means2d, proj.radii, proj.depths, proj.visible, width, height,
                         tile=tile, conics=proj.conics, opacities=opacities)
    img, alpha = composite(means2d, proj.quad.to(means.dtype), opacities, f, bg1, bins,
                           width, height, budget)
    return {"image": img[..., :C], "alpha": alpha, "depth_acc": img[..., C:],
            "means2d": means2d, "radii": proj.radii, "visible": proj.visible}
