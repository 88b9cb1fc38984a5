"""Unseen Gaussians: face splats that no training frame shows.

A face Gaussian that lies outside every training view (above the frame's top edge, say) or
behind the head in all of them gets no gradient in adaptation, so nothing corrects or prunes
it; on new speech and poses the motion field can bring it into view as a stray dot (a dark
splat over the background above the hair: docs/results/speckle.md). Its weight in a training
render is ``sum over pixels of alpha_i T_i`` (what it adds to the composited image), read
as the gradient of an all-ones feature channel; adaptation removes the Gaussians whose
weight summed over all training frames is below ``min_weight`` once the face stage is over.
Removing them leaves every training render as it was, up to that weight.

Each view costs a render and its backward pass (about as much as a training step), so
adaptation sums over at most ``AdaptConfig.unseen_views`` training frames spread evenly over
the span (:func:`spaced_views`) and scales the threshold by the fraction of frames it used;
at 25 fps neighbouring frames show nearly the same Gaussians (measured in
``bench/unseen.py``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from core.model.gaussians import GaussianSet, prune_gaussians, spare_to_keep
from core.model.head import Identity, UMF, face_motion, render_branch

#: default ``min_weight``: summed over all training frames, a thousandth of one pixel
UNSEEN_WEIGHT = 1e-3


def view_weights(gs: GaussianSet, views: Iterable[tuple]) -> Tensor:
    """(N,) each Gaussian's compositing weight summed over all pixels of all ``views``:
    ``(motion, cond)`` pairs (:class:`core.model.motion_field.Motion` or None,
    :class:`core.model.head.FrameCond`)."""
    total = torch.zeros(gs.num, device=gs.means.device)
    for motion, cond in views:
        ones = torch.ones(gs.num, 1, device=gs.means.device, requires_grad=True)
        with torch.enable_grad():
            out = render_branch(gs, motion, cond, extra=ones)
            (g,) = torch.autograd.grad(out.image[..., 3].sum(), ones)
        total += g[:, 0].detach()
    return total


def spaced_views(n: int, most: int) -> list[int]:
    """At most ``most`` indices of ``range(n)`` spread evenly, first and last included
    (all ``n`` when ``most`` is 0 or at least ``n``)."""
    if n <= 0:
        return []
    if most <= 0 or most >= n:
        return list(range(n))
    if most == 1:
        return [0]
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


def unseen_mask(weights: Tensor, min_weight: float, min_keep: int = 64) -> Tensor:
    """(N,) bool: ``weights`` below ``min_weight``, sparing the most-seen ones so that at
    least ``min_keep`` remain."""
    if min_weight <= 0:
        raise ValueError(f"min_weight must be > 0, got {min_weight}")
    return spare_to_keep(weights < min_weight, weights, min_keep)


def face_view_weights(umf: UMF, ident: Identity, conds: Sequence,
                      most: int = 0) -> tuple[Tensor, int]:
    """``(weights, used)``: the face Gaussians' :func:`view_weights` over at most ``most``
    of the frames ``conds`` (:class:`core.model.head.FrameCond`) spread evenly
    (:func:`spaced_views`; 0 = all), deformed as at inference, and how many frames were
    used (a threshold meant for all of ``conds`` scales by ``used / len(conds)``)."""
    pick = spaced_views(len(conds), most)

    def views():
        for j in pick:
            with torch.no_grad():
                m = face_motion(umf, ident, conds[j])
            yield m, conds[j]

    return view_weights(ident.face, views()), len(pick)


def prune_unseen(umf: UMF, ident: Identity, conds: Sequence, min_weight: float = UNSEEN_WEIGHT,
                 optimizer: torch.optim.Optimizer | None = None, min_keep: int = 64,
                 most_views: int = 0) -> int:
    """Remove the face Gaussians that the frames ``conds`` (:class:`core.model.head.FrameCond`,
    the training frames) do not show (:func:`unseen_mask`), deformed as at inference, summed
    over at most ``most_views`` of them spread evenly (0 = all) with ``min_weight`` scaled
    by the fraction used (:func:`face_view_weights`). ``optimizer``: the face Gaussians'
    optimizer, kept aligned. Returns the number removed."""
    weights, used = face_view_weights(umf, ident, conds, most_views)
    remove = unseen_mask(weights, min_weight * used / len(conds), min_keep)
    n = int(remove.sum())
    if n:
        prune_gaussians(ident.face, ~remove, optimizer)
    return n
