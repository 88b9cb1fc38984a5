"""The talking-head model: face and inside-mouth Gaussians moved by motion fields, rendered
and composited over the recorded torso/background (METHOD.md §2-3).

Pieces:

* :class:`UMF` -- the Universal Motion Field (face and mouth branches with their audio and
  expression encoders); shared by every identity in pre-training, fine-tuned per avatar.
* :class:`Identity` -- what belongs to one person: face and mouth :class:`GaussianSet` s, and
  either personalised residual fields (pre-training) or motion aligners (adaptation).
* :func:`face_motion` / :func:`mouth_motion` -- per-Gaussian offsets for one frame.
* :func:`render_branch` -- rasterize one branch (premultiplied colour + alpha, optional
  extra per-Gaussian channels such as the gate magnitudes).
* :func:`composite` -- ``mouth = C_m + BG (1 - A_m)``, ``out = C_f + mouth (1 - A_f)``.

Frames are conditioned by a :class:`FrameCond`: camera, 8-frame audio window, expression.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.gaussians import FACE_INIT, MOUTH_INIT, GaussianConfig, GaussianSet
from core.model.motion_field import (AudioConfig, FaceUMF, Motion, MotionAligner, MouthUMF,
                               PersonalizedField, aligned_motion, face_mouth_hook, HOOK_K_EVAL, MOUTH_PLANES,
                               mouth_axis_weights, bound_offset)
from core.raster.projection import camera_center
from core.raster.sh import sh_to_rgb
from core.raster.render import RenderOutput, rasterize


@dataclass
class FrameCond:
    """Everything that drives one rendered frame.

    viewmat: (4, 4) world-to-camera; K: (3, 3) intrinsics at (width, height) pixels.
    audio_win: (8, 16, D) audio feature windows of frames [i-4, i+4).
    expr: (6,) expression input (AU01, 04, 05, 06, 07 stand-ins, blink); blink only for
        models that take a mouth code (:func:`core.data.mouth_code.mouth_free_expression`).
    mouth: (4,) per-person normalised mouth code (tracked while adapting, predicted from the
        audio when driving), or None for models without a mouth-code input.
    """

    viewmat: Tensor
    K: Tensor
    width: int
    height: int
    audio_win: Tensor
    expr: Tensor
    mouth: Tensor | None = None


class UMF(nn.Module):
    """Universal Motion Field: ``face`` (:class:`FaceUMF`) and ``mouth`` (:class:`MouthUMF`).

    Args:
        audio_dim: per-step audio feature size D (80 for log-mel, 1024 for HuBERT-large).
        code_dim: size of the mouth-code input of both branches (4, see
            :mod:`core.data.mouth_code`), or 0 for a field driven by audio features alone.
    """

    def __init__(self, audio_dim: int = 80, code_dim: int = 0) -> None:
        super().__init__()
        self.audio_dim = audio_dim
        self.code_dim = code_dim
        self.face = FaceUMF(AudioConfig(feat_dim=audio_dim), code_dim=code_dim)
        self.mouth = MouthUMF(AudioConfig(feat_dim=audio_dim), code_dim=code_dim)


    def load_without_code(self, state: dict[str, Tensor]) -> None:
        """Load the state of a UMF *without* the mouth-code input into this one (which has
        it): every shared tensor is copied; each field's first layer gets zero weights on the
        new code-feature inputs (placed after the 32 audio-code inputs), and the audio gates'
        new rows keep their initialisation; the code encoders and bases stay as initialised
        (the bases output zero). So the fields compute exactly what the prior did until the
        code path is trained."""
        own = self.state_dict()
        out = {}
        for k, v in own.items():
            old = state.get(k)
            if old is None:
                if ".code" not in k:
                    raise KeyError(f"prior lacks {k}")
                out[k] = v
            elif old.shape == v.shape:
                out[k] = old
            elif k.endswith("field.mlp.0.weight"):            # (H, enc + 32 + cond)
                enc = (self.face if k.startswith("face.") else self.mouth).field.encoder.out_dim
                cut = enc + AudioConfig().code_dim
                extra = v.shape[1] - old.shape[1]
                out[k] = torch.cat([old[:, :cut], old.new_zeros(old.shape[0], extra), old[:, cut:]], 1)
            elif k.endswith("audio_gate.2.weight"):           # (32 + code features, hidden)
                out[k] = torch.cat([old, v[old.shape[0]:]], 0)
            else:
                raise ValueError(f"cannot adapt {k}: prior {tuple(old.shape)}, model {tuple(v.shape)}")
        self.load_state_dict(out)


class Identity(nn.Module):
    """One person's Gaussians and per-identity fields.

    Args:
        sh_degree: max SH degree of both Gaussian sets (2 in pre-training, 1 in adaptation).
        personalised: add per-identity residual fields (pre-training, METHOD §3).
        aligners: add per-identity motion aligners (adaptation, METHOD §3).
        field_audio_dim: size of the audio input the personalised fields share with the UMF
            (32; 48 when the UMF takes a mouth code: ``UMF.face.field.config.audio_dim``).
    """

    def __init__(self, sh_degree: int = 1, personalised: bool = False,
                 aligners: bool = False, field_audio_dim: int = 32) -> None:
        super().__init__()
        self.face = GaussianSet(0, GaussianConfig(max_sh_degree=sh_degree))
        self.mouth = GaussianSet(0, GaussianConfig(max_sh_degree=sh_degree))
        self.face_personal = PersonalizedField("face", audio_dim=field_audio_dim) if personalised else None
        self.mouth_personal = PersonalizedField("mouth", audio_dim=field_audio_dim) if personalised else None
        self.face_aligner = MotionAligner() if aligners else None
        self.mouth_aligner = MotionAligner(MOUTH_PLANES) if aligners else None

    @torch.no_grad()
    def init_gaussians(self, canonical: Tensor | None = None,
                       generator: torch.Generator | None = None,
                       mouth_points: int = MOUTH_INIT.n,
                       face_points: int = FACE_INIT.n) -> "Identity":
        """METHOD §2 initialisation: ``face_points`` (2000) face points uniform in ±0.1,
        ``mouth_points`` (5000) mouth points in a box half that size. The mouth box is
        centred on the clip's inner lips, 2 cm behind them, when the canonical FaceMesh shape
        (478, 3) is given (our origin is the landmark centroid, not the reference's 3DMM
        origin), else at (0, +0.05, 0) (below centre)."""
        from core.data.masks import INNER_LIPS

        self.face.init_box(replace(FACE_INIT, n=face_points), generator)
        center = MOUTH_INIT.center
        if canonical is not None:
            c = canonical[list(INNER_LIPS)].mean(0)
            center = (float(c[0]), float(c[1]), float(c[2]) + 0.02)
        self.mouth.init_box(replace(MOUTH_INIT, n=mouth_points, center=center), generator)
        return self


def face_motion(umf: UMF, ident: Identity, cond: FrameCond, use_aligner: bool = True,
                use_personal: bool = True, xyz: Tensor | None = None) -> Motion:
    """Face Gaussian offsets for one frame: UMF (through the aligner if it has one and
    ``use_aligner``) plus the personalised residual if present and ``use_personal``.

    xyz: (N, 3) query positions (default the identity's face means)."""
    xyz = ident.face.means if xyz is None else xyz
    a, e = umf.face.encode(cond.audio_win, cond.expr[:5], cond.expr[5], code=cond.mouth)
    aligner = ident.face_aligner if use_aligner else None
    m = aligned_motion(partial(umf.face.field, code=cond.mouth), aligner, xyz, a, e)
    if use_personal and ident.face_personal is not None:
        m = m.plus(ident.face_personal(xyz, a, e))
    return m


def personal_face_offsets(fields: list[PersonalizedField], umf: UMF, xyz: Tensor,
                          cond: FrameCond) -> list[Tensor]:
    """Δxyz (N, 3) of other identities' personalised face fields at ``xyz`` (no gradient):
    the negatives of the contrast loss (METHOD §4)."""
    with torch.no_grad():
        a, e = umf.face.encode(cond.audio_win, cond.expr[:5], cond.expr[5], code=cond.mouth)
        return [f(xyz, a, e).d_xyz for f in fields]


def hook_from_face(face: Motion, k: int) -> Tensor:
    """(3,) face-mouth hook from the face motion's vertical offsets (detached)."""
    return face_mouth_hook(face.d_xyz[..., 1], k)


def mouth_motion(umf: UMF, ident: Identity, cond: FrameCond, hook: Tensor,
                 use_aligner: bool = True, use_personal: bool = True,
                 xyz: Tensor | None = None) -> Motion:
    """Mouth Gaussian offsets for one frame (UMF mouth + aligner / personalised residual)."""
    xyz = ident.mouth.means if xyz is None else xyz
    a = umf.mouth.encode(cond.audio_win, code=cond.mouth)
    aligner = ident.mouth_aligner if use_aligner else None
    m = aligned_motion(partial(umf.mouth.field, code=cond.mouth), aligner, xyz, a, hook)
    if use_personal and ident.mouth_personal is not None:
        m = m.plus(ident.mouth_personal(xyz, a, hook))
    return m


def personal_mouth_offsets(fields: list[PersonalizedField], umf: UMF, xyz: Tensor,
                           cond: FrameCond, hook: Tensor) -> list[Tensor]:
    """Δxyz (N, 3) of other identities' personalised mouth fields (no gradient)."""
    with torch.no_grad():
        a = umf.mouth.encode(cond.audio_win, code=cond.mouth)
        return [f(xyz, a, hook).d_xyz for f in fields]


def render_branch(gs: GaussianSet, motion: Motion | None, cond: FrameCond,
                  background: Tensor | None = None, extra: Tensor | None = None) -> RenderOutput:
    """Rasterize one Gaussian set, deformed by ``motion`` (None = canonical).

    Returns colours premultiplied by alpha when ``background`` is None (zeros), else over
    ``background`` (3,). ``extra``: (N, E) per-Gaussian features rendered as channels 3.. of
    ``image`` (over a zero background).
    """
    act = gs.activated(motion)
    rgb = sh_to_rgb(act.sh_degree, act.sh, act.means, camera_center(cond.viewmat.to(act.means)))
    feats = rgb if extra is None else torch.cat([rgb, extra.to(rgb)], 1)
    bg = None
    if background is not None:
        bg = torch.cat([background.to(rgb), rgb.new_zeros(feats.shape[1] - 3)])
    return rasterize(act.means, act.quats, act.scales, act.opacities, feats, cond.viewmat,
                     cond.K, cond.width, cond.height, background=bg)


def dilate_alpha(alpha: Tensor, kernel: int) -> Tensor:
    """(H, W, 1) alpha max-pooled with a ``kernel x kernel`` window (odd, >= 1)."""
    if kernel <= 1:
        return alpha
    a = alpha.permute(2, 0, 1)[None]
    return F.max_pool2d(a, kernel, stride=1, padding=kernel // 2)[0].permute(1, 2, 0)


def mouth_dilation(res: int) -> int:
    """METHOD §2's 13x13 mouth-alpha dilation at 512², scaled to ``res`` (odd)."""
    k = max(1, round(13 * res / 512))
    return k if k % 2 == 1 else k + 1


def composite(face: RenderOutput, mouth: RenderOutput, plate: Tensor,
              dilate: int = 1) -> Tensor:
    """Final frame (H, W, 3) from premultiplied face and mouth renders over ``plate`` (H, W, 3):
    ``mouth_img = C_m + plate (1 - A_m')``, ``out = C_f + mouth_img (1 - A_f)``, with
    ``A_m'`` the mouth alpha dilated by ``dilate`` (inference: :func:`mouth_dilation`)."""
    a_m = dilate_alpha(mouth.alpha, dilate)
    mouth_img = mouth.image[..., :3] + plate * (1.0 - a_m)
    return face.image[..., :3] + mouth_img * (1.0 - face.alpha)


@torch.no_grad()
def render_frame(umf: UMF, ident: Identity, cond: FrameCond, plate: Tensor,
                 hook_k: int = HOOK_K_EVAL, dilate: int | None = None) -> Tensor:
    """Inference: the composited (H, W, 3) frame in [0, 1] for one conditioning."""
    fm = face_motion(umf, ident, cond)
    mm = mouth_motion(umf, ident, cond, hook_from_face(fm, hook_k))
    face = render_branch(ident.face, fm, cond)
    mouth = render_branch(ident.mouth, mm, cond)
    k = mouth_dilation(cond.width) if dilate is None else dilate
    return composite(face, mouth, plate, k).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# inference: per-avatar constants computed once, motion fields for many frames per call
# ---------------------------------------------------------------------------------------------
@dataclass
class DrivenFrames:
    """Inputs of B consecutive driven frames.

    audio_win: (B, 8, 16, D) audio windows; expr: (B, 6); mouth: (B, 4) or None.
    """

    audio_win: Tensor
    expr: Tensor
    mouth: Tensor | None = None


@dataclass
class FrameMotions:
    """Deformed, activated Gaussians of B frames (leading dimension B).

    face_means (B, N, 3), face_quats (B, N, 4) unit, face_scales (B, N, 3) activated;
    mouth_means (B, M, 3) (the mouth's rotations and scales do not move: ``mouth_quats``
    (M, 4), ``mouth_scales`` (M, 3) of :class:`InferenceHead`).
    """

    face_means: Tensor
    face_quats: Tensor
    face_scales: Tensor
    mouth_means: Tensor


class InferenceHead:
    """An adapted model prepared for driving: everything of the fields that depends only
    on the Gaussians' canonical positions (tri-plane features, aligner shifts and scales,
    gates, code bases, the positional part of every first layer) is computed once, and the
    audio-driven part is evaluated for many frames per call (:meth:`motions`).

    Gives the same motions as :func:`face_motion` / :func:`mouth_motion` (up to float32
    summation order). Identities with personalised residual fields (pre-training) are not
    supported: :meth:`supports` says whether one can be used.
    """

    def __init__(self, umf: UMF, ident: Identity, hook_k: int = HOOK_K_EVAL) -> None:
        if not self.supports(ident):
            raise ValueError("InferenceHead needs an identity without personalised fields")
        self.umf, self.ident, self.hook_k = umf, ident, hook_k
        with torch.no_grad():
            self._prepare_face()
            self._prepare_mouth()

    @staticmethod
    def supports(ident: Identity) -> bool:
        return ident.face_personal is None and ident.mouth_personal is None

    def _query(self, xyz: Tensor, aligner: MotionAligner | None) -> tuple[Tensor, Tensor | None]:
        if aligner is None:
            return xyz, None
        p_xyz, p_scale = aligner(xyz)
        return xyz + p_xyz, p_scale

    def _prepare_face(self) -> None:
        f = self.umf.face.field
        g = self.ident.face
        xyz, self.face_p_scale = self._query(g.means, self.ident.face_aligner)
        enc = f.encoder(xyz)                                            # (N, E)
        gates = torch.cat([f.audio_gate(enc), F.relu(f.eye_gate(enc))], 1)   # (N, A + 6)
        w1 = f.mlp[0].weight                                            # (H, E + A + 6)
        e = enc.shape[1]
        self.face_gates = gates
        self.face_pre = enc @ w1[:, :e].T                               # (N, H)
        self.face_w1_cond = w1[:, e:].T                                 # (A + 6, H)
        self.face_rest = list(f.mlp)[1:]
        self.face_basis = None
        if f.code_basis is not None:
            cb = f.code_basis
            self.face_basis = cb.mlp(enc).reshape(enc.shape[0], 3, cb.code_dim)
        self.face_quats_raw = g.quats_raw
        self.face_scales_raw = g.scales_raw

    def _prepare_mouth(self) -> None:
        f = self.umf.mouth.field
        g = self.ident.mouth
        xyz, self.mouth_p_scale = self._query(g.means, self.ident.mouth_aligner)
        enc = f.encoder(xyz)                                            # (M, E)
        e = enc.shape[1]
        w1 = f.mlp[0].weight                                            # (H, E + A + 3)
        self.mouth_pre = enc @ w1[:, :e].T                              # (M, H)
        self.mouth_w1_cond = w1[:, e:].T                                # (A + 3, H)
        self.mouth_rest = list(f.mlp)[1:]
        s1 = f.scaler[0].weight                                         # (Hs, E + 3)
        self.scaler_pre = enc @ s1[:, :e].T                             # (M, Hs)
        self.scaler_w1_hook = s1[:, e:].T                               # (3, Hs)
        self.scaler_rest = list(f.scaler)[1:]
        self.mouth_axis = mouth_axis_weights(f.config, enc)
        self.mouth_basis = None
        if f.code_basis is not None:
            cb = f.code_basis
            self.mouth_basis = cb.mlp(enc).reshape(enc.shape[0], 3, cb.code_dim)
        act = g.activated()
        self.mouth_quats, self.mouth_scales = act.quats, act.scales

    @staticmethod
    def _run(h: Tensor, layers: list[nn.Module]) -> Tensor:
        """The layers after an MLP's first linear one (its activation first)."""
        for m in layers:
            h = m(h)
        return h

    @torch.no_grad()
    def motions(self, frames: DrivenFrames) -> FrameMotions:
        """Activated Gaussians of the B frames (one batched evaluation of both fields)."""
        umf = self.umf
        code = frames.mouth
        # face: h1 = enc W_e + (gates * [audio, expr]) W_c, the first term computed once
        a, e = umf.face.encode(frames.audio_win, frames.expr[:, :5], frames.expr[:, 5], code=code)
        cond = torch.cat([a, e], 1)                                     # (B, A + 6)
        w = cond[:, :, None] * self.face_w1_cond[None]                  # (B, A + 6, H)
        out = self._run(self.face_pre + self.face_gates @ w, self.face_rest)   # (B, N, 10)
        xs = umf.face.field.config.xyz_scale
        d_xyz = out[..., 0:3] * xs
        if self.face_basis is not None:
            d_xyz = d_xyz + torch.einsum("nkc,bc->bnk", self.face_basis, code.to(d_xyz)) * xs
        if self.face_p_scale is not None:
            d_xyz = d_xyz * self.face_p_scale
        g = self.ident.face
        face_means = g.means + d_xyz
        face_quats = F.normalize(self.face_quats_raw + out[..., 3:7], dim=-1)
        face_scales = F.softplus(self.face_scales_raw + out[..., 7:10])
        # mouth: conditioned on the face's hook of the same frame
        hook = face_mouth_hook(d_xyz[..., 1], self.hook_k).to(a)      # (B, 3)
        am = umf.mouth.encode(frames.audio_win, code=code)              # (B, A)
        cm = torch.cat([am, hook], 1) @ self.mouth_w1_cond              # (B, H)
        d = self._run(self.mouth_pre + cm[:, None], self.mouth_rest)     # (B, M, 3)
        s = self._run(self.scaler_pre + (hook @ self.scaler_w1_hook)[:, None], self.scaler_rest)
        s = 2.0 * torch.sigmoid(s)
        d = d * self.mouth_axis * s
        if self.mouth_basis is not None:
            d = d + torch.einsum("nkc,bc->bnk", self.mouth_basis, code.to(d)) * self.mouth_axis
        d = bound_offset(d, umf.mouth.field.max_offset)
        if self.mouth_p_scale is not None:
            d = d * self.mouth_p_scale
        return FrameMotions(face_means=face_means, face_quats=face_quats,
                            face_scales=face_scales, mouth_means=self.ident.mouth.means + d)

    @torch.no_grad()
    def render(self, motions: FrameMotions, b: int, viewmat: Tensor, K: Tensor, plate: Tensor,
               dilate: int | None = None, tile: int = 8) -> Tensor:
        """Frame ``b`` of ``motions`` over the (H, W, 3) ``plate`` (uint8, or float in
        [0, 1] as :func:`render_frame` takes it): the (H, W, 3) uint8 frame, equal to
        ``round(255 * render_frame(...))`` with the plate in [0, 1].

        Only the box that the face and the (dilated) mouth cover is composited; the rest of
        the frame is the plate itself (where both alphas are 0 the formula gives the plate).
        ``tile``: rasterizer tile edge (see :func:`core.raster.render.rasterize`)."""
        H, W = plate.shape[:2]
        cam = camera_center(viewmat.to(torch.float32))
        outs = []
        for gs, means, quats, scales in (
                (self.ident.face, motions.face_means[b], motions.face_quats[b], motions.face_scales[b]),
                (self.ident.mouth, motions.mouth_means[b], self.mouth_quats, self.mouth_scales)):
            rgb = sh_to_rgb(gs.sh_degree, gs.sh, means, cam)
            outs.append(rasterize(means, quats, scales, gs.opacities, rgb, viewmat, K, W, H,
                                  tile=tile))
        k = mouth_dilation(W) if dilate is None else dilate
        box = _union(_nonzero_box(outs[0].alpha, 0), _nonzero_box(outs[1].alpha, k // 2))
        unit = plate.is_floating_point()
        frame = (plate.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8) if unit else plate.clone()
        if box is None:
            return frame
        y0, y1, x0, x1 = box
        face, mouth = (RenderOutput(image=o.image[y0:y1, x0:x1], alpha=o.alpha[y0:y1, x0:x1],
                                    depth=o.depth, means2d=o.means2d, radii=o.radii,
                                    visible=o.visible) for o in outs)
        crop = plate[y0:y1, x0:x1].float() if unit else plate[y0:y1, x0:x1].float() / 255.0
        img = composite(face, mouth, crop, k).clamp(0.0, 1.0)
        frame[y0:y1, x0:x1] = (img * 255.0).round().to(torch.uint8)
        return frame


Box = tuple[int, int, int, int]


def _nonzero_box(alpha: Tensor, margin: int) -> Box | None:
    """(y0, y1, x0, x1) bounding the pixels of (H, W, 1) ``alpha`` > 0, grown by ``margin``
    pixels and clipped to the image; None if all are 0."""
    a = alpha[..., 0] > 0
    rows = torch.nonzero(a.any(1)).squeeze(1)
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(a.any(0)).squeeze(1)
    H, W = a.shape
    return (max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, H),
            max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, W))


def _union(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])
