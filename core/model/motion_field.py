"""Deformation fields: tri-plane encoder, audio/expression encoders, Universal Motion Field
(face and mouth), personalised residual fields, motion aligner, and their losses/helpers.

Conventions (core/__init__): head-canonical world in metres, +x image right, **+y down**,
+z into the head; the fields cover ``±0.15`` (``TriPlaneConfig.bound``). Quaternion offsets
are wxyz and are added to the *raw* quaternion; scale offsets are added to the *raw*
(pre-softplus) scale (see ``core.model.gaussians.GaussianSet.activated``).

Shapes: N Gaussians, B frames. Per-frame conditioning (audio code (32,), expression (6,),
hook (3,)) may be given unbatched -> outputs (N, ·), or batched (B, ·) -> outputs (B, N, ·).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.device import host_side


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
class MLP(nn.Sequential):
    """Fully connected stack ``dims[0] -> … -> dims[-1]`` with an activation between layers
    (none after the last). ``bias=False`` is the UMF convention (zero input -> zero output)."""

    def __init__(self, dims: Sequence[int], bias: bool = False,
                 act: type[nn.Module] | None = None) -> None:
        act = act or nn.ReLU
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if i < len(dims) - 2:
                layers.append(act())
        super().__init__(*layers)


@dataclass(frozen=True)
class TriPlaneConfig:
    """Multi-resolution tri-plane grid (METHOD §3).

    Attributes:
        n_levels: levels per plane (12); 1 feature per level -> ``3 * n_levels`` = 36 features.
        base_resolution, max_resolution: cells per side at the coarsest / finest level; level l
            has ``round(base * (max / base) ** (l / (n_levels - 1)))`` cells, i.e. that + 1
            vertices per side (a dense parameter plane).
        bound: half-size of the covered cube, metres (0.15). Coordinates are normalised by it;
            points outside are **clamped** to the boundary (they read the edge values and get
            no positional gradient across the clamp).
        init_range: entries start at U(-init_range, init_range) (1e-4).
    """

    n_levels: int = 12
    base_resolution: int = 16
    max_resolution: int = 38
    bound: float = 0.15
    init_range: float = 1e-4

    @property
    def resolutions(self) -> list[int]:
        """Cells per side for every level."""
        if self.n_levels == 1:
            return [self.base_resolution]
        g = (self.max_resolution / self.base_resolution) ** (1.0 / (self.n_levels - 1))
        return [int(round(self.base_resolution * g ** i)) for i in range(self.n_levels)]

    @property
    def out_dim(self) -> int:
        return 3 * self.n_levels


#: Face UMF / face aligner / face personalised planes: 16 -> 38 cells geometrically.
FACE_PLANES = TriPlaneConfig(base_resolution=16, max_resolution=38)
#: Mouth UMF planes: 58 -> 64 cells (METHOD: "about 58-64 at every level").
MOUTH_PLANES = TriPlaneConfig(base_resolution=58, max_resolution=64)

#: plane index -> the two world axes it spans (grid_sample's x, y)
PLANE_AXES: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (0, 2))  # xy, yz, xz


class TriPlaneEncoder(nn.Module):
    """Three axis-aligned multi-resolution 2D feature planes of the canonical position.

    Storage: ``levels[l]`` is a parameter of shape (3, R_l + 1, R_l + 1) holding the xy, yz and
    xz planes of level l. Plane p spanning world axes (a, b) = :data:`PLANE_AXES`[p] stores at
    ``levels[l][p, j, i]`` the feature of the grid **vertex** at
    ``(x_a, x_b) = (-bound + 2 bound i / R_l, -bound + 2 bound j / R_l)``
    (``grid_sample`` with ``align_corners=True``: the corner vertices sit exactly on ±bound, so
    sampling at a vertex returns the stored value; bilinear in between).

    forward: (…, 3) metres -> (…, 3 * n_levels) features ordered plane-major:
    ``feature[p * n_levels + l]``.
    """

    def __init__(self, config: TriPlaneConfig = FACE_PLANES) -> None:
        super().__init__()
        self.config = config
        r0 = config.init_range
        self.levels = nn.ParameterList([
            nn.Parameter(torch.empty(3, r + 1, r + 1).uniform_(-r0, r0))
            for r in config.resolutions])

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def normalize(self, xyz: Tensor) -> Tensor:
        """World metres -> [-1, 1] grid coordinates (clamped)."""
        return (xyz / self.config.bound).clamp(-1.0, 1.0)

    def forward(self, xyz: Tensor) -> Tensor:
        lead = xyz.shape[:-1]
        u = self.normalize(xyz.reshape(-1, 3))                           # (M, 3)
        grid = torch.stack([u[:, list(ab)] for ab in PLANE_AXES], 0)     # (3, M, 2)
        grid = grid[:, None]                                             # (3, 1, M, 2)
        feats = []
        for plane in self.levels:
            g = grid.to(plane.dtype)
            s = F.grid_sample(plane[:, None], g, mode="bilinear", padding_mode="border",
                              align_corners=True)                        # (3, 1, 1, M)
            feats.append(s[:, 0, 0])                                     # (3, M)
        f = torch.stack(feats, 1)                                        # (3, L, M)
        return f.reshape(self.out_dim, -1).transpose(0, 1).reshape(*lead, self.out_dim)


# ---------------------------------------------------------------------------------------------
# audio path
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioConfig:
    """Audio encoder (METHOD §3).

    Attributes:
        feat_dim: D, per-step feature size (80 log-mel, 1024 HuBERT).
        win_steps: steps per frame window (16 at 50 Hz, centred on the frame).
        conv_channels: output channels of the 4 Conv1d(k=3, stride 2, padding 1) layers over
            time: D -> 32 -> 32 -> 64 -> 64 (the last must be 64 to feed FC 64 -> 64 -> 32);
            time shrinks 16 -> 8 -> 4 -> 2 -> 1.
        fc_hidden: hidden width of the FC head (64).
        code_dim: output audio code size (32).
        att_frames: frames in the smoothing window [i-4, i+4) (8).
        leaky_slope: LeakyReLU negative slope (0.02).
    """

    feat_dim: int = 80
    win_steps: int = 16
    conv_channels: tuple[int, int, int, int] = (32, 32, 64, 64)
    fc_hidden: int = 64
    code_dim: int = 32
    att_frames: int = 8
    leaky_slope: float = 0.02


class AudioNet(nn.Module):
    """Per-frame audio window -> audio code.

    forward: (B, win_steps, D) -> (B, code_dim). Four Conv1d(kernel 3, stride 2, padding 1)
    with LeakyReLU(0.02), treating D as channels and the 16 steps as time (16 -> 1), then
    Linear(64, 64), LeakyReLU(0.02), Linear(64, 32) (biases on; no output activation).
    """

    def __init__(self, config: AudioConfig = AudioConfig()) -> None:
        super().__init__()
        self.config = config
        chans = (config.feat_dim,) + tuple(config.conv_channels)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(cin, cout, kernel_size=3, stride=2, padding=1),
                       nn.LeakyReLU(config.leaky_slope)]
        self.conv = nn.Sequential(*layers)
        steps = config.win_steps
        for _ in range(4):
            steps = (steps - 1) // 2 + 1
        self._out_steps = steps
        self.fc = nn.Sequential(nn.Linear(chans[-1] * steps, config.fc_hidden),
                                nn.LeakyReLU(config.leaky_slope),
                                nn.Linear(config.fc_hidden, config.code_dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x.transpose(1, 2))          # (B, 64, 1)
        return self.fc(h.flatten(1))


class AudioAttention(nn.Module):
    """Temporal smoothing of per-frame audio codes over an 8-frame window.

    forward: (B, 8, C) codes -> ((B, C) weighted sum, (B, 8) softmax weights). Conv1d over time
    (kernel 3, padding 1, length kept) C -> 16 -> 8 -> 4 -> 2 -> 1 each followed by
    LeakyReLU(0.02), then Linear(8, 8) and a softmax over the 8 frames.
    """

    def __init__(self, code_dim: int = 32, n_frames: int = 8, leaky_slope: float = 0.02) -> None:
        super().__init__()
        chans = (code_dim, 16, 8, 4, 2, 1)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(cin, cout, kernel_size=3, stride=1, padding=1),
                       nn.LeakyReLU(leaky_slope)]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(n_frames, n_frames)

    def forward(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        w = self.conv(codes.transpose(1, 2))[:, 0]          # (B, 8)
        w = torch.softmax(self.fc(w), dim=1)
        return (w[..., None] * codes).sum(1), w


class AudioEncoder(nn.Module):
    """AudioNet + AudioAttention: (B, 8, 16, D) -> (B, 32) audio code per frame.

    With ``use_attention=False`` (e.g. a warm-up) the centre frame's code (window index 4,
    i.e. frame i of [i-4, i+4)) is returned. Input must be 4-D (use :class:`AudioNet` for
    single (B, 16, D) windows, :func:`audio_windows` to build the 8-frame windows).
    """

    def __init__(self, config: AudioConfig = AudioConfig()) -> None:
        super().__init__()
        self.config = config
        self.net = AudioNet(config)
        self.attention = AudioAttention(config.code_dim, config.att_frames, config.leaky_slope)

    def forward(self, x: Tensor, use_attention: bool = True) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"AudioEncoder expects (B, 8, 16, D), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        codes = self.net(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        if not use_attention:
            return codes[:, t // 2]
        return self.attention(codes)[0]


def audio_windows(frame_feats: Tensor, index: int | Sequence[int] | Tensor,
                  n_frames: int = 8) -> Tensor:
    """Gather the attention windows of frames ``index`` with edge clamping.

    Args:
        frame_feats: (T, 16, D) per-frame audio windows of one clip.
        index: frame index i (int -> batch of 1) or (B,) indices.
        n_frames: window length; frames ``[i - n//2, i + n//2)`` i.e. [i-4, i+4) for 8,
            clamped to [0, T-1].
    Returns:
        (B, n_frames, 16, D).
    """
    idx = torch.as_tensor(index, dtype=torch.long, device=frame_feats.device).reshape(-1)
    off = torch.arange(n_frames, device=frame_feats.device) - n_frames // 2
    frames = (idx[:, None] + off[None]).clamp(0, frame_feats.shape[0] - 1)
    return frame_feats[frames]


# ---------------------------------------------------------------------------------------------
# expression path
# ---------------------------------------------------------------------------------------------
class ExpressionEncoder(nn.Module):
    """5 brow/eye AU intensities -> MLP(5 -> 16 -> 5) (ReLU, no bias), concatenated with blink.

    forward(aus: (…, 5), blink: (…,) or (…, 1)) -> (…, 6) = [MLP(aus), blink].
    """

    def __init__(self, n_aus: int = 5, hidden: int = 16) -> None:
        super().__init__()
        self.mlp = MLP([n_aus, hidden, n_aus])
        self.out_dim = n_aus + 1

    def forward(self, aus: Tensor, blink: Tensor) -> Tensor:
        if blink.dim() == aus.dim() - 1:
            blink = blink[..., None]
        return torch.cat([self.mlp(aus), blink.to(aus.dtype)], dim=-1)


class CodeEncoder(nn.Module):
    """Mouth code (per-person z-scores of aperture, width, protrusion, jaw; see
    :mod:`core.data.mouth_code`) -> features appended to the audio code.

    forward(code (…, 4)) -> (…, out_dim): Linear(4, 16), LeakyReLU(0.02), Linear(16, out_dim).
    """

    def __init__(self, code_dim: int = 4, out_dim: int = 16, leaky_slope: float = 0.02) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(code_dim, out_dim), nn.LeakyReLU(leaky_slope),
                                 nn.Linear(out_dim, out_dim))
        self.code_dim, self.out_dim = code_dim, out_dim

    def forward(self, code: Tensor) -> Tensor:
        return self.net(code)


class CodeBasis(nn.Module):
    """A per-position linear basis of motion driven by the mouth code ("blendshapes" of the
    field): ``Δxyz(x) = B(x) @ code`` with ``B(x) = MLP(enc(x))`` reshaped to (3, code_dim).

    The gated MLP of a field can express any mapping but learns a code's effect slowly; this
    term is linear in the code, so a few hundred steps on a person's lips fit how far each
    point moves per unit of aperture, width, protrusion or jaw drop.

    forward(enc (N, E), code (code_dim,) | (B, code_dim)) -> (N, 3) | (B, N, 3), before the
    field's ``xyz_scale``. MLP(E -> hidden -> 3 code_dim), ReLU, with biases (a basis that is
    not zero where the tri-planes are still near zero); the last layer starts at zero.
    """

    def __init__(self, enc_dim: int, code_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.code_dim = code_dim
        self.mlp = MLP([enc_dim, hidden, 3 * code_dim], bias=True)
        nn.init.zeros_(self.mlp[-1].weight)   # starts as "the code moves nothing"
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, enc: Tensor, code: Tensor | None) -> Tensor:
        if code is None:
            raise ValueError("this motion field takes a mouth code: pass code=(…, 4)")
        basis = self.mlp(enc).reshape(enc.shape[0], 3, self.code_dim)     # (N, 3, C)
        code = code.to(basis)
        if code.dim() == 1:
            return basis @ code
        return torch.einsum("nkc,bc->bnk", basis, code)


# ---------------------------------------------------------------------------------------------
# motion fields
# ---------------------------------------------------------------------------------------------
@dataclass
class Motion:
    """Output of a deformation field (shapes (N, ·) or (B, N, ·)).

    d_xyz: position offset, metres. d_quat: wxyz offset added to the raw quaternion (None for
    the mouth). d_scale: offset added to the raw pre-softplus scale (None for the mouth).
    audio_gate (N, 32) / eye_gate (N, 6): the face UMF's per-Gaussian gates (regularisers).
    scaler: the mouth UMF's per-Gaussian 2*sigmoid multiplier, (…, N, 1).
    p_xyz (N, 3) / p_scale (N, 3): the aligner's query shift and per-axis Δxyz scale, if used.
    """

    d_xyz: Tensor
    d_quat: Tensor | None = None
    d_scale: Tensor | None = None
    audio_gate: Tensor | None = None
    eye_gate: Tensor | None = None
    scaler: Tensor | None = None
    p_xyz: Tensor | None = None
    p_scale: Tensor | None = None

    def plus(self, residual: "Motion") -> "Motion":
        """Add a residual field's offsets (personalised field); other fields kept from self."""
        def add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            if a is None:
                return b
            return a if b is None else a + b
        return replace(self, d_xyz=self.d_xyz + residual.d_xyz,
                       d_quat=add(self.d_quat, residual.d_quat),
                       d_scale=add(self.d_scale, residual.d_scale))


