"""Float64 brute-force reference rasterizer: every pixel against every Gaussian, no tiles.

Written for obviousness, not speed; the fast backends are tested against it. It repeats the
gsplat rules independently of :mod:`core.raster.projection` (explicit matrices, a matrix
inverse for the conic) and composites one Gaussian at a time over all pixels, exactly like
gsplat's per-pixel loop: skip ``sigma < 0`` or ``alpha < 1/255``; stop (exclusively) at the
first Gaussian that would bring the transmittance to ``<= 1e-4``.
Gradients come from autograd (fine for small scenes; memory grows with N x pixels).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _rotmat(q: Tensor) -> Tensor:
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], -1),
    ], -2)


def reference_rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                        feats: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
                        background: Tensor, near_plane: float = 0.01, far_plane: float = 1e10,
                        eps2d: float = 0.3) -> dict[str, Tensor]:
    """Render in float64.

    Args: as :func:`core.raster.render.rasterize` with ``feats`` (N, C) already evaluated colours /
        features and ``background`` (C,). All tensors are converted to float64 (autograd
        flows back to the originals).
    Returns: dict with ``image`` (H, W, C) premultiplied features + T*background, ``alpha``
        (H, W, 1), ``depth_acc`` (H, W, 1) sum of w_i z_i, ``means2d`` (N, 2) (0 where culled),
        ``radii`` (N, 2) int32, ``visible`` (N,) bool.
    """
    d = torch.float64
    dev = means.device
    means, quats, scales = means.to(d), quats.to(d), scales.to(d)
    opacities, feats, background = opacities.to(d), feats.to(d), background.to(d)
    V, K = viewmat.to(d), K.to(d)
    N, C = feats.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    pc = means @ V[:3, :3].T + V[:3, 3]
    x, y, z = pc[:, 0], pc[:, 1], pc[:, 2]
    depth_ok = (z >= near_plane) & (z <= far_plane)
    z_ = torch.where(depth_ok, z, torch.ones_like(z))

    R = _rotmat(quats)
    cov = R @ torch.diag_embed(scales * scales) @ R.transpose(-1, -2)
    cov_c = V[:3, :3] @ cov @ V[:3, :3].T
    tanx, tany = 0.5 * width / fx, 0.5 * height / fy
    xz = (x / z_).clamp(min=float(-(cx / fx + 0.3 * tanx)), max=float((width - cx) / fx + 0.3 * tanx))
    yz = (y / z_).clamp(min=float(-(cy / fy + 0.3 * tany)), max=float((height - cy) / fy + 0.3 * tany))
    J = torch.zeros(N, 2, 3, dtype=d, device=dev)
    J[:, 0, 0] = fx / z_
    J[:, 0, 2] = -fx * xz / z_
    J[:, 1, 1] = fy / z_
    J[:, 1, 2] = -fy * yz / z_
    cov2 = J @ cov_c @ J.transpose(-1, -2) + eps2d * torch.eye(2, dtype=d, device=dev)
    det = cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] * cov2[:, 1, 0]
    det_ok = det > 0
    safe = torch.where(det_ok[:, None, None], cov2, torch.eye(2, dtype=d, device=dev).expand(N, 2, 2))
    inv = torch.linalg.inv(safe)
    mean2 = torch.stack([fx * x / z_ + cx, fy * y / z_ + cy], -1)

    with torch.no_grad():
        o = opacities.detach()
        op_ok = o >= 1.0 / 255.0
        ext = torch.sqrt(2 * torch.log((o * 255).clamp_min(1.0))).clamp_max(3.33)
        rx = torch.ceil(ext * cov2[:, 0, 0].detach().clamp_min(0).sqrt())
        ry = torch.ceil(ext * cov2[:, 1, 1].detach().clamp_min(0).sqrt())
        u, v = mean2[:, 0].detach(), mean2[:, 1].detach()
        vis = (depth_ok & det_ok & op_ok & ((rx > 0) | (ry > 0))
               & (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height))
        radii = torch.where(vis[:, None], torch.stack([rx, ry], -1), torch.zeros(N, 2, dtype=d, device=dev))
        order = [int(i) for i in torch.sort(z.detach(), stable=True).indices if vis[i]]

    mean2 = torch.where(vis[:, None], mean2, torch.zeros_like(mean2))  # gsplat: 0 where culled
    if mean2.requires_grad:
        mean2.retain_grad()
    jj, ii = torch.meshgrid(torch.arange(width, dtype=d, device=dev) + 0.5,
                            torch.arange(height, dtype=d, device=dev) + 0.5,
                            indexing="xy")
    px, py = jj.reshape(-1), ii.reshape(-1)
    # 0 * inputs keeps the outputs in the autograd graph even when nothing is visible
    link = 0.0 * (mean2.sum() + quats.sum() + scales.sum() + opacities.sum() + feats.sum())
    T = torch.ones(px.numel(), dtype=d, device=dev) + link
    done = torch.zeros(px.numel(), dtype=torch.bool, device=dev)
    acc = torch.zeros(px.numel(), C, dtype=d, device=dev)
    dep = torch.zeros(px.numel(), dtype=d, device=dev)
    for g in order:
        dx, dy = mean2[g, 0] - px, mean2[g, 1] - py
        sig = 0.5 * (inv[g, 0, 0] * dx * dx + inv[g, 1, 1] * dy * dy) + inv[g, 0, 1] * dx * dy
        alpha = torch.clamp(opacities[g] * torch.exp(-sig), max=0.999)
        use = (~done) & (sig >= 0) & (alpha >= 1.0 / 255.0)
        nxt = T * (1 - alpha)
        stop = use & (nxt <= 1e-4)
        done = done | stop
        use = use & ~stop
        if not bool(use.any()):
            continue
        wgt = torch.where(use, alpha * T, torch.zeros_like(T))
        acc = acc + wgt[:, None] * feats[g]
        dep = dep + wgt * z[g]
        T = torch.where(use, nxt, T)
    image = (acc + T[:, None] * background).reshape(height, width, C)
    return {
        "image": image,
        "alpha": (1 - T).reshape(height, width, 1),
        "depth_acc": dep.reshape(height, width, 1),
        "means2d": mean2,
        "radii": radii.to(torch.int32),
        "visible": vis,
    }

