"""Backend parity: two rasterizers on the same random scene, forward outputs and gradients.

Used by the rasterizer tests (ours against the float64 reference on the CPU; gsplat against
ours on CUDA) and by ``python -m bench.gpu_check``, which writes the figures into
``docs/results/gpu.md``.

Expected differences between gsplat and ours: gsplat projects in float32 and uses fast-math
``__expf``, so a Gaussian right at the alpha = 1/255 cut may be kept by one and skipped by the
other (one pixel changes by up to ~4e-3); hence the tolerances are on means and high
percentiles, with a looser bound on the maximum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from core.raster.render import rasterize

__all__ = ["PARAM_NAMES", "ForwardTol", "GradTol", "ParityReport", "random_scene", "camera",
           "backend_parity"]

#: the per-Gaussian inputs whose gradients are compared
PARAM_NAMES = ("means", "quats", "scales", "opacities", "colors")


@dataclass(frozen=True)
class ForwardTol:
    """Bounds on |a - b| over the pixels of image, alpha and depth: mean, 99.9th percentile,
    maximum."""

    mean: float = 2e-5
    p999: float = 1e-3
    max: float = 2e-2


@dataclass(frozen=True)
class GradTol:
    """Bounds on |grad_a - grad_b| over a parameter's entries, relative to
    ``max(1, max |grad_b|)``: 99th percentile and maximum."""

    p99: float = 1e-3
    max: float = 5e-2


@dataclass
class ParityReport:
    """What :func:`backend_parity` measured.

    forward: ``{'image'|'alpha'|'depth': {'mean', 'p999', 'max'}}`` absolute errors;
    grads: ``{name: {'p99', 'max', 'scale'}}`` relative errors (``scale`` = the bound's
    divisor) for :data:`PARAM_NAMES` and ``means2d``; visible_diff: Gaussians visible to one
    backend only.
    """

    backends: tuple[str, str]
    forward: dict[str, dict[str, float]] = field(default_factory=dict)
    grads: dict[str, dict[str, float]] = field(default_factory=dict)
    visible_diff: int = 0

    def failures(self, fwd: ForwardTol = ForwardTol(), grad: GradTol = GradTol(),
                 max_visible_diff: int = 2) -> list[str]:
        """Every bound that does not hold, in words (empty: parity holds)."""
        bad = []
        if self.visible_diff > max_visible_diff:
            bad.append(f"{self.visible_diff} Gaussians visible to one backend only")
        for name, e in self.forward.items():
            for k in ("mean", "p999", "max"):
                if not e[k] <= getattr(fwd, k):
                    bad.append(f"{name} {k} error {e[k]:.3g} > {getattr(fwd, k):.3g}")
        for name, e in self.grads.items():
            for k in ("p99", "max"):
                if not e[k] <= getattr(grad, k):
                    bad.append(f"grad {name} {k} relative error {e[k]:.3g} > {getattr(grad, k):.3g}")
        return bad


def camera(width: int, height: int, f: float, dist: float = 0.6, yaw: float = 0.0,
           device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(4, 4) world-to-camera looking at the origin from ``dist`` m after a ``yaw`` (rad), and
    (3, 3) intrinsics with slightly different focal lengths and an off-centre principal point
    (so axis mix-ups show)."""
    c, s = math.cos(yaw), math.sin(yaw)
    V = torch.eye(4)
    V[:3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    V[2, 3] = dist
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f * 1.05, height / 2 + 1.3], [0.0, 0.0, 1.0]])
    return V.to(device), K.to(device)


def random_scene(n: int, seed: int, channels: int = 3, scale: float = 0.01,
                 op_lo: float = 0.05, op_hi: float = 0.95, spread: float = 0.12,
                 device: torch.device | str = "cpu") -> list[Tensor]:
    """``[means (n,3), quats (n,4), scales (n,3), opacities (n,), colors (n,C)]`` leaf tensors
    with gradients, drawn on the CPU from ``seed`` (the same scene on every device)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    quats = torch.randn(n, 4, generator=g)
    scales = scale * torch.exp(torch.randn(n, 3, generator=g) * 0.6)
    opac = op_lo + (op_hi - op_lo) * torch.rand(n, generator=g)
    cols = torch.rand(n, channels, generator=g)
    return [t.to(device).contiguous().requires_grad_() for t in (means, quats, scales, opac, cols)]


def _render_and_grads(params: list[Tensor], V: Tensor, K: Tensor, W: int, H: int, backend: str,
                      bg: Tensor, seed: int):
    for p in params:
        p.grad = None
    out = rasterize(*params, V, K, W, H, background=bg, backend=backend)
    g = torch.Generator().manual_seed(seed + 100)
    C = out.image.shape[-1]
    wi, wa, wd = (torch.randn(H, W, c, generator=g).to(out.image) for c in (C, 1, 1))
    loss = (out.image * wi).sum() + (out.alpha * wa).sum() + (out.depth * wd).sum()
    loss.backward()
    grads = {n: p.grad.detach().double().clone() for n, p in zip(PARAM_NAMES, params)}
    grads["means2d"] = out.means2d.grad.detach().double().clone()
    return out, grads


def backend_parity(backend_a: str, backend_b: str, n: int = 2000, width: int = 96,
                   height: int = 80, seed: int = 7, channels: int = 4,
                   device: torch.device | str = "cpu") -> ParityReport:
    """Render one random scene of ``n`` Gaussians (``channels`` features, a background) with
    both backends on ``device`` and compare images, alphas, depths and the gradients of a
    random linear loss of all three with respect to every input (``b`` is the reference)."""
    V, K = camera(width, height, f=140.0, yaw=0.2, device=device)
    params = random_scene(n, seed, channels=channels, op_hi=0.99, device=device)
    bg = torch.linspace(0.1, 0.3, channels).to(device)
    if channels > 3:
        bg[3:] = 0.0
    a, ga = _render_and_grads(params, V, K, width, height, backend_a, bg, seed)
    b, gb = _render_and_grads(params, V, K, width, height, backend_b, bg, seed)
    rep = ParityReport(backends=(backend_a, backend_b))
    rep.visible_diff = int((a.visible != b.visible).sum())
    for name in ("image", "alpha", "depth"):
        err = (getattr(a, name).detach().double() - getattr(b, name).detach().double()).abs().flatten()
        rep.forward[name] = {"mean": float(err.mean()), "p999": float(torch.quantile(err, 0.999)),
                             "max": float(err.max())}
    for name in gb:
        d = (ga[name] - gb[name]).abs().flatten()
        scale = max(1.0, float(gb[name].abs().max()))
        rep.grads[name] = {"p99": float(torch.quantile(d, 0.99)) / scale,
                           "max": float(d.max()) / scale, "scale": scale}
    return rep