def _batch(cond: Tensor) -> tuple[Tensor, bool]:
    """(C,) -> ((1, C), True); (B, C) -> ((B, C), False)."""
    return (cond[None], True) if cond.dim() == 1 else (cond, False)


def _split_face_out(out: Tensor, xyz_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return out[..., 0:3] * xyz_scale, out[..., 3:7], out[..., 7:10]


@dataclass(frozen=True)
class FaceFieldConfig:
    """Face UMF (METHOD §3). Main MLP ``(36 + audio_dim + expr_dim) -> hidden -> hidden -> 10``,
    no biases, ReLU; audio gate MLP(36 -> 32 -> audio_dim); eye gate ReLU(MLP(36 -> 16 -> 6));
    Δxyz = out[0:3] * xyz_scale (0.01), Δquat = out[3:7], Δscale = out[7:10]."""

    planes: TriPlaneConfig = FACE_PLANES
    audio_dim: int = 32
    expr_dim: int = 6
    hidden: int = 64
    audio_gate_hidden: int = 32
    eye_gate_hidden: int = 16
    xyz_scale: float = 0.01
    code_dim: int = 0
    code_hidden: int = 32


class FaceMotionField(nn.Module):
    """Face Universal Motion Field.

    forward(xyz (N, 3) m, audio (32,) | (B, 32), expr (6,) | (B, 6)) -> :class:`Motion` with
    d_xyz (…, N, 3), d_quat (…, N, 4), d_scale (…, N, 3), audio_gate (N, 32), eye_gate (N, 6).
    """

    def __init__(self, config: FaceFieldConfig = FaceFieldConfig()) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = TriPlaneEncoder(c.planes)
        e = self.encoder.out_dim
        self.audio_gate = MLP([e, c.audio_gate_hidden, c.audio_dim])
        self.eye_gate = MLP([e, c.eye_gate_hidden, c.expr_dim])
        self.mlp = MLP([e + c.audio_dim + c.expr_dim, c.hidden, c.hidden, 10])
        self.code_basis = CodeBasis(e, c.code_dim, c.code_hidden) if c.code_dim else None

    def forward(self, xyz: Tensor, audio: Tensor, expr: Tensor, code: Tensor | None = None) -> Motion:
        enc = self.encoder(xyz)                                   # (N, 36)
        a_gate = self.audio_gate(enc)                             # (N, 32)
        e_gate = F.relu(self.eye_gate(enc))                       # (N, 6)
        audio, squeeze = _batch(audio)
        expr, _ = _batch(expr)
        b, n = audio.shape[0], enc.shape[0]
        b = max(b, expr.shape[0])
        h = torch.cat([enc.expand(b, n, -1),
                       (audio[:, None, :] * a_gate[None]).expand(b, n, -1),
                       (expr[:, None, :] * e_gate[None]).expand(b, n, -1)], dim=-1)
        out = self.mlp(h)                                         # (B, N, 10)
        if squeeze:
            out = out[0]
        d_xyz, d_quat, d_scale = _split_face_out(out, self.config.xyz_scale)
        if self.code_basis is not None:
            d_xyz = d_xyz + self.code_basis(enc, code) * self.config.xyz_scale
        return Motion(d_xyz=d_xyz, d_quat=d_quat, d_scale=d_scale,
                      audio_gate=a_gate, eye_gate=e_gate)


@dataclass(frozen=True)
class MouthFieldConfig:
    """Mouth UMF (METHOD §3). MLP((36 + audio_dim + 3) -> 32 -> 32 -> 3) (no bias, ReLU) gives
    Δxyz = out * xyz_scale * (lateral_scale, 1, lateral_scale) (x and z /5: mostly vertical),
    multiplied by 2 * sigmoid(MLP((36 + 3) -> 16 -> 16 -> 1))."""

    planes: TriPlaneConfig = MOUTH_PLANES
    audio_dim: int = 32
    hook_dim: int = 3
    hidden: int = 32
    scaler_hidden: int = 16
    xyz_scale: float = 0.01
    lateral_scale: float = 0.2
    code_dim: int = 0
    code_hidden: int = 32


def bound_offset(d: Tensor, max_offset: float | None) -> Tensor:
    """Δxyz (…, 3) metres held within ``max_offset`` per axis, smoothly:
    ``max_offset * tanh(d / max_offset)`` (about ``d`` for small offsets); None: unchanged."""
    if max_offset is None:
        return d
    return max_offset * torch.tanh(d / max_offset)


def mouth_axis_weights(c: MouthFieldConfig, ref: Tensor) -> Tensor:
    """(3,) per-axis weights of the mouth field's Δxyz (lateral axes damped), like ``ref``."""
    return ref.new_tensor([c.lateral_scale, 1.0, c.lateral_scale]) * c.xyz_scale


class MouthMotionField(nn.Module):
    """Mouth Universal Motion Field.

    forward(xyz (N, 3) m, audio (32,) | (B, 32), hook (3,) | (B, 3)) -> :class:`Motion` with
    d_xyz (…, N, 3) and scaler (…, N, 1); ``hook`` from :func:`face_mouth_hook`.
    """

    def __init__(self, config: MouthFieldConfig = MouthFieldConfig()) -> None:
        super().__init__()
        self.config = c = config
        #: Δxyz held within this many metres per axis (:func:`bound_offset`); None: unbounded
        #: (priors and avatars made before the bound). Set per avatar, saved in its metadata.
        self.max_offset: float | None = None
        self.encoder = TriPlaneEncoder(c.planes)
        e = self.encoder.out_dim
        self.mlp = MLP([e + c.audio_dim + c.hook_dim, c.hidden, c.hidden, 3])
        self.scaler = MLP([e + c.hook_dim, c.scaler_hidden, c.scaler_hidden, 1])
        self.code_basis = CodeBasis(e, c.code_dim, c.code_hidden) if c.code_dim else None

    def forward(self, xyz: Tensor, audio: Tensor, hook: Tensor, code: Tensor | None = None) -> Motion:
        enc = self.encoder(xyz)
        audio, squeeze = _batch(audio)
        hook, _ = _batch(hook.to(enc.dtype))
        b, n = max(audio.shape[0], hook.shape[0]), enc.shape[0]
        encb = enc.expand(b, n, -1)
        hookb = hook[:, None, :].expand(b, n, -1)
        d = self.mlp(torch.cat([encb, audio[:, None, :].expand(b, n, -1), hookb], -1))
        s = 2.0 * torch.sigmoid(self.scaler(torch.cat([encb, hookb], -1)))
        d = d * mouth_axis_weights(self.config, d) * s
        if squeeze:
            d, s = d[0], s[0]
        if self.code_basis is not None:
            d = d + self.code_basis(enc, code) * mouth_axis_weights(self.config, d)
        return Motion(d_xyz=bound_offset(d, self.max_offset), scaler=s)


# ---------------------------------------------------------------------------------------------
# face-mouth hook
# ---------------------------------------------------------------------------------------------
HOOK_K_RANGE = (10, 50)   # training: k uniform in [10, 50] (inclusive)
HOOK_K_EVAL = 10          # inference


def face_mouth_hook(face_dxyz_y: Tensor, k: int) -> Tensor:
    """Summary of the face's vertical motion fed to the mouth field (detached).

    Args:
        face_dxyz_y: (N,) or (B, N) the face field's Δxyz **y component** (metres) over all face
            Gaussians, in our y-down world: positive = moving down (e.g. chin/lower lip when the
            jaw opens), negative = moving up.
        k: rank (clamped to [1, N]).
    Returns:
        (3,) or (B, 3): ``[kth_largest, kth_smallest, kth_largest - kth_smallest] * 100``, i.e.
        [k-th most downward move, k-th most upward move, their spread (>= 0, a mouth-opening
        measure)] in centimetres. No gradient flows back to the face field.
    """
    y = face_dxyz_y.detach()
    n = y.shape[-1]
    k = max(1, min(int(k), n))
    top = y.topk(k, dim=-1, largest=True).values[..., k - 1]
    bot = y.topk(k, dim=-1, largest=False).values[..., k - 1]
    return torch.stack([top, bot, top - bot], dim=-1) * 100.0


@host_side
def sample_hook_k(training: bool, generator: torch.Generator | None = None,
                  k_range: tuple[int, int] = HOOK_K_RANGE, k_eval: int = HOOK_K_EVAL) -> int:
    """The random-k rule: uniform integer in ``k_range`` (inclusive) drawn from ``generator``
    when training, else ``k_eval``."""
    if not training:
        return k_eval
    return int(torch.randint(k_range[0], k_range[1] + 1, (1,), generator=generator))


# ---------------------------------------------------------------------------------------------
# personalised residual field (pre-training)
# ---------------------------------------------------------------------------------------------
class PersonalizedField(nn.Module):
    """Per-identity residual field used during identity-free pre-training (METHOD §3-4).

    Its own tri-planes and a smaller bias-free ReLU MLP (two hidden layers of ``hidden``):
      * ``kind="face"``: MLP(36 + 32 + 6 -> 32 -> 32 -> 10), same layout as the face UMF
        (Δxyz ×0.01, Δquat, Δscale); audio and expression enter ungated.
      * ``kind="mouth"``: MLP(36 + 32 + 3 -> 16 -> 16 -> 3), Δxyz ×0.01 with x, z /5 like the
        mouth UMF (no scaler).
    forward(xyz (N, 3), audio (32,) | (B, 32), cond) -> :class:`Motion`; ``cond`` is the
    expression (6,) for the face or the hook (3,) for the mouth. Add with ``umf_out.plus(res)``.
    """

    def __init__(self, kind: str = "face", planes: TriPlaneConfig | None = None,
                 hidden: int | None = None, audio_dim: int = 32) -> None:
        super().__init__()
        if kind not in ("face", "mouth"):
            raise ValueError(f"kind must be 'face' or 'mouth', got {kind!r}")
        self.kind = kind
        self.encoder = TriPlaneEncoder(planes or (FACE_PLANES if kind == "face" else MOUTH_PLANES))
        e = self.encoder.out_dim
        if kind == "face":
            hidden = hidden or 32
            self.mlp = MLP([e + audio_dim + FaceFieldConfig.expr_dim, hidden, hidden, 10])
        else:
            hidden = hidden or 16
            self.mlp = MLP([e + audio_dim + MouthFieldConfig.hook_dim, hidden, hidden, 3])

    def forward(self, xyz: Tensor, audio: Tensor, cond: Tensor) -> Motion:
        enc = self.encoder(xyz)
        audio, squeeze = _batch(audio)
        cond, _ = _batch(cond.to(enc.dtype))
        b, n = max(audio.shape[0], cond.shape[0]), enc.shape[0]
        out = self.mlp(torch.cat([enc.expand(b, n, -1), audio[:, None, :].expand(b, n, -1),
                                  cond[:, None, :].expand(b, n, -1)], -1))
        if squeeze:
            out = out[0]
        if self.kind == "face":
            d_xyz, d_quat, d_scale = _split_face_out(out, FaceFieldConfig.xyz_scale)
            return Motion(d_xyz=d_xyz, d_quat=d_quat, d_scale=d_scale)
        return Motion(d_xyz=out * mouth_axis_weights(MouthFieldConfig(), out))


# ---------------------------------------------------------------------------------------------
# motion aligner (adaptation)
# ---------------------------------------------------------------------------------------------
class MotionAligner(nn.Module):
    """Per-identity alignment of the UMF to a new face (METHOD §3).

    forward(xyz (N, 3) m) -> (p_xyz (N, 3) m, p_scale (N, 3)):
    ``out = MLP(36 -> 32 -> 6)(planes(xyz))`` (bias-free, ReLU, so the aligner starts near the
    identity), ``p_xyz = out[:, 0:3] * 0.01`` shifts where the UMF is queried,
    ``p_scale = 1 + 0.25 * tanh(out[:, 3:6] / 5)`` scales the face Δxyz per axis. p_scale is
    additionally clamped to [0.75 + 1e-6, 1.25 - 1e-6] so it stays *strictly* inside
    (0.75, 1.25) even where float32 tanh saturates to exactly ±1.
    """

    def __init__(self, planes: TriPlaneConfig = FACE_PLANES, hidden: int = 32,
                 xyz_scale: float = 0.01, scale_range: float = 0.25,
                 temperature: float = 5.0) -> None:
        super().__init__()
        self.encoder = TriPlaneEncoder(planes)
        self.mlp = MLP([self.encoder.out_dim, hidden, 6])
        self.xyz_scale = xyz_scale
        self.scale_range = scale_range
        self.temperature = temperature

    def forward(self, xyz: Tensor) -> tuple[Tensor, Tensor]:
        out = self.mlp(self.encoder(xyz))
        p_xyz = out[..., 0:3] * self.xyz_scale
        p_scale = 1.0 + self.scale_range * torch.tanh(out[..., 3:6] / self.temperature)
        eps = 1e-6
        p_scale = p_scale.clamp(1.0 - self.scale_range + eps, 1.0 + self.scale_range - eps)
        return p_xyz, p_scale


def aligned_motion(field: Callable[[Tensor, Tensor, Tensor], Motion],
                   aligner: MotionAligner | None, xyz: Tensor, audio_code: Tensor,
                   cond: Tensor) -> Motion:
    """Any field with the aligner: ``field(xyz + p_xyz, audio, cond).d_xyz * p_scale`` (per axis).

    Δquat / Δscale / gates come from the shifted query unchanged; the returned :class:`Motion`
    carries ``p_xyz`` / ``p_scale`` for the regularisers. ``aligner=None`` (before the aligner
    switches on) gives the plain field output.
    """
    if aligner is None:
        return field(xyz, audio_code, cond)
    p_xyz, p_scale = aligner(xyz)
    m = field(xyz + p_xyz, audio_code, cond)
    return replace(m, d_xyz=m.d_xyz * p_scale, p_xyz=p_xyz, p_scale=p_scale)


# ---------------------------------------------------------------------------------------------
# complete UMF branches (encoders + field), the unit that is pre-trained, EMA-averaged, saved
# ---------------------------------------------------------------------------------------------
class FaceUMF(nn.Module):
    """Face branch of the Universal Motion Field: its own AudioEncoder, the ExpressionEncoder and
    the :class:`FaceMotionField`.

    encode(audio_win (B, 8, 16, D) | (8, 16, D), aus (…, 5), blink (…,)) -> (audio (…, 32),
    expr (…, 6)); forward(xyz (N, 3), audio_win, aus, blink) -> :class:`Motion`. Use
    ``encode`` + ``field`` directly to share the codes with personalised fields / the aligner.
    """

    def __init__(self, audio: AudioConfig = AudioConfig(),
                 field: FaceFieldConfig = FaceFieldConfig(), code_dim: int = 0,
                 code_features: int = 16) -> None:
        super().__init__()
        self.audio = AudioEncoder(audio)
        self.expr = ExpressionEncoder()
        self.code = CodeEncoder(code_dim, code_features) if code_dim else None
        if code_dim:
            field = replace(field, audio_dim=field.audio_dim + code_features, code_dim=code_dim)
        self.field = FaceMotionField(field)

    def encode(self, audio_win: Tensor, aus: Tensor, blink: Tensor,
               use_attention: bool = True, code: Tensor | None = None) -> tuple[Tensor, Tensor]:
        single = audio_win.dim() == 3
        a = self.audio(audio_win[None] if single else audio_win, use_attention)
        a = a[0] if single else a
        return with_code(self.code, a, code), self.expr(aus, blink)

    def forward(self, xyz: Tensor, audio_win: Tensor, aus: Tensor, blink: Tensor,
                use_attention: bool = True, code: Tensor | None = None) -> Motion:
        a, e = self.encode(audio_win, aus, blink, use_attention, code)
        return self.field(xyz, a, e, code)


class MouthUMF(nn.Module):
    """Mouth branch of the Universal Motion Field: its own AudioEncoder and the
    :class:`MouthMotionField` (branches are pre-trained in separate passes, METHOD §4).

    encode(audio_win (B, 8, 16, D) | (8, 16, D)) -> (…, 32);
    forward(xyz (N, 3), audio_win, hook (3,) | (B, 3)) -> :class:`Motion`.
    """

    def __init__(self, audio: AudioConfig = AudioConfig(),
                 field: MouthFieldConfig = MouthFieldConfig(), code_dim: int = 0,
                 code_features: int = 16) -> None:
        super().__init__()
        self.audio = AudioEncoder(audio)
        self.code = CodeEncoder(code_dim, code_features) if code_dim else None
        if code_dim:
            field = replace(field, audio_dim=field.audio_dim + code_features, code_dim=code_dim)
        self.field = MouthMotionField(field)

    def encode(self, audio_win: Tensor, use_attention: bool = True,
               code: Tensor | None = None) -> Tensor:
        single = audio_win.dim() == 3
        a = self.audio(audio_win[None] if single else audio_win, use_attention)
        return with_code(self.code, a[0] if single else a, code)

    def forward(self, xyz: Tensor, audio_win: Tensor, hook: Tensor,
                use_attention: bool = True, code: Tensor | None = None) -> Motion:
        return self.field(xyz, self.encode(audio_win, use_attention, code), hook, code)


def with_code(encoder: CodeEncoder | None, audio_code: Tensor, code: Tensor | None) -> Tensor:
    """The field's audio input: ``audio_code`` (…, 32), followed by the encoded mouth code
    when the branch has a code encoder (then ``code`` (…, 4) is required)."""
    if encoder is None:
        return audio_code
    if code is None:
        raise ValueError("this motion field takes a mouth code: pass code=(…, 4)")
    c = encoder(code.to(audio_code))
    if c.dim() < audio_code.dim():
        c = c.expand(*audio_code.shape[:-1], c.shape[-1])
    return torch.cat([audio_code, c], -1)


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def negative_contrast_loss(d_self: Tensor, d_others: Sequence[Tensor], eps: float = 1e-24) -> Tensor:
    """Identity-specific motions must not share directions (METHOD §4), scale-free.

    METHOD's form ``mean ReLU(<d_self, d_other>)`` scales with the square of the offsets; at
    CPU scale offsets are ~1e-3 head units, so that term is ~1e-7 and does nothing. Here each
    pair is divided by the (detached) root-mean-square lengths of the two fields, so the value
    is a mean clipped cosine-like agreement in [0, 1] whatever the motion's size, and its
    gradient pushes directions apart without rewarding smaller motion.

    Args:
        d_self: (N, 3) Δxyz of the current identity's personalised field at its Gaussians.
        d_others: list of (N, 3) Δxyz of every other identity's personalised field evaluated at
            the same Gaussians with the same inputs (detached here).
        eps: added to the squared-length product (fields that do not move give 0).
    Returns:
        scalar ``mean_m mean_n ReLU(<s_n, o_mn>) / (rms(s) rms(o_m))``; 0 for no others.
    """
    if len(d_others) == 0:
        return d_self.sum() * 0.0
    others = torch.stack([d.detach() for d in d_others], 0)          # (M, N, 3)
    dots = F.relu((d_self[None] * others).sum(-1)).mean(-1)          # (M,)
    ms_self = d_self.detach().pow(2).sum(-1).mean()
    ms_other = others.pow(2).sum(-1).mean(-1)                        # (M,)
    return (dots / (ms_self * ms_other + eps).sqrt()).mean()


def motion_magnitude_loss(motion: Motion) -> Tensor:
    """``mean|Δxyz| + mean|Δquat| + mean|Δscale| + mean|p_xyz|`` over the terms present
    (METHOD §5, weight 1e-5 in the training loop)."""
    terms = [motion.d_xyz, motion.d_quat, motion.d_scale, motion.p_xyz]
    return sum(t.abs().sum() / max(1, t.numel()) for t in terms if t is not None)


# ---------------------------------------------------------------------------------------------
# EMA of UMF weights
# ---------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a module's parameters (decay 0.995, METHOD §4).

    ``shadow = decay * shadow + (1 - decay) * param`` at each :meth:`update`, starting from the
    weights at construction. After t updates with weights θ_1..θ_t:
    ``shadow = decay^t θ_0 + Σ_i (1 - decay) decay^(t-i) θ_i``.

    :meth:`averaged_state_dict` is what to save as "EMA weights": the model's state dict with
    every parameter replaced by its average (buffers current). :meth:`state_dict` /
    :meth:`load_state_dict` (re)store the EMA itself for resuming.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {n: p.detach().clone()
                                          for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current parameters into the average."""
        for n, p in model.named_parameters():
            self.shadow[n].mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)
        self.num_updates += 1

    def averaged_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """Model state dict with averaged parameters (detached clones; load into the model)."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for n, v in self.shadow.items():
            sd[n] = v.detach().clone()
        return sd

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averages."""
        for n, p in model.named_parameters():
            p.copy_(self.shadow[n])

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the averages into ``model`` (e.g. for validation), then restore."""
        raw = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(raw[n])

    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensors for resuming: ``shadow.<name>``, ``decay``, ``num_updates``."""
        out = {f"shadow.{n}": v.clone() for n, v in self.shadow.items()}
        out["decay"] = torch.tensor(self.decay, dtype=torch.float64)
        out["num_updates"] = torch.tensor(self.num_updates, dtype=torch.long)
        return out

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        for n in self.shadow:
            self.shadow[n] = sd[f"shadow.{n}"].clone().to(self.shadow[n])
        self.decay = float(sd.get("decay", torch.tensor(self.decay)))
        self.num_updates = int(sd.get("num_updates", torch.tensor(self.num_updates)))
