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

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.gaussians import FACE_INIT, MOUTH_INIT, GaussianConfig, GaussianSet
from core.model.motion_field import (AudioConfig, FaceUMF, Motion, MotionAligner, MouthUMF,
                               PersonalizedField, aligned_motion, face_mouth_hook, HOOK_K_EVAL, MOUTH_PLANES)
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
                       generator: torch.Generator | None = None) -> "Identity":
        """METHOD §2 initialisation: 2000 face points uniform in ±0.1, 5000 mouth points in a
        box half that size. The mouth box is centred on the clip's inner lips, 2 cm behind
        them, when the canonical FaceMesh shape (478, 3) is given (our origin is the landmark
        centroid, not the reference's 3DMM origin), else at (0, +0.05, 0) (below centre)."""
        from core.data.masks import INNER_LIPS

        self.face.init_box(FACE_INIT, generator)
        center = MOUTH_INIT.center
        if canonical is not None:
            c = canonical[list(INNER_LIPS)].mean(0)
            center = (float(c[0]), float(c[1]), float(c[2]) + 0.02)
        self.mouth.init_random(MOUTH_INIT.n, center, MOUTH_INIT.half_extent, generator)
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
