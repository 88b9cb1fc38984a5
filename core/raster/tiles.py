"""Tile binning: which projected Gaussians can touch which 16x16 pixel tile, front to back.

A Gaussian's tile rectangle follows gsplat: ``floor((u - rx) / T) .. ceil((u + rx) / T)``
(exclusive end), clamped to the tile grid, with the opacity-aware radii of
:mod:`core.raster.projection`; outside that box its alpha is below 1/255. Optionally (the
torch backend does) tiles of the box that the ``alpha >= 1/255`` ellipse itself misses are
dropped too, by an exact float64 test with a small conservative margin. Neither step changes
the image, only the work (the ellipse test removes ~20% of the pairs for round splats).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TILE = 16


@dataclass
class TileBins:
    """Per-tile, depth-sorted Gaussian lists in CSR form.

    gauss_ids: (M,) int64 Gaussian index of every (tile, Gaussian) pair, grouped by tile,
        nearest first inside a tile (ties by Gaussian index, as a stable sort).
    offsets: (n_tiles + 1,) int64 start of each tile's list in ``gauss_ids``.
    counts: (n_tiles,) int64 list lengths.
    tiles_x, tiles_y: tile grid size; tile ``t`` covers rows ``tile*(t // tiles_x) + [0, tile)``
        and columns ``tile*(t % tiles_x) + [0, tile)``.
    tile: tile edge in pixels.
    """

    gauss_ids: Tensor
    offsets: Tensor
    counts: Tensor
    tiles_x: int
    tiles_y: int
    tile: int = TILE


@torch.no_grad()
def bin_gaussians(means2d: Tensor, radii: Tensor, depths: Tensor, visible: Tensor,
                  width: int, height: int, tile: int = TILE, conics: Tensor | None = None,
                  opacities: Tensor | None = None) -> TileBins:
    """Build per-tile depth-sorted lists.

    Args:
        means2d: (N, 2) pixel centres.  radii: (N, 2) int pixel half-extents.
        depths: (N,) camera z used for ordering.  visible: (N,) bool.
        width, height: image size in pixels.
        conics, opacities: (N, 3) and (N,); when given, (Gaussian, tile) pairs whose tile
            lies entirely outside the ``alpha >= 1/255`` ellipse are dropped (exact test,
            conservative margin), which removes the box corners' work without changing
            the image.
    """
    dev = means2d.device
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    n_tiles = tiles_x * tiles_y
    ids = torch.nonzero(visible, as_tuple=False).squeeze(1)
    if ids.numel() == 0:
        z = torch.zeros(n_tiles, dtype=torch.int64, device=dev)
        return TileBins(torch.zeros(0, dtype=torch.int64, device=dev),
                        torch.zeros(n_tiles + 1, dtype=torch.int64, device=dev), z, tiles_x, tiles_y, tile)
    # front to back; stable so equal depths keep index order
    order = torch.sort(depths.detach()[ids], stable=True).indices
    ids = ids[order]
    m = means2d.detach()[ids].double()
    r = radii[ids].double()
    x0 = torch.floor((m[:, 0] - r[:, 0]) / tile).clamp(0, tiles_x).long()
    x1 = torch.ceil((m[:, 0] + r[:, 0]) / tile).clamp(0, tiles_x).long()
    y0 = torch.floor((m[:, 1] - r[:, 1]) / tile).clamp(0, tiles_y).long()
    y1 = torch.ceil((m[:, 1] + r[:, 1]) / tile).clamp(0, tiles_y).long()
    w = (x1 - x0).clamp_min(0)
    h = (y1 - y0).clamp_min(0)
    cnt = w * h
    total = int(cnt.sum())
    if total == 0:
        z = torch.zeros(n_tiles, dtype=torch.int64, device=dev)
        return TileBins(torch.zeros(0, dtype=torch.int64, device=dev),
                        torch.zeros(n_tiles + 1, dtype=torch.int64, device=dev), z, tiles_x, tiles_y, tile)
    owner = torch.repeat_interleave(torch.arange(ids.numel(), device=dev), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    local = torch.arange(total, device=dev) - start[owner]
    wo = w[owner]
    tx = x0[owner] + local % wo
    ty = y0[owner] + local // wo
    if conics is not None and opacities is not None:
        # drop tiles that the box touches but the alpha >= 1/255 ellipse does not
        keep = _ellipse_hits_tile(m[owner], conics.detach()[ids][owner].double(),
                                  opacities.detach()[ids][owner].double(), tx, ty, tile, width, height)
        owner, tx, ty = owner[keep], tx[keep], ty[keep]
    tile_id = ty * tiles_x + tx
    # owner is already in depth order, so a stable sort by tile keeps depth order per tile
    srt = torch.sort(tile_id, stable=True)
    gauss_ids = ids[owner[srt.indices]]
    counts = torch.bincount(srt.values, minlength=n_tiles)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=dev)
    offsets[1:] = torch.cumsum(counts, 0)
    return TileBins(gauss_ids, offsets, counts, tiles_x, tiles_y, tile)


def _ellipse_hits_tile(m: Tensor, con: Tensor, op: Tensor, tx: Tensor, ty: Tensor, tile: int,
                       width: int, height: int) -> Tensor:
    """Whether ``min over the tile's pixel centres of sigma <= ln(255 o)`` (float64).

    m: (M, 2) means; con: (M, 3) conics ``(a, b, c)``; op: (M,) opacities; tx, ty: (M,) tile
    coordinates. The minimum of the convex quadratic over the (continuous) rectangle of pixel
    centres is 0 if the mean is inside, else it lies on one of the four edges, where the
    1-D minimiser is clamped to the edge.
    """
    a, b, c = con.unbind(-1)
    lo_x = tx.double() * tile + 0.5 - m[:, 0]
    hi_x = torch.clamp((tx.double() + 1) * tile, max=width) - 0.5 - m[:, 0]
    lo_y = ty.double() * tile + 0.5 - m[:, 1]
    hi_y = torch.clamp((ty.double() + 1) * tile, max=height) - 0.5 - m[:, 1]
    inside = (lo_x <= 0) & (hi_x >= 0) & (lo_y <= 0) & (hi_y >= 0)

    def q(dx: Tensor, dy: Tensor) -> Tensor:
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    best = torch.full_like(a, float("inf"))
    for ex in (lo_x, hi_x):  # vertical edges: minimise over dy
        dy = (-b * ex / c.clamp_min(1e-30)).clamp(min=lo_y, max=hi_y)
        best = torch.minimum(best, q(ex, dy))
    for ey in (lo_y, hi_y):  # horizontal edges: minimise over dx
        dx = (-b * ey / a.clamp_min(1e-30)).clamp(min=lo_x, max=hi_x)
        best = torch.minimum(best, q(dx, ey))
    limit = torch.log(op.clamp_min(1e-30) * 255.0)
    return inside | (best <= limit * (1 + 1e-6) + 1e-6)
