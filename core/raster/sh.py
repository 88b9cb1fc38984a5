"""Real spherical harmonics (degrees 0-2) turning SH coefficients into view-dependent RGB.

Same basis and sign convention as 3DGS / gsplat, so coefficients are interchangeable:
``Y00 = C0``; degree 1 ``(-C1 y, C1 z, -C1 x)``; degree 2 ``C2 * (xy, yz, 2z^2-x^2-y^2
(scaled), xz, x^2-y^2)`` evaluated on the unit direction camera-centre -> Gaussian mean.
The renderer then adds 0.5 and clamps at 0 (``sh_to_rgb``).
"""
from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
         -1.0925484305920792, 0.5462742152960396)


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """SH basis values at unit directions.

    Args:
        degree: 0, 1 or 2.
        dirs: (..., 3) unit vectors.
    Returns:
        (..., (degree+1)^2) basis values.
    """
    if degree not in (0, 1, 2):
        raise ValueError(f"sh_degree must be 0, 1 or 2, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        out += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * z * z - x * x - y * y),
                SH_C2[3] * x * z, SH_C2[4] * (x * x - y * y)]
    return torch.stack(out, dim=-1)


def sh_to_rgb(degree: int, coeffs: Tensor, means: Tensor, campos: Tensor) -> Tensor:
    """View-dependent colour of each Gaussian, as gsplat/3DGS: ``max(SH(dir) + 0.5, 0)``.

    Args:
        degree: SH degree to evaluate (0-2); coefficients beyond it are ignored.
        coeffs: (N, K, 3) with K >= (degree+1)^2.
        means: (N, 3) world positions.
        campos: (3,) camera centre in world coordinates.
    Returns:
        (N, 3) colours, >= 0.
    """
    nb = (degree + 1) ** 2
    if coeffs.dim() != 3 or coeffs.shape[-1] != 3 or coeffs.shape[1] < nb:
        raise ValueError(f"SH coefficients must be (N, >={nb}, 3), got {tuple(coeffs.shape)}")
    d = means - campos
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, d)  # (N, nb)
    rgb = (basis.unsqueeze(-1) * coeffs[:, :nb]).sum(dim=1)
    return torch.clamp_min(rgb + 0.5, 0.0)
