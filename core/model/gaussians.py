"""3D Gaussian set (one per branch: face or inside-mouth) and 3DGS-style densification.

Conventions (see ``core/__init__``): head-canonical world in metres, quaternions ``wxyz``,
scales handed to the rasterizer already activated.

Parameterisation (METHOD §2)
    ``means``           (N, 3)  world position, metres.
    ``quats_raw``       (N, 4)  unnormalised wxyz quaternion; normalised on use.
    ``scales_raw``      (N, 3)  pre-activation scale; ``scale = softplus(raw)`` (metres).
    ``opacity_logits``  (N,)    ``opacity = sigmoid(logit)``.
    ``sh_dc``           (N, 1, 3)       SH band 0 (split from the rest so that the training
    ``sh_rest``         (N, K - 1, 3)   loop can give band > 0 a smaller learning rate, as 3DGS);
                        ``K = (max_sh_degree + 1) ** 2``; ``sh`` concatenates them -> (N, K, 3).

Motion offsets from the deformation fields are applied by :meth:`GaussianSet.activated`:
``means + d_xyz``, ``normalize(quats_raw + d_quat)``, ``softplus(scales_raw + d_scale)``.

Densification (METHOD §5, the 3DGS rules) lives in :class:`Densifier`; the functions
:func:`extend_gaussians` / :func:`prune_gaussians` / :func:`replace_gaussian_param` keep an
Adam/AdamW optimizer's param groups and per-parameter state (``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``) consistent when the number of Gaussians changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SH_C0 = 0.28209479177387814  # Y_0^0; colour = SH_C0 * dc + 0.5 (3DGS convention)

#: Names of the per-Gaussian parameters (first dimension is N), in storage order.
PARAM_NAMES: tuple[str, ...] = (
    "means", "quats_raw", "scales_raw", "opacity_logits", "sh_dc", "sh_rest")


# ---------------------------------------------------------------------------------------------
# small maths helpers
# ---------------------------------------------------------------------------------------------
def inverse_softplus(y: Tensor) -> Tensor:
    """Inverse of ``softplus`` (beta 1): ``x = y + log(-expm1(-y))``, stable for small and large y.

    ``y`` must be > 0 (clamped to 1e-12).
    """
    y = y.clamp_min(1e-12)
    return y + torch.log(-torch.expm1(-y))


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """RGB in [0, 1] -> band-0 SH coefficient (so that ``SH_C0 * dc + 0.5 == rgb``)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    """Band-0 SH coefficient -> view-independent RGB (before the rasterizer's clamp)."""
    return dc * SH_C0 + 0.5


def num_sh_coeffs(degree: int) -> int:
    """Number of SH coefficients per colour channel for a degree: ``(degree + 1) ** 2``."""
    return (degree + 1) ** 2


def quat_to_rotmat(q: Tensor) -> Tensor:
    """(..., 4) wxyz quaternion (normalised here) -> (..., 3, 3) rotation matrix."""
    q = F.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    r = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return r.reshape(*q.shape[:-1], 3, 3)


def knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """Mean Euclidean distance from each point to its ``k`` nearest *other* points.

    Args:
        points: (N, 3) positions, N >= 2.
        k: neighbours (clamped to N - 1).
        chunk: rows of the distance matrix computed at once (memory ``chunk * N`` floats).
    Returns:
        (N,) mean distance (same units as ``points``). Exact pairwise distances
        (``torch.cdist`` without the matrix-multiply shortcut); the point itself is excluded by
        index, so duplicated points correctly get distance 0.
    """
    n = points.shape[0]
    if n < 2:
        raise ValueError("knn_mean_distance needs at least 2 points")
    k = min(k, n - 1)
    out = torch.empty(n, dtype=points.dtype, device=points.device)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        d = torch.cdist(points[s:e], points, compute_mode="donot_use_mm_for_euclid_dist")
        rows = torch.arange(e - s, device=points.device)
        d[rows, rows + s] = float("inf")
        out[s:e] = d.topk(k, dim=1, largest=False).values.mean(dim=1)
    return out


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class GaussianConfig:
    """Static settings of a :class:`GaussianSet`.

    Attributes:
        max_sh_degree: highest SH degree stored: 1 for adaptation, 2 in pre-training (METHOD §2).
        sh_increase_interval: the active SH degree goes up by one every this many steps
            (3DGS schedule: ``active = min(max, step // interval)``).
        init_opacity: opacity of freshly initialised Gaussians (METHOD §2: 0.1).
        init_knn: neighbours used for the initial isotropic scale (METHOD §2: 3).
        init_color: RGB in [0, 1] of the initial band-0 colour (0.5 grey -> dc 0).
        min_init_scale: lower clamp of the initial scale, metres (guards duplicated points).
    """

    max_sh_degree: int = 1
    sh_increase_interval: int = 1000
    init_opacity: float = 0.1
    init_knn: int = 3
    init_color: float = 0.5
    min_init_scale: float = 1e-5


