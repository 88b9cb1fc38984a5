"""Collapsed Gaussians: face splats the motion field shrinks to a point in every view.

The face motion field adds ``d_scale`` to each Gaussian's raw (pre-softplus) scale. It can
learn to drive a Gaussian of centimetre size down to a fraction of a millimetre while the
Gaussian stays opaque: the splat then covers one or two pixels wherever it lands. On the
training frames such a splat sits on the head and costs nothing; on new speech and poses the
silhouette moves a little and the splat is left over the background or the forehead as a
stray dot (docs/results/speckle.md). A Gaussian whose deformed largest axis stays below
``min_scale`` *and* below ``max_ratio`` of its own undeformed largest axis in *every*
training frame is such a splat (the ratio spares Gaussians that are small by themselves,
fine detail of a dense avatar), so adaptation removes it once the face stage is over (the face field and the Gaussians' scales are fixed
from then on, so the test is exact for the finished avatar).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from core.model.gaussians import GaussianSet, prune_gaussians, spare_to_keep
from core.model.head import Identity, UMF, face_motion

#: default ``min_scale`` (metres): 1 mm, about a third of a pixel at 256² for a head filling
#: the frame
COLLAPSE_SCALE = 1e-3
#: default ``max_ratio``: the field shrinks the Gaussian to under a tenth of its own size
COLLAPSE_RATIO = 0.1


@torch.no_grad()
def deformed_max_scale(gs: GaussianSet, d_scales: Iterable[Tensor | None]) -> Tensor:
    """(N,) metres: each Gaussian's largest deformed axis, maximised over the frames whose
    raw-scale offsets ``d_scales`` ((N, 3) each; None = undeformed) are given."""
    best = None
    for d in d_scales:
        s = gs.activated(d_scale=d).scales.amax(-1)
        best = s if best is None else torch.maximum(best, s)
    if best is None:
        raise ValueError("no frames to measure the deformed scales on")
    return best


def collapsed_mask(gs: GaussianSet, d_scales: Iterable[Tensor | None], min_scale: float,
                   max_ratio: float = COLLAPSE_RATIO, min_keep: int = 64) -> Tensor:
    """(N,) bool: Gaussians whose largest deformed axis is below ``min_scale`` (metres) and
    below ``max_ratio`` times their undeformed largest axis in every frame. Never marks so many that fewer than ``min_keep`` Gaussians would remain
    (the largest of the marked ones are spared first)."""
    if min_scale <= 0:
        raise ValueError(f"min_scale must be > 0 metres, got {min_scale}")
    s = deformed_max_scale(gs, d_scales)
    own = gs.scales.detach().amax(-1)
    return spare_to_keep((s < min_scale) & (s < max_ratio * own), s, min_keep)


@torch.no_grad()
def prune_collapsed(umf: UMF, ident: Identity, conds: Iterable, min_scale: float = COLLAPSE_SCALE,
                    max_ratio: float = COLLAPSE_RATIO,
                    optimizer: torch.optim.Optimizer | None = None, min_keep: int = 64) -> int:
    """Remove the face Gaussians that collapse (:func:`collapsed_mask`) in every frame of
    ``conds`` (:class:`core.model.head.FrameCond`, the training frames), deformed as at
    inference (aligner and personal field on). ``optimizer``: the face Gaussians' optimizer,
    kept aligned. Returns the number removed."""
    d = (face_motion(umf, ident, c).d_scale for c in conds)
    remove = collapsed_mask(ident.face, d, min_scale, max_ratio, min_keep)
    n = int(remove.sum())
    if n:
        prune_gaussians(ident.face, ~remove, optimizer)
    return n
