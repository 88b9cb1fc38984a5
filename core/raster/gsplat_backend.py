"""gsplat (CUDA) backend. gsplat is imported *inside* the function only.

Never import this module's function on a CPU-only machine: gsplat 1.5.3 imports
``packaging`` without declaring it and JIT-compiles its CUDA extension on first use when
``nvcc`` exists, which fails without a GPU. :func:`core.raster.render.rasterize` only calls it for
CUDA tensors.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                     feats: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
                     background: Tensor, near_plane: float, far_plane: float,
                     eps2d: float) -> dict[str, Tensor]:
    """Same contract as the torch backend, via gsplat's fused CUDA kernels.

    Args: (N, 3) means, (N, 4) wxyz quats, (N, 3) scales, (N,) opacities, (N, C) features
        (colours already evaluated), (4, 4) viewmat, (3, 3) K, background (C,).
    Returns: dict ``image`` (H, W, C), ``alpha`` (H, W, 1), ``depth_acc`` (H, W, 1),
        ``means2d`` (N, 2) with ``retain_grad()``, ``radii`` (N, 2) int32, ``visible`` (N,).
    """
    from gsplat import (
        fully_fused_projection,
        isect_offset_encode,
        isect_tiles,
        rasterize_to_pixels,
    )

    tile = 16
    radii, m2d, depths, conics, _ = fully_fused_projection(
        means, None, quats, scales, viewmat[None], K[None], width, height, eps2d=eps2d,
        near_plane=near_plane, far_plane=far_plane, radius_clip=0.0, packed=False,
        calc_compensations=False, opacities=opacities)
    means2d = m2d[0]  # (N, 2); the rasterizer consumes this view so its .grad is filled
    if means2d.requires_grad:
        means2d.retain_grad()
    C = feats.shape[1]
    f = torch.cat([feats, depths[0, :, None]], 1)
    bg = torch.cat([background, background.new_zeros(1)])
    tw, th = math.ceil(width / tile), math.ceil(height / tile)
    _, isect_ids, flatten_ids = isect_tiles(means2d[None], radii, depths, tile, tw, th,
                                            packed=False, n_images=1)
    offsets = isect_offset_encode(isect_ids, 1, tw, th).reshape(1, th, tw)
    img, alpha = rasterize_to_pixels(means2d[None], conics, f[None], opacities[None], width,
                                     height, tile, offsets, flatten_ids, backgrounds=bg[None])
    vis = (radii[0] > 0).all(-1)
    return {"image": img[0, ..., :C], "alpha": alpha[0], "depth_acc": img[0, ..., C:],
            "means2d": means2d, "radii": radii[0].to(torch.int32), "visible": vis}