@dataclass(frozen=True)
class InitBox:
    """A uniform random initialisation box: ``n`` points in ``center ± half_extent`` (metres)."""

    n: int
    center: tuple[float, float, float]
    half_extent: float


#: Face points: 2000 uniform in [-0.1, 0.1]^3 (METHOD §2).
FACE_INIT = InitBox(n=2000, center=(0.0, 0.0, 0.0), half_extent=0.1)
#: Mouth points: 5000 in the face box halved (±0.05) and moved 0.05 *down*. The reference
#: writes "-0.05 in y" in its y-up world; our world is y-down (core/__init__), so the same
#: physical move (towards the chin) is **+0.05 in y**: y in [0.0, 0.1].
MOUTH_INIT = InitBox(n=5000, center=(0.0, 0.05, 0.0), half_extent=0.05)


@dataclass
class GaussianLR:
    """Per-parameter Adam learning rates (3DGS defaults; the training loop may override).

    ``means`` is multiplied by ``scene_extent`` in :meth:`GaussianSet.param_groups` (3DGS's
    ``spatial_lr_scale``). Softplus scales near 1e-3..1e-2 m behave like the 3DGS log scale
    (d softplus / dx ~= softplus(x) there), so the 3DGS scaling rate is kept.
    """

    means: float = 1.6e-4
    quats_raw: float = 1e-3
    scales_raw: float = 5e-3
    opacity_logits: float = 5e-2
    sh_dc: float = 2.5e-3
    sh_rest: float = 2.5e-3 / 20


