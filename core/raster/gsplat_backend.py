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

TILE = 16


#: gsplat's packed mode (projected Gaussians as a flat list of the visible ones: less memory
#: on large scenes); False runs its dense (N-row) mode, kept for comparison in the GPU check
PACKED = True


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                     feats: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
                     background: Tensor, near_plane: float, far_plane: float,
                     eps2d: float, packed: bool | None = None) -> dict[str, Tensor]:
    """Same contract as the torch backend, via gsplat's fused CUDA kernels.

    Matches ours: the ``eps2d`` blur without opacity compensation (gsplat's "classic"
    mode), opacity-aware bounds, 16 px tiles.

    Args: (N, 3) means, (N, 4) wxyz quats, (N, 3) scales, (N,) opacities, (N, C) features
        (colours already evaluated), (4, 4) viewmat, (3, 3) K, background (C,);
        ``packed``: gsplat's packed mode (default :data:`PACKED`).
    Returns: dict ``image`` (H, W, C), ``alpha`` (H, W, 1), ``depth_acc`` (H, W, 1),
        ``means2d`` (N, 2) with ``retain_grad()`` (zero rows and gradients for Gaussians
        outside the view), ``radii`` (N, 2) int32, ``visible`` (N,).
    """
    from gsplat import fully_fused_projection

    packed = PACKED if packed is None else packed
    proj = fully_fused_projection(
        means, None, quats, scales, viewmat[None], K[None], width, height, eps2d=eps2d,
        near_plane=near_plane, far_plane=far_plane, radius_clip=0.0, packed=packed,
        calc_compensations=False, opacities=opacities)
    C = feats.shape[1]
    bg = torch.cat([background, background.new_zeros(1)])
    if packed:
        return _packed(proj, means.shape[0], opacities, feats, width, height, bg, C)
    return _dense(proj, opacities, feats, width, height, bg, C)


def _dense(proj: tuple, opacities: Tensor, feats: Tensor, width: int, height: int,
           bg: Tensor, C: int) -> dict[str, Tensor]:
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels

    radii, m2d, depths, conics, _ = proj
    means2d = m2d[0]  # (N, 2); the rasterizer consumes this view so its .grad is filled
    if means2d.requires_grad:
        means2d.retain_grad()
    f = torch.cat([feats, depths[0, :, None]], 1)
    tw, th = math.ceil(width / TILE), math.ceil(height / TILE)
    _, isect_ids, flatten_ids = isect_tiles(means2d[None], radii, depths, TILE, tw, th,
                                            packed=False, n_images=1)
    offsets = isect_offset_encode(isect_ids, 1, tw, th).reshape(1, th, tw)
    img, alpha = rasterize_to_pixels(means2d[None], conics, f[None], opacities[None], width,
                                     height, TILE, offsets, flatten_ids, backgrounds=bg[None])
    vis = (radii[0] > 0).all(-1)
    return {"image": img[0, ..., :C], "alpha": alpha[0], "depth_acc": img[0, ..., C:],
            "means2d": means2d, "radii": radii[0].to(torch.int32), "visible": vis}


def _packed(proj: tuple, n: int, opacities: Tensor, feats: Tensor, width: int, height: int,
            bg: Tensor, C: int) -> dict[str, Tensor]:
    """Packed mode: gsplat returns only the ``nnz`` visible Gaussians. Their screen positions
    are scattered into an (N, 2) tensor that the rasterizer reads back through the same
    indices, so ``means2d.grad`` is per Gaussian, as densification needs."""
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels

    batch_ids, camera_ids, gids32, radii_p, m2d_p, depths_p, conics_p, _ = proj
    gids = gids32.long()
    means2d = m2d_p.new_zeros(n, 2).index_put((gids,), m2d_p)  # (N, 2), differentiable
    if means2d.requires_grad:
        means2d.retain_grad()
    m2d = means2d[gids]                                           # (nnz, 2)
    f = torch.cat([feats[gids], depths_p[:, None]], 1)
    tw, th = math.ceil(width / TILE), math.ceil(height / TILE)
    image_ids = batch_ids * 1 + camera_ids
    _, isect_ids, flatten_ids = isect_tiles(m2d, radii_p, depths_p, TILE, tw, th, packed=True,
                                            n_images=1, image_ids=image_ids, gaussian_ids=gids32)
    offsets = isect_offset_encode(isect_ids, 1, tw, th).reshape(1, th, tw)
    img, alpha = rasterize_to_pixels(m2d, conics_p, f, opacities[gids], width, height, TILE,
                                     offsets, flatten_ids, backgrounds=bg, packed=True)
    img = img.reshape(height, width, -1)
    alpha = alpha.reshape(height, width, 1)
    radii = radii_p.new_zeros(n, 2).index_put((gids,), radii_p)
    vis = (radii > 0).all(-1)
    return {"image": img[..., :C], "alpha": alpha, "depth_acc": img[..., C:],
            "means2d": means2d, "radii": radii.to(torch.int32), "visible": vis}
