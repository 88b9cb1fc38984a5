"""The collapsed- and unseen-Gaussian prunes (core.train.collapse, core.train.unseen) on a
synthetic scene with a known answer:
a flat grey surface of splats (one of them small by itself), three opaque red splats in front of it that the deformation
shrinks to a point in every frame, and one surface splat that shrinks in one frame only."""
from __future__ import annotations

import numpy as np
import torch

from core.model.gaussians import GaussianSet, inverse_softplus
from core.raster.render import rasterize
from core.train.collapse import collapsed_mask, deformed_max_scale
from eval.metrics.speckle import speckles

RES, F, Z = 64, 80.0, 0.5
STRAYS = [225, 226, 227]        # indices of the off-surface splats (after the 15x15 surface)
ONCE = 7                        # a surface splat collapsed in one frame only
SMALL = 3                       # a surface splat of 0.5 mm by itself, never shrunk


def _scene() -> GaussianSet:
    """15x15 surface splats (8 mm, grey) on the plane z = 0.5 m, and three red splats 5 cm in
    front of it whose centres project onto pixel centres."""
    g = torch.linspace(-0.1, 0.1, 15)
    surf = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    surf = torch.cat([surf, torch.full((225, 1), Z)], 1)
    z = Z - 0.05
    px = torch.tensor([[20.5, 20.5], [40.5, 28.5], [30.5, 45.5]])   # pixel centres
    xy = (px - RES / 2) * z / F
    stray = torch.cat([xy, torch.full((3, 1), z)], 1)
    gs = GaussianSet()
    cols = torch.cat([torch.full((225, 3), 0.5), torch.tensor([[1.0, 0.1, 0.1]]).expand(3, 3)])
    gs.init_points(torch.cat([surf, stray]), cols)
    with torch.no_grad():
        gs.scales_raw.copy_(inverse_softplus(torch.full((228, 3), 0.008)))
        gs.scales_raw[STRAYS] = inverse_softplus(torch.full((3, 3), 0.01))
        gs.scales_raw[SMALL] = inverse_softplus(torch.full((3,), 5e-4))
        gs.opacity_logits.fill_(6.0)
    return gs


def _d_scales(gs: GaussianSet, frames: int = 4) -> list[torch.Tensor]:
    """Raw-scale offsets of ``frames`` frames: the strays shrink to 0.2 mm in all of them,
    splat ``ONCE`` to 0.1 mm in frame 0 only, the rest wobble by +-10 %."""
    out = []
    tiny = inverse_softplus(torch.tensor(2e-4)) - inverse_softplus(torch.tensor(0.01))
    gen = torch.Generator().manual_seed(0)
    for f in range(frames):
        d = 0.1 * torch.randn(gs.num, 3, generator=gen)
        d[STRAYS] = tiny
        if f == 0:
            d[ONCE] = inverse_softplus(torch.tensor(1e-4)) - inverse_softplus(torch.tensor(0.008))
        out.append(d)
    return out


def _render(gs: GaussianSet, d: torch.Tensor) -> np.ndarray:
    act = gs.activated(d_scale=d)
    K = torch.tensor([[F, 0, RES / 2], [0, F, RES / 2], [0, 0, 1.0]])
    rgb = torch.cat([torch.full((225, 3), 0.5), torch.tensor([[1.0, 0.1, 0.1]]).expand(gs.num - 225, 3)])
    out = rasterize(act.means, act.quats, act.scales, act.opacities, rgb[: gs.num], torch.eye(4),
                    K, RES, RES, background=torch.zeros(3))
    return (out.image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_removes_exactly_the_collapsed_strays():
    gs = _scene()
    ds = _d_scales(gs)
    s = deformed_max_scale(gs, ds)
    assert torch.allclose(s[STRAYS], torch.tensor(2e-4), rtol=1e-3)
    mask = collapsed_mask(gs, ds, 1e-3)
    assert float(s[SMALL]) < 1e-3
    assert sorted(torch.nonzero(mask)[:, 0].tolist()) == STRAYS   # ONCE and SMALL are kept
    # the strays are the dots the speckle metric sees against the bare surface
    bare = GaussianSet()
    bare.load_tensors(gs.to_tensors())
    from core.model.gaussians import prune_gaussians

    with torch.no_grad():
        prune_gaussians(bare, ~mask)
    recorded = _render(bare, ds[1][~mask])
    assert speckles(_render(gs, ds[1]), recorded) == 3
    assert speckles(_render(bare, ds[1][~mask]), recorded) == 0


def test_min_keep_spares_the_largest():
    gs = _scene()
    shrink = [torch.full((gs.num, 3), -20.0)]          # everything collapses
    shrink[0][:5] = -10.0                               # these five a little less
    mask = collapsed_mask(gs, shrink, 1e-3, 1.0, min_keep=5)
    assert int((~mask).sum()) == 5 and not mask[:5].any()


def test_unseen_removes_exactly_the_hidden_and_out_of_frame_splats():
    """Behind the opaque surface (one splat) and above the frame's top edge (one splat) no
    view shows them: exactly those two go; a splat in front of the surface stays."""
    from core.model.head import FrameCond
    from core.train.unseen import unseen_mask, view_weights

    gs = _scene()
    with torch.no_grad():
        gs.scales_raw[:225] = inverse_softplus(torch.tensor(0.012))  # closed, opaque surface
        gs.opacity_logits[:225] = 10.0
        gs.means[STRAYS[0]] = gs.means[112] + torch.tensor([0.0, 0.0, 0.02])  # behind it
        gs.scales_raw[STRAYS[0]] = inverse_softplus(torch.tensor(5e-4))
        gs.means[STRAYS[1], 1] = -0.3                              # above the top edge
    K = torch.tensor([[F, 0, RES / 2], [0, F, RES / 2], [0, 0, 1.0]])
    cond = FrameCond(torch.eye(4), K, RES, RES, torch.zeros(8, 16, 1), torch.zeros(6))
    w = view_weights(gs, [(None, cond)])
    assert float(w[STRAYS[2]]) > 0.5 and float(w[:225].median()) > 1.0
    mask = unseen_mask(w, 1e-3)
    assert sorted(torch.nonzero(mask)[:, 0].tolist()) == STRAYS[:2]