@dataclass
class ActivatedGaussians:
    """Rasterizer-ready tensors (optionally with a leading frame dimension B from the deltas).

    means (…, N, 3) m; quats (…, N, 4) unit wxyz; scales (…, N, 3) m (> 0);
    opacities (N,) in (0, 1); sh (N, K, 3); sh_degree: active degree to pass to the rasterizer.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor
    sh_degree: int


# ---------------------------------------------------------------------------------------------
# the Gaussian set
# ---------------------------------------------------------------------------------------------
class GaussianSet(nn.Module):
    """A set of N anisotropic 3D Gaussians with SH colour (one branch: face or mouth).

    Save with :meth:`to_tensors` (flat tensors for safetensors) and restore with
    :meth:`load_tensors` / :meth:`from_tensors`, which accept any N (``load_state_dict`` would
    refuse a different N).

    Args:
        n: initial number of Gaussians (parameters are zero/identity until an ``init_*`` call
            or :meth:`load_tensors`).
        config: :class:`GaussianConfig`.
    """

    def __init__(self, n: int = 0, config: GaussianConfig | None = None) -> None:
        super().__init__()
        self.config = config or GaussianConfig()
        k = num_sh_coeffs(self.config.max_sh_degree)
        self.means = nn.Parameter(torch.zeros(n, 3))
        q = torch.zeros(n, 4)
        q[:, 0] = 1.0
        self.quats_raw = nn.Parameter(q)
        self.scales_raw = nn.Parameter(inverse_softplus(torch.full((n, 3), 1e-2)))
        self.opacity_logits = nn.Parameter(torch.logit(torch.full((n,), self.config.init_opacity)))
        self.sh_dc = nn.Parameter(torch.zeros(n, 1, 3))
        self.sh_rest = nn.Parameter(torch.zeros(n, k - 1, 3))
        self.register_buffer("active_sh_degree", torch.zeros((), dtype=torch.long))
        self._sh_degree = 0  # host copy of ``active_sh_degree``: read every render, never synced

    # -- construction -----------------------------------------------------------------------
    @torch.no_grad()
    def init_points(self, points: Tensor, colors: Tensor | None = None) -> "GaussianSet":
        """(Re)initialise from given positions (N, 3) m and optional RGB colours (N, 3) in [0, 1].

        Identity rotation; isotropic scale = mean distance to ``config.init_knn`` nearest
        neighbours (METHOD §2); opacity ``config.init_opacity``; SH rest = 0.
        """
        cfg = self.config
        n = points.shape[0]
        dev, dt = self.means.device, self.means.dtype
        points = points.to(dev, dt)
        dist = knn_mean_distance(points, cfg.init_knn).clamp_min(cfg.min_init_scale)
        if colors is None:
            colors = torch.full((n, 3), cfg.init_color, device=dev, dtype=dt)
        q = torch.zeros(n, 4, device=dev, dtype=dt)
        q[:, 0] = 1.0
        self._set_all({
            "means": points.clone(),
            "quats_raw": q,
            "scales_raw": inverse_softplus(dist[:, None].expand(n, 3).clone()),
            "opacity_logits": torch.logit(torch.full((n,), cfg.init_opacity, device=dev, dtype=dt)),
            "sh_dc": rgb_to_sh_dc(colors.to(dev, dt))[:, None, :].clone(),
            "sh_rest": torch.zeros(n, num_sh_coeffs(cfg.max_sh_degree) - 1, 3,
                                   device=dev, dtype=dt),
        })
        self.active_sh_degree.zero_()
        self._sh_degree = 0
        return self

    @torch.no_grad()
    def init_random(self, n: int, center: Sequence[float] = (0.0, 0.0, 0.0),
                    half_extent: float = 0.1, generator: torch.Generator | None = None,
                    colors: Tensor | None = None) -> "GaussianSet":
        """Initialise ``n`` Gaussians uniformly in the cube ``center ± half_extent`` (metres).

        METHOD §2: face ``init_random(2000, (0, 0, 0), 0.1)`` (= :data:`FACE_INIT`); mouth
        ``init_random(5000, (0, 0.05, 0), 0.05)`` (= :data:`MOUTH_INIT`, y-down world).
        """
        c = torch.as_tensor(center, dtype=self.means.dtype)
        u = torch.rand(n, 3, generator=generator, dtype=self.means.dtype)
        pts = (c + (2.0 * u - 1.0) * half_extent).to(self.means.device)
        return self.init_points(pts, colors)

    def init_box(self, box: InitBox, generator: torch.Generator | None = None) -> "GaussianSet":
        """Shortcut: ``init_random(box.n, box.center, box.half_extent)``."""
        return self.init_random(box.n, box.center, box.half_extent, generator=generator)

    def _set_all(self, tensors: Mapping[str, Tensor]) -> None:
        for name in PARAM_NAMES:
            old = getattr(self, name)
            setattr(self, name, nn.Parameter(tensors[name].contiguous(),
                                             requires_grad=old.requires_grad))

    # -- accessors ------------------------------------------------------------------------
    @property
    def num(self) -> int:
        """Number of Gaussians N."""
        return self.means.shape[0]

    @property
    def max_sh_degree(self) -> int:
        return self.config.max_sh_degree

    @property
    def sh_degree(self) -> int:
        """Currently active SH degree (pass as ``sh_degree`` to the rasterizer)."""
        return self._sh_degree

    @property
    def quats(self) -> Tensor:
        """(N, 4) unit wxyz quaternions."""
        return F.normalize(self.quats_raw, dim=-1)

    @property
    def scales(self) -> Tensor:
        """(N, 3) activated scales, metres: ``softplus(scales_raw)``."""
        return F.softplus(self.scales_raw)

    @property
    def opacities(self) -> Tensor:
        """(N,) opacities in (0, 1): ``sigmoid(opacity_logits)``."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def sh(self) -> Tensor:
        """(N, (max_sh_degree + 1)^2, 3) SH coefficients (band 0 first)."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    def update_sh_degree(self, step: int) -> int:
        """3DGS schedule: active degree = ``min(max, step // sh_increase_interval)``; returns it."""
        d = min(self.config.max_sh_degree, max(0, step) // max(1, self.config.sh_increase_interval))
        if d != self._sh_degree:
            self.active_sh_degree.fill_(d)
            self._sh_degree = d
        return d

    def activated(self, deltas: Any = None, *, d_xyz: Tensor | None = None,
                  d_quat: Tensor | None = None,
                  d_scale: Tensor | None = None) -> ActivatedGaussians:
        """Activated, deformed tensors ready for ``core.raster.render.rasterize``.

        Args:
            deltas: optional object with attributes ``d_xyz`` / ``d_quat`` / ``d_scale`` (e.g.
                ``core.model.motion_field.Motion``); keyword arguments override its fields.
            d_xyz: (…, N, 3) metres, added to ``means``.
            d_quat: (…, N, 4) added to the *raw* quaternion before normalising.
            d_scale: (…, N, 3) added to the *raw* (pre-softplus) scale.
        Returns:
            :class:`ActivatedGaussians`; a leading batch dim of the deltas propagates.
        """
        if deltas is not None:
            d_xyz = d_xyz if d_xyz is not None else getattr(deltas, "d_xyz", None)
            d_quat = d_quat if d_quat is not None else getattr(deltas, "d_quat", None)
            d_scale = d_scale if d_scale is not None else getattr(deltas, "d_scale", None)
        means = self.means if d_xyz is None else self.means + d_xyz
        q = self.quats_raw if d_quat is None else self.quats_raw + d_quat
        s = self.scales_raw if d_scale is None else self.scales_raw + d_scale
        return ActivatedGaussians(means=means, quats=F.normalize(q, dim=-1), scales=F.softplus(s),
                                  opacities=self.opacities, sh=self.sh, sh_degree=self.sh_degree)

    # -- optimisation -----------------------------------------------------------------------
    def param_groups(self, lr: GaussianLR | None = None, scene_extent: float = 1.0,
                     prefix: str = "") -> list[dict]:
        """One optimizer param group per parameter (``name`` key = ``prefix + param name``).

        ``lr.means`` is multiplied by ``scene_extent``.
        """
        lr = lr or GaussianLR()
        groups = []
        for name in PARAM_NAMES:
            rate = getattr(lr, name) * (scene_extent if name == "means" else 1.0)
            groups.append({"params": [getattr(self, name)], "lr": rate, "name": prefix + name})
        return groups

    # -- (de)serialisation ------------------------------------------------------------------
    def to_tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """Flat, contiguous, detached CPU tensors for ``safetensors.torch.save_file``.

        Keys: ``prefix + name`` for :data:`PARAM_NAMES`, plus ``active_sh_degree`` and
        ``max_sh_degree`` (0-d int64).
        """
        out = {prefix + n: getattr(self, n).detach().cpu().contiguous().clone()
               for n in PARAM_NAMES}
        out[prefix + "active_sh_degree"] = self.active_sh_degree.detach().cpu().clone()
        out[prefix + "max_sh_degree"] = torch.tensor(self.config.max_sh_degree, dtype=torch.long)
        return out

    @torch.no_grad()
    def load_tensors(self, tensors: Mapping[str, Tensor], prefix: str = "") -> "GaussianSet":
        """Load :meth:`to_tensors` output (any N; the SH degree must match the config)."""
        key = prefix + "max_sh_degree"
        maxd = int(tensors[key]) if key in tensors else None
        if maxd is not None and maxd != self.config.max_sh_degree:
            raise ValueError(f"checkpoint has max SH degree {maxd}, this set "
                             f"{self.config.max_sh_degree}")
        dev, dt = self.means.device, self.means.dtype
        self._set_all({n: tensors[prefix + n].to(dev, dt) for n in PARAM_NAMES})
        if prefix + "active_sh_degree" in tensors:
            self._sh_degree = int(tensors[prefix + "active_sh_degree"])
            self.active_sh_degree.fill_(self._sh_degree)
        return self

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], prefix: str = "",
                     config: GaussianConfig | None = None) -> "GaussianSet":
        """Build a set from :meth:`to_tensors` output (max SH degree taken from the tensors)."""
        cfg = config or GaussianConfig()
        key = prefix + "max_sh_degree"
        if key in tensors:
            cfg = GaussianConfig(**{**cfg.__dict__, "max_sh_degree": int(tensors[key])})
        return cls(0, cfg).load_tensors(tensors, prefix)


