"""EWA projection of 3D Gaussians to screen space, following gsplat 1.5.3's pinhole rules.

Plain differentiable torch (works on any device / dtype), so gradients reach means, quats,
scales and the screen-space means (``means2d``) through autograd.

Rules (gsplat ``fully_fused_projection`` with ``opacities`` given, ``radius_clip=0``):

* ``Sigma = R S S^T R^T`` from the normalised wxyz quaternion and activated scales;
  camera frame ``X_c = W X + t``, ``Sigma_c = W Sigma W^T``.
* cull if ``z < near_plane`` or ``z > far_plane``.
* Jacobian of the pinhole map at the mean with ``x/z``, ``y/z`` clamped to the frustum
  enlarged by 30% of the half field of view: ``lim_x+ = (width - cx)/fx + 0.3 * tan_fovx``,
  ``lim_x- = cx/fx + 0.3 * tan_fovx`` with ``tan_fovx = 0.5 * width / fx`` (same for y).
  The projected mean itself is not clamped: ``u = fx x/z + cx``.
* ``cov2d = J Sigma_c J^T + eps2d * I`` (the blur is always added, no compensation);
  cull if ``det(cov2d) <= 0``. ``conic = inverse(cov2d)``.
* cull if ``opacity < 1/255``; extent ``min(3.33, sqrt(2 ln(255 * opacity)))`` standard
  deviations (opacity-aware box: beyond it alpha < 1/255); per-axis pixel radius
  ``ceil(extent * sqrt(cov2d_xx))``, ``ceil(extent * sqrt(cov2d_yy))``.
* cull if the box misses the image: ``u + rx <= 0 or u - rx >= width`` (same for v).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
MAX_EXTENT = 3.33


@dataclass
class Projected:
    """Screen-space Gaussians (N = number of input Gaussians, culled ones included).

    means2d: (N, 2) pixel centres (u, v); 0 where culled.
    conics: (N, 3) ``(a, b, c)`` of the inverse 2D covariance, so the Mahalanobis term at
        pixel offset ``(dx, dy) = mean2d - pixel`` is ``0.5 (a dx^2 + c dy^2) + b dx dy``
        (pixels^-2); finite placeholders where culled.
    depths: (N,) camera-space z (world units).
    radii: (N, 2) int32 pixel half-extent (rx, ry) of the opacity-aware box; 0 where culled.
    visible: (N,) bool, ``radii > 0``.
    quad: (N, 3) ``(a, beta, gamma)``, the same quadratic form as a sum of squares,
        ``sigma = 0.5 a (dx + beta dy)^2 + 0.5 gamma dy^2`` (``a = cov_yy / det``,
        ``beta = -cov_xy / cov_yy``, ``gamma = 1 / cov_yy``): no cancellation between terms,
        so thin Gaussians stay accurate in float32. 0 where culled.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    visible: Tensor
    quad: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N, 4) wxyz quaternions (any norm) -> (N, 3, 3) rotation matrices."""
    q = F.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def project(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
            viewmat: Tensor, K: Tensor, width: int, height: int,
            near_plane: float = 0.01, far_plane: float = 1e10,
            eps2d: float = 0.3) -> Projected:
    """Project Gaussians (world units, OpenCV camera) to pixels.

    Args:
        means: (N, 3) world positions.  quats: (N, 4) wxyz.  scales: (N, 3) activated.
        opacities: (N,) in [0, 1] (only used for culling and the box extent).
        viewmat: (4, 4) world-to-camera.  K: (3, 3) intrinsics in pixels.
        width, height: image size in pixels.
    Returns:
        :class:`Projected`.
    """
    dtype = means.dtype
    Rw = viewmat[:3, :3].to(dtype)
    tw = viewmat[:3, 3].to(dtype)
    K = K.to(dtype)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    p = means @ Rw.T + tw  # (N, 3) camera frame
    x, y, z = p.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    zs = torch.where(in_depth, z, torch.ones_like(z))  # safe divisor for culled ones

    M = quat_to_rotmat(quats) * scales.unsqueeze(-2)  # R S, (N, 3, 3)
    Mc = Rw @ M  # W R S
    cov_c = Mc @ Mc.transpose(-1, -2)  # (N, 3, 3)

    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_xp = (width - cx) / fx + 0.3 * tan_fovx
    lim_xn = cx / fx + 0.3 * tan_fovx
    lim_yp = (height - cy) / fy + 0.3 * tan_fovy
    lim_yn = cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_xn), lim_xp)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_yn), lim_yp)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / (zs * zs),
                     zero, fy / zs, -fy * ty / (zs * zs)], dim=-1).reshape(-1, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # (N, 2, 2)
    c00 = cov2d[:, 0, 0] + eps2d
    c11 = cov2d[:, 1, 1] + eps2d
    c01 = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    det = c00 * c11 - c01 * c01
    ok_det = det > 0
    dets = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c11 / dets, -c01 / dets, c00 / dets], dim=-1)
    c11s = torch.where(ok_det, c11, torch.ones_like(c11))
    quad = torch.stack([c11 / dets, -c01 / c11s, 1.0 / c11s], dim=-1)

    u = fx * x / zs + cx
    v = fy * y / zs + cy

    with torch.no_grad():
        op = opacities.detach().to(dtype)
        ok_op = op >= ALPHA_MIN
        extent = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_MIN) * 255.0)).clamp_max(MAX_EXTENT)
        rx = torch.ceil(extent * torch.sqrt(c00.detach().clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c11.detach().clamp_min(0)))
        ud, vd = u.detach(), v.detach()
        on_screen = ((ud + rx > 0) & (ud - rx < width) & (vd + ry > 0) & (vd - ry < height))
        visible = in_depth & ok_det & ok_op & ((rx > 0) | (ry > 0)) & on_screen
        visible &= torch.isfinite(rx) & torch.isfinite(ry) & torch.isfinite(ud) & torch.isfinite(vd)
        # Radii are capped so that int32 cannot overflow for absurdly large Gaussians.
        cap = float(2 ** 30)
        radii = torch.stack([rx.clamp_max(cap), ry.clamp_max(cap)], dim=-1)
        radii = torch.where(visible.unsqueeze(-1), radii, torch.zeros_like(radii)).to(torch.int32)

    vis = visible.unsqueeze(-1)
    nil = torch.zeros((), dtype=dtype, device=u.device)
    means2d = torch.where(vis, torch.stack([u, v], dim=-1), nil)
    conics = torch.where(vis, conics, nil)
    quad = torch.where(vis, quad, nil)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii, visible=visible,
                     quad=quad)


def camera_center(viewmat: Tensor) -> Tensor:
    """(4, 4) world-to-camera -> (3,) camera centre in world coordinates (``-R^T t``)."""
    R = viewmat[:3, :3]
    t = viewmat[:3, 3]
    return -(R.T @ t)