# ---------------------------------------------------------------------------------------------
# optimizer-consistent resizing
# ---------------------------------------------------------------------------------------------
def _find_in_optimizer(optimizer: torch.optim.Optimizer, p: Tensor) -> tuple[dict | None, int]:
    for g in optimizer.param_groups:
        for i, q in enumerate(g["params"]):
            if q is p:
                return g, i
    return None, -1


def _swap_param(module: nn.Module, name: str, new_data: Tensor,
                optimizer: torch.optim.Optimizer | None,
                state_fn: Callable[[Tensor], Tensor]) -> None:
    """Replace ``module.<name>`` by a new Parameter holding ``new_data``; in the optimizer,
    replace the tensor in its param group and map each per-element state tensor (any state
    tensor with the old parameter's shape, e.g. ``exp_avg``) through ``state_fn``; scalar
    state (``step``) is kept."""
    old = getattr(module, name)
    new = nn.Parameter(new_data.contiguous(), requires_grad=old.requires_grad)
    if optimizer is not None:
        group, idx = _find_in_optimizer(optimizer, old)
        if group is not None:
            state = optimizer.state.pop(old, None)
            if state:
                optimizer.state[new] = {
                    k: (state_fn(v) if torch.is_tensor(v) and v.shape == old.shape else v)
                    for k, v in state.items()}
            group["params"][idx] = new
    setattr(module, name, new)


@torch.no_grad()
def extend_gaussians(gaussians: GaussianSet, new: Mapping[str, Tensor],
                     optimizer: torch.optim.Optimizer | None = None) -> None:
    """Append M Gaussians given as raw tensors ``{name: (M, …)}`` for every :data:`PARAM_NAMES`.

    Optimizer state for the new rows is zero (fresh Adam moments); old rows keep theirs.
    """
    for name in PARAM_NAMES:
        extra = new[name].to(getattr(gaussians, name))
        m = extra.shape[0]

        def grow(v: Tensor, m: int = m) -> Tensor:
            return torch.cat([v, v.new_zeros((m,) + tuple(v.shape[1:]))], dim=0)
        _swap_param(gaussians, name, torch.cat([getattr(gaussians, name).detach(), extra], 0),
                    optimizer, grow)


@torch.no_grad()
def prune_gaussians(gaussians: GaussianSet, keep: Tensor,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Keep only the Gaussians where ``keep`` (N,) bool is True (params and optimizer state)."""
    keep = keep.to(gaussians.means.device)
    for name in PARAM_NAMES:
        _swap_param(gaussians, name, getattr(gaussians, name).detach()[keep], optimizer,
                    lambda v: v[keep])


def spare_to_keep(remove: Tensor, score: Tensor, min_keep: int) -> Tensor:
    """``remove`` (N,) bool with its highest-``score`` marked Gaussians unmarked, as few as
    needed for at least ``min_keep`` (at most N) to remain. Changes ``remove`` in place and
    returns it."""
    spare = min(remove.numel(), min_keep) - int((~remove).sum())
    if spare > 0:
        remove[torch.topk(torch.where(remove, score, torch.full_like(score, -1.0)),
                          spare).indices] = False
    return remove


@torch.no_grad()
def replace_gaussian_param(gaussians: GaussianSet, name: str, value: Tensor,
                           optimizer: torch.optim.Optimizer | None = None,
                           reset_state: bool = True) -> None:
    """Overwrite one parameter with ``value`` (same shape); zero its Adam moments if asked."""
    old = getattr(gaussians, name)
    if value.shape != old.shape:
        raise ValueError(f"{name}: expected shape {tuple(old.shape)}, got {tuple(value.shape)}")
    _swap_param(gaussians, name, value.to(old), optimizer,
                (lambda v: torch.zeros_like(v)) if reset_state else (lambda v: v))


# ---------------------------------------------------------------------------------------------
# densification
# ---------------------------------------------------------------------------------------------
@dataclass
class DensifyConfig:
    """3DGS densification schedule and thresholds (METHOD §5).

    Attributes:
        grad_threshold: densify Gaussians whose mean accumulated NDC-space gradient norm of
            ``means2d`` is >= this (face 5e-4, mouth 2e-4; see :meth:`Densifier.accumulate`).
        start_step: first step at which densification runs (500).
        interval: densify every this many steps (100).
        until_frac: stop densifying (and resetting opacity) after this fraction of the stage (0.9).
        scene_extent: characteristic scene size, metres. Default 0.2 = the head's ±0.1 box
            (3DGS uses the camera spread; with a head-fixed world the head is the scene).
        percent_dense: clone if max scale <= ``percent_dense * scene_extent`` (2 mm by default),
            otherwise split.
        split_n: samples per split Gaussian (2).
        split_scale_div: split children get scale / this (1.6 = 0.8 * split_n, as 3DGS).
        min_opacity_start, min_opacity_end: the opacity prune threshold ramps linearly from
            start (at ``start_step``, the first densification) to end (end of the
            densification window) (0.05 -> 0.30). Starting the ramp at the first
            densification keeps short stages from pruning Gaussians that have not had time
            to gain opacity (init 0.1).
        min_keep: a prune never leaves fewer than this many Gaussians (the most opaque are
            kept), so a branch cannot vanish (an empty set has no gradient to recover with);
            the face/mouth presets keep 64.
        max_world_scale_frac: prune if max scale > this * scene_extent (0.1, as 3DGS; 2 cm);
            like 3DGS only after the first opacity reset.
        max_screen_frac: prune if the max 2D radius seen since the last densification exceeds
            this fraction of max(W, H); only after the first opacity reset. Default ``None``
            (off): in the 3DGS reference the radii are zeroed just before this test, so it never
            fires, and gsplat's default strategy disables it too; a close-up head also has
            legitimately large splats. Set e.g. 0.1 to enable.
        opacity_reset_interval: every this many steps opacities are clamped to
            ``reset_opacity`` (3000).
        reset_opacity: value opacities are clamped to at a reset (0.01, as 3DGS).
    """

    grad_threshold: float = 5e-4
    start_step: int = 500
    interval: int = 100
    until_frac: float = 0.9
    scene_extent: float = 0.2
    percent_dense: float = 0.01
    split_n: int = 2
    split_scale_div: float = 1.6
    min_opacity_start: float = 0.05
    min_opacity_end: float = 0.30
    max_world_scale_frac: float = 0.1
    max_screen_frac: float | None = None
    opacity_reset_interval: int = 3000
    reset_opacity: float = 0.01
    min_keep: int = 1


FACE_DENSIFY = DensifyConfig(grad_threshold=5e-4, min_keep=64)
MOUTH_DENSIFY = DensifyConfig(grad_threshold=2e-4, min_keep=64)


@dataclass
class DensifyStats:
    """What one :meth:`Densifier.densify_and_prune` call did (counts of Gaussians)."""

    cloned: int
    split: int
    pruned: int
    n_before: int
    n_after: int


class Densifier:
    """Accumulates screen-space gradient statistics and applies the 3DGS densify/prune rules.

    Typical loop::

        out = rasterize(...); loss.backward()
        dens.accumulate(out.means2d.grad, out.visible, out.radii, W, H)
        optimizer.step(); optimizer.zero_grad()
        dens.step(step, stage_steps, gaussians, optimizer)   # densify/prune/reset when due

    State tensors (resized together with the Gaussians): ``grad_accum`` (N,), ``denom`` (N,),
    ``max_radii`` (N,) as a fraction of max(W, H).
    """

    def __init__(self, config: DensifyConfig | None = None, n: int = 0,
                 device: torch.device | str | None = None) -> None:
        self.config = config or DensifyConfig()
        self.reset_stats(n, device)

    def reset_stats(self, n: int, device: torch.device | str | None = None) -> None:
        """Zero the statistics for N Gaussians."""
        self.grad_accum = torch.zeros(n, device=device)
        self.denom = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    # -- schedule ---------------------------------------------------------------------------
    def min_opacity(self, step: int, total_steps: int) -> float:
        """Opacity prune threshold at ``step`` of a ``total_steps`` stage: linear ramp from
        ``min_opacity_start`` at ``start_step`` to ``min_opacity_end`` at the end of the
        densification window (``until_frac * total_steps``), so the last densification uses
        the end value."""
        c = self.config
        span = max(1.0, c.until_frac * total_steps - c.start_step)
        t = min(1.0, max(0.0, (step - c.start_step) / span))
        return c.min_opacity_start + (c.min_opacity_end - c.min_opacity_start) * t

    def should_densify(self, step: int, total_steps: int) -> bool:
        c = self.config
        return (c.start_step <= step < c.until_frac * total_steps
                and step > 0 and step % c.interval == 0)

    def should_reset_opacity(self, step: int, total_steps: int) -> bool:
        c = self.config
        return (step > 0 and step % c.opacity_reset_interval == 0
                and step < c.until_frac * total_steps)

    # -- statistics -------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, means2d_grad: Tensor, visible: Tensor | None, radii: Tensor | None,
                   width: int, height: int) -> None:
        """Add one view's screen-space gradient norms.

        ``means2d_grad`` is dL/d(pixel position), shape (N, 2) (extra leading singleton dims
        and a 3rd depth column are dropped). It is converted to the NDC-style units 3DGS
        thresholds are defined in: pixel = (ndc + 1) * W / 2 - 0.5, hence
        ``dL/dndc_x = dL/du * W / 2`` and ``dL/dndc_y = dL/dv * H / 2``; the L2 norm of that
        vector is added for visible Gaussians and their view count incremented.

        Args:
            visible: (N,) bool; None -> ``radii > 0``.
            radii: (N,) or (N, 2) screen radii in pixels (for the huge-splat prune), may be None.
        """
        g = means2d_grad.detach()
        g = g.reshape(-1, g.shape[-1])[:, :2]
        n = g.shape[0]
        if n != self.grad_accum.shape[0]:
            raise ValueError(f"densifier tracks {self.grad_accum.shape[0]} Gaussians, got {n}")
        r = None
        if radii is not None:
            r = radii.detach().reshape(n, -1).float().amax(dim=-1)
        if visible is None:
            if r is None:
                raise ValueError("need visible or radii")
            visible = r > 0
        visible = visible.reshape(n).to(torch.bool)
        # no boolean indexing (its output size is read back from the device each step)
        ndc = torch.stack([g[:, 0] * (width / 2.0), g[:, 1] * (height / 2.0)], -1)
        dev = self.grad_accum.device
        vis = visible.to(dev)
        self.grad_accum += torch.where(vis, ndc.norm(dim=-1).to(dev), 0.0)
        self.denom += vis.to(self.denom.dtype)
        if r is not None:
            frac = (r / float(max(width, height))).to(dev)
            self.max_radii.copy_(torch.where(vis, torch.maximum(self.max_radii, frac), self.max_radii))

    def mean_grad(self) -> Tensor:
        """(N,) accumulated gradient norm / number of views (0 where never visible)."""
        return torch.where(self.denom > 0, self.grad_accum / self.denom.clamp_min(1),
                           torch.zeros_like(self.grad_accum))

    # -- operations -------------------------------------------------------------------------
    @torch.no_grad()
    def prune(self, gaussians: GaussianSet, remove: Tensor,
              optimizer: torch.optim.Optimizer | None = None) -> int:
        """Delete the Gaussians where ``remove`` (N,) is True, keeping stats aligned; returns count.

        Use for loop-level deletions too (background-coloured or behind-the-head Gaussians).
        """
        keep = ~remove.to(torch.bool)
        prune_gaussians(gaussians, keep, optimizer)
        k = keep.to(self.grad_accum.device)
        self.grad_accum, self.denom, self.max_radii = (
            self.grad_accum[k], self.denom[k], self.max_radii[k])
        return int(remove.sum())

    @torch.no_grad()
    def densify_and_prune(self, gaussians: GaussianSet, optimizer: torch.optim.Optimizer | None,
                          min_opacity: float, prune_large: bool = True,
                          generator: torch.Generator | None = None) -> DensifyStats:
        """Clone small / split large high-gradient Gaussians, then prune (3DGS order).

        1. ``grads = grad_accum / denom``; candidates: ``grads >= grad_threshold``.
        2. Clone candidates with max scale <= ``percent_dense * scene_extent``: exact copies
           appended (fresh optimizer state).
        3. Split the other candidates: ``split_n`` children each, positions sampled from the
           parent Gaussian N(mean, R diag(scale^2) R^T), activated scale / ``split_scale_div``,
           rotation, opacity and SH copied; parents removed.
        4. Prune: opacity < ``min_opacity``; if ``prune_large`` (3DGS: only after the first
           opacity reset, see :meth:`step`) also max scale > ``max_world_scale_frac *
           scene_extent`` and (if enabled) max 2D radius > ``max_screen_frac``.
        Statistics are zeroed afterwards.
        """
        c = self.config
        n0 = gaussians.num
        grads = self.mean_grad().to(gaussians.means.device)
        big_grad = grads >= c.grad_threshold
        max_scale = gaussians.scales.detach().amax(dim=-1)
        small = max_scale <= c.percent_dense * c.scene_extent

        # clone
        clone = big_grad & small
        extend_gaussians(gaussians, {n: getattr(gaussians, n).detach()[clone] for n in PARAM_NAMES},
                         optimizer)
        n_clone = int(clone.sum())
        # split (originals only; clones are padded with False)
        split = torch.cat([big_grad & ~small, torch.zeros(n_clone, dtype=torch.bool,
                                                          device=grads.device)])
        n_split = int(split.sum())
        if n_split:
            k = c.split_n
            mu = gaussians.means.detach()[split].repeat(k, 1)
            s = gaussians.scales.detach()[split].repeat(k, 1)
            rot = quat_to_rotmat(gaussians.quats_raw.detach()[split]).repeat(k, 1, 1)
            eps = torch.randn(s.shape, generator=generator, dtype=s.dtype).to(s.device)
            new = {
                "means": mu + (rot @ (eps * s)[..., None])[..., 0],
                "quats_raw": gaussians.quats_raw.detach()[split].repeat(k, 1),
                "scales_raw": inverse_softplus(s / c.split_scale_div),
                "opacity_logits": gaussians.opacity_logits.detach()[split].repeat(k),
                "sh_dc": gaussians.sh_dc.detach()[split].repeat(k, 1, 1),
                "sh_rest": gaussians.sh_rest.detach()[split].repeat(k, 1, 1),
            }
            extend_gaussians(gaussians, new, optimizer)
            remove = torch.cat([split, torch.zeros(k * n_split, dtype=torch.bool,
                                                   device=split.device)])
            prune_gaussians(gaussians, ~remove, optimizer)
            n_new_split = k * n_split
        else:
            n_new_split = 0

        # prune on the densified set, ordered [originals minus split parents, clones, children];
        # clones and children have no screen-radius history yet (0).
        radii = torch.cat([self.max_radii.to(grads.device)[~split[:n0]],
                           torch.zeros(n_clone + n_new_split, device=grads.device)])
        remove = gaussians.opacities.detach() < min_opacity
        if prune_large:
            remove |= (gaussians.scales.detach().amax(dim=-1)
                       > c.max_world_scale_frac * c.scene_extent)
            if c.max_screen_frac is not None:
                remove |= radii > c.max_screen_frac
        keep_n = min(c.min_keep, remove.numel())
        if int((~remove).sum()) < keep_n:  # never empty a branch: keep the most opaque
            top = torch.topk(gaussians.opacities.detach(), keep_n).indices
            remove[top] = False
        n_pruned = int(remove.sum())
        prune_gaussians(gaussians, ~remove, optimizer)
        self.reset_stats(gaussians.num, self.grad_accum.device)
        return DensifyStats(cloned=n_clone, split=n_split, pruned=n_pruned, n_before=n0,
                            n_after=gaussians.num)

    @torch.no_grad()
    def reset_opacity(self, gaussians: GaussianSet,
                      optimizer: torch.optim.Optimizer | None = None) -> None:
        """Clamp opacities to at most ``reset_opacity`` and zero their Adam moments (3DGS)."""
        op = torch.minimum(gaussians.opacities.detach(),
                           torch.full_like(gaussians.opacity_logits, self.config.reset_opacity))
        replace_gaussian_param(gaussians, "opacity_logits", torch.logit(op), optimizer)

    def step(self, step: int, total_steps: int, gaussians: GaussianSet,
             optimizer: torch.optim.Optimizer | None = None,
             generator: torch.Generator | None = None) -> DensifyStats | None:
        """Run whatever is due at ``step`` of a ``total_steps`` stage (call after optimizer.step).

        Densify+prune every ``interval`` steps in [start_step, until_frac * total) with the
        ramped opacity threshold; the large-Gaussian prunes only once ``step`` has passed the
        first opacity reset (3DGS). Opacity reset every ``opacity_reset_interval`` steps in that
        window. Returns the densify stats when densification ran.
        """
        stats = None
        if self.should_densify(step, total_steps):
            stats = self.densify_and_prune(
                gaussians, optimizer, self.min_opacity(step, total_steps),
                prune_large=step > self.config.opacity_reset_interval, generator=generator)
        if self.should_reset_opacity(step, total_steps):
            self.reset_opacity(gaussians, optimizer)
        return stats
