"""One optimisation step of each training stage (face, mouth, fuse), shared by pre-training
and adaptation (METHOD.md §4-5), and the frame tensors they read.

Targets:

* **face**: the head (face + hair) over a flat background, the mouth interior set to
  background, so face Gaussians become transparent inside the mouth. The flat colour is drawn
  at random every step (a transparent pixel cannot pass for a background-coloured one, so
  no "delete Gaussians of the background colour" rule is needed). The head's edge is soft
  (:func:`core.train.objectives.soft_edge`, the same width in the picture at any resolution)
  and the opacity term is averaged over the head and over the rest separately, so the head
  is opaque up to its edge.
* **mouth**: inside the lips box, the mouth interior over the flat background (mouth
  Gaussians learn teeth/tongue/cavity and stay transparent elsewhere in the box), plus an
  alpha penalty outside the lips box.
* **fuse**: the full composited frame against the recorded frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core.data.crop import crop_intrinsics
from core.data.dataset import ProcessedClip
from core.device import host_values
from core.model.gaussians import GaussianLR, GaussianSet
from core.model.head import (FrameCond, Identity, UMF, composite, face_motion, hook_from_face,
                       mouth_motion, render_branch)
from core.data.masks import Label, torso_plate
from core.model.motion_field import (HOOK_K_EVAL, CodeBasis, CodeEncoder, Motion, TriPlaneEncoder,
                                     audio_windows, motion_magnitude_loss)
from core.train.objectives import (ALPHA_WEIGHT, GATE_WEIGHT, LIPS_WEIGHT, MOTION_WEIGHT,
                                   MOUTH_OUTSIDE_WEIGHT, alpha_loss, box_mask, box_photometric,
                                   edge_band, gate_loss, masked_l1, photometric, soft_edge)


#: learning-rate multiplier of the mouth-code path over the field MLPs: it is new for every
#: person (or small in a prior) and linear in the code, so it can move faster
CODE_LR_MULT = 5.0


@dataclass
class TrainFrames:
    """Frames of one clip at the training resolution, ready for the stage steps.

    images, plates: (n, H, W, 3) float32 [0, 1]; labels: (n, H, W) uint8 (Label);
    viewmats: (n, 4, 4); K: (3, 3) at (H, W); expr: (n, 6); lips_box: (n, 4) int pixels;
    audio: (m, 16, D) per-frame audio windows of the utterance these frames belong to;
    index: (n,) positions of these frames in ``audio``; lips_apart, blink: (n,) float
    curriculum signals; mouth_px: (n,) mouth-interior pixels.
    mouth: (n, 4) tracked mouth code; mouth_pred: (n, 4) mouth code predicted from the clip's
    audio (both None without a :class:`core.model.mouth_drive.MouthDrive`).
    """

    images: Tensor
    plates: Tensor
    labels: Tensor
    viewmats: Tensor
    K: Tensor
    expr: Tensor
    lips_box: Tensor
    audio: Tensor
    index: Tensor
    lips_apart: Tensor
    blink: Tensor
    mouth_px: Tensor
    mouth: Tensor | None = None
    mouth_pred: Tensor | None = None

    #: fields read on the host every step (frame sampling, crop boxes, window positions):
    #: they stay on the CPU whatever the training device
    HOST_FIELDS = ("lips_box", "index", "lips_apart", "blink", "mouth_px")

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "TrainFrames":
        """A copy whose pixels and conditioning live on ``device`` (moved once, before the
        loop); :attr:`HOST_FIELDS` stay on the CPU."""
        moved = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            moved[name] = v if v is None or name in self.HOST_FIELDS else v.to(device)
        return TrainFrames(**moved)

    @property
    def res(self) -> int:
        return int(self.images.shape[1])

    @classmethod
    def from_clip(cls, clip: ProcessedClip, frames: Tensor, res: int | None = None,
                  fit_frames: int | None = None,
                  audio_span: tuple[int, int] | None = None, drive=None) -> "TrainFrames":
        """Frames ``frames`` (indices) of ``clip`` resized to ``res`` (default: clip res).

        ``fit_frames``: the model learns from the clip's first ``fit_frames`` frames only.
        Expression inputs and curriculum signals of every returned frame are normalised
        with statistics of those frames, and their audio is featurised on its own, so
        nothing after them changes what the model sees. None (pre-training on whole
        clips): the stored whole-clip features and signals.
        ``audio_span``: ``(start, stop)`` frames whose audio is featurised as one
        utterance for the returned frames (held-out frames: the test span, like new
        audio driving an avatar); default ``(0, fit_frames)``, or the stored features.
        ``drive``: the avatar's :class:`core.model.mouth_drive.MouthDrive`: adds tracked
        mouth codes and codes predicted from the span's audio, keeps only blink in the
        expression input (:func:`core.data.mouth_code.mouth_free_expression`), and re-times
        the span's audio by the drive's audio-video offset.
        """
        res = res or clip.res
        idx = frames.long()
        frames_u8, labels = clip.frames[idx], clip.labels[idx]
        imgs = frames_u8.float() / 255.0
        plates = torch.from_numpy(torso_plate(frames_u8.numpy(), labels.numpy())).float() / 255.0
        scale = res / clip.res
        if res != clip.res:
            imgs = _resize(imgs, res)
            plates = _resize(plates, res)
            labels = F.interpolate(labels[:, None].float(), size=(res, res), mode="nearest")[:, 0].to(torch.uint8)
        K = crop_intrinsics(clip.K, clip.res, res)
        if audio_span is None and fit_frames is not None:
            audio_span = (0, int(fit_frames))
        start = 0 if audio_span is None else int(audio_span[0])
        stop = clip.num_frames if audio_span is None else int(audio_span[1])
        if idx.numel() and (int(idx.min()) < start or int(idx.max()) >= stop):
            raise ValueError(f"frames {int(idx.min())}..{int(idx.max())} lie outside the "
                             f"audio span {start}..{stop}")
        audio = clip.audio_features(audio_span)
        if fit_frames is None:
            expr, signals = clip.expr[idx].clone(), clip.arrays["signals"][idx]
            names = list(clip.manifest["signal_names"])
        else:
            ex = clip.expression(fit_frames)
            expr = torch.from_numpy(ex.model_input())[idx]
            signals, names = torch.from_numpy(ex.values)[idx], list(ex.names)
        mouth = mouth_pred = None
        if drive is not None:
            from core.data.mouth_code import mouth_free_expression
            from core.model.mouth_drive import SAMPLES_PER_FRAME, shift_frames

            m = stop - start
            aligned = shift_frames(m, drive.av_offset, m)   # audio late: read ahead
            audio = audio[aligned]
            wav = clip.arrays["audio"][start * SAMPLES_PER_FRAME: stop * SAMPLES_PER_FRAME]
            mouth_pred = drive.predicted(wav, m)[aligned][idx - start]
            mouth = drive.tracked(clip.arrays["points3d"][idx].numpy())
            expr = torch.from_numpy(mouth_free_expression(expr.numpy()))
        lips = signals[:, names.index("lips_apart")]
        blink = 0.5 * (signals[:, names.index("blink_left")] + signals[:, names.index("blink_right")])
        box = (clip.arrays["lips_box"][idx].float() * scale).round().int()
        return cls(images=imgs, plates=plates, labels=labels, viewmats=clip.viewmats[idx].clone(),
                   K=K, expr=expr, lips_box=box, audio=audio, index=idx - start,
                   lips_apart=lips, blink=blink,
                   mouth_px=(labels == Label.MOUTH).flatten(1).sum(1), mouth=mouth,
                   mouth_pred=mouth_pred)

    def cond(self, j: int, tracked: bool = False) -> FrameCond:
        """Conditioning of frame ``j``. The mouth code is the one predicted from the audio
        unless ``tracked`` (training on the recorded lips); evaluation never sees tracked
        codes."""
        codes = self.mouth if tracked else self.mouth_pred
        return FrameCond(viewmat=self.viewmats[j], K=self.K, width=self.res, height=self.res,
                         audio_win=audio_windows(self.audio, host_values(self.index[j]))[0],
                         expr=self.expr[j], mouth=None if codes is None else codes[j])


def gaussian_optimizer(gs: GaussianSet, colours_and_opacity_only: bool = False) -> torch.optim.Adam:
    """Adam over a Gaussian set with the 3DGS per-parameter rates (head scene extent 0.2 m);
    ``colours_and_opacity_only`` for the fuse stage."""
    groups = gs.param_groups(GaussianLR(), scene_extent=0.2)
    if colours_and_opacity_only:
        groups = [g for g in groups if g["name"] in ("sh_dc", "sh_rest", "opacity_logits")]
    return torch.optim.Adam(groups, lr=0.0, eps=1e-15)


def field_optimizer(module: torch.nn.Module, lr_grid: float, lr_mlp: float,
                    weight_decay: float = 0.0, lr_code: float | None = None) -> torch.optim.AdamW:
    """AdamW over a motion field: tri-plane grids at ``lr_grid``, the mouth-code path
    (:class:`CodeEncoder`, :class:`CodeBasis`) at ``lr_code`` (default ``CODE_LR_MULT x
    lr_mlp``), everything else at ``lr_mlp``; each group keeps its ``base_lr`` for the
    schedules. Empty groups are left out."""
    def ids(kind: type) -> set[int]:
        return {id(p) for m in module.modules() if isinstance(m, kind) for p in m.parameters()}

    grid_ids = ids(TriPlaneEncoder)
    code_ids = ids(CodeEncoder) | ids(CodeBasis)
    lr_code = CODE_LR_MULT * lr_mlp if lr_code is None else lr_code
    groups = [("grids", lr_grid, [p for p in module.parameters() if id(p) in grid_ids]),
              ("code", lr_code, [p for p in module.parameters() if id(p) in code_ids]),
              ("mlps", lr_mlp, [p for p in module.parameters()
                                if id(p) not in grid_ids and id(p) not in code_ids])]
    return torch.optim.AdamW([{"params": ps, "lr": lr, "base_lr": lr, "name": name}
                              for name, lr, ps in groups if ps], weight_decay=weight_decay)


def _resize(x: Tensor, res: int) -> Tensor:
    """(n, H, W, 3) -> (n, res, res, 3), area filter."""
    return F.interpolate(x.permute(0, 3, 1, 2), size=(res, res), mode="area").permute(0, 2, 3, 1).contiguous()


@dataclass
class StepResult:
    """Loss (scalar, with graph), the render whose ``means2d.grad`` feeds densification, the
    motion, and logs as detached 0-d tensors on the training device (read them with
    ``float()`` only when a line is logged: each read waits for the device)."""

    loss: Tensor
    render: object
    motion: Motion | None
    logs: dict[str, Tensor]


def _lips_crop(frames: TrainFrames, j: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of frame ``j``'s lips box grown by 1/8 of its width (>= 2 px),
    clipped to the image."""
    x0, y0, x1, y1 = [int(v) for v in host_values(frames.lips_box[j])]
    pad = max(2, (x1 - x0) // 8)
    return (max(0, y0 - pad), min(frames.res, y1 + pad), max(0, x0 - pad), min(frames.res, x1 + pad))


def _gate_channels(m: Motion) -> Tensor | None:
    if m is None or m.audio_gate is None or m.eye_gate is None:
        return None
    return torch.stack([m.audio_gate.abs().mean(-1), m.eye_gate.abs().mean(-1)], -1)


def face_step(umf: UMF, ident: Identity, frames: TrainFrames, j: int, bg: Tensor,
              static: bool = False, use_aligner: bool = True,
              contrast_fields: list | None = None, contrast_weight: float = 1.0,
              tracked: bool = True, edge_weight: float = 0.0) -> StepResult:
    """Face stage loss for frame ``j`` over the flat background ``bg`` (3,).

    static: no motion (pre-training warm-up). contrast_fields: other identities'
    personalised face fields (pre-training negative contrast loss). tracked: condition on the
    tracked mouth code (else the one predicted from the audio). Besides the whole-frame term,
    the lips box gets its own photometric term (``LIPS_WEIGHT``): the lips are about 1 % of
    the frame and would otherwise hardly count. ``edge_weight``: weight of an L1 term over
    the head's edge band (:func:`core.train.objectives.edge_band`), where halos show; 0 =
    none."""
    from core.model.head import personal_face_offsets
    from core.model.motion_field import negative_contrast_loss

    cond = frames.cond(j, tracked)
    lab = frames.labels[j]
    head = (lab == Label.FACE) | (lab == Label.HAIR)
    w = soft_edge(head, frames.res)[..., None]
    target = w * frames.images[j] + (1.0 - w) * bg
    m = None if static else face_motion(umf, ident, cond, use_aligner=use_aligner)
    gates = _gate_channels(m)
    out = render_branch(ident.face, m, cond, background=bg, extra=gates)
    pred = out.image[..., :3]
    loss = photometric(pred, target) + ALPHA_WEIGHT * alpha_loss(out.alpha, head, w[..., 0])
    lips_box = _lips_crop(frames, j)
    loss = loss + LIPS_WEIGHT * box_photometric(pred, target, lips_box)
    if edge_weight > 0:
        loss = loss + edge_weight * masked_l1(pred, target, edge_band(head, frames.res))
    logs = {}
    if m is not None:
        loss = loss + MOTION_WEIGHT * motion_magnitude_loss(m)
        if gates is not None:
            lips = box_mask(host_values(frames.lips_box[j]), frames.res, frames.res,
                            device=pred.device)
            loss = loss + GATE_WEIGHT * gate_loss(out.image[..., 3:5], lips, lab == Label.HAIR)
        if contrast_fields and ident.face_personal is not None:
            a, e = umf.face.encode(cond.audio_win, cond.expr[:5], cond.expr[5], code=cond.mouth)
            own = ident.face_personal(ident.face.means, a, e).d_xyz
            others = personal_face_offsets(contrast_fields, umf, ident.face.means, cond)
            lc = negative_contrast_loss(own, others)
            loss = loss + contrast_weight * lc
            logs["contrast"] = lc.detach()
    logs["loss"] = loss.detach()
    return StepResult(loss, out, m, logs)


def mouth_step(umf: UMF, ident: Identity, frames: TrainFrames, j: int, bg: Tensor, hook_k: int,
               static: bool = False, use_aligner: bool = True,
               contrast_fields: list | None = None, contrast_weight: float = 1.0,
               tracked: bool = True, interior_only: bool = False) -> StepResult:
    """Mouth stage loss for frame ``j``: the mouth interior inside the lips box (see module
    doc); the face field only supplies the hook (no gradient). ``interior_only``: only the
    recorded interior's pixels count (elsewhere in the box the face layer covers the mouth
    in the composite), instead of asking for the flat background there too."""
    from core.model.head import personal_mouth_offsets
    from core.model.motion_field import negative_contrast_loss

    cond = frames.cond(j, tracked)
    lab = frames.labels[j]
    mouth = lab == Label.MOUTH
    with torch.no_grad():
        hook = hook_from_face(face_motion(umf, ident, cond, use_aligner=use_aligner), hook_k)
    m = None if static else mouth_motion(umf, ident, cond, hook, use_aligner=use_aligner)
    out = render_branch(ident.mouth, m, cond, background=bg)
    pred = out.image[..., :3]
    target = torch.where(mouth[..., None], frames.images[j], bg)
    y0, y1, x0, x1 = _lips_crop(frames, j)
    inside = torch.zeros_like(mouth)
    inside[y0:y1, x0:x1] = True
    if interior_only:
        # pixels off the recorded interior are the face layer's (it is opaque there and
        # covers the mouth in the composite): no error, no gradient
        pred = torch.where(mouth[..., None], pred, target)
    loss = box_photometric(pred, target, (y0, y1, x0, x1))
    loss = loss + MOUTH_OUTSIDE_WEIGHT * (out.alpha[..., 0] * (~inside).to(pred)).mean()
    logs = {}
    if m is not None:
        loss = loss + MOTION_WEIGHT * motion_magnitude_loss(m)
        if contrast_fields and ident.mouth_personal is not None:
            a = umf.mouth.encode(cond.audio_win, code=cond.mouth)
            own = ident.mouth_personal(ident.mouth.means, a, hook).d_xyz
            others = personal_mouth_offsets(contrast_fields, umf, ident.mouth.means, cond, hook)
            lc = negative_contrast_loss(own, others)
            loss = loss + contrast_weight * lc
            logs["contrast"] = lc.detach()
    logs["loss"] = loss.detach()
    return StepResult(loss, out, m, logs)


def fuse_step(umf: UMF, ident: Identity, frames: TrainFrames, j: int, hook_k: int = HOOK_K_EVAL,
              dilate: int = 1, tracked: bool = True, edge_weight: float = 0.0) -> StepResult:
    """Fuse stage loss: the composited frame against the recorded frame (motion fixed), plus
    ``edge_weight`` x L1 over the recorded head's edge band (hair, face and mouth labels)."""
    cond = frames.cond(j, tracked)
    with torch.no_grad():
        fm = face_motion(umf, ident, cond)
        mm = mouth_motion(umf, ident, cond, hook_from_face(fm, hook_k))
    face = render_branch(ident.face, fm, cond)
    mouth = render_branch(ident.mouth, mm, cond)
    pred = composite(face, mouth, frames.plates[j], dilate)
    loss = photometric(pred, frames.images[j])
    if edge_weight > 0:
        head = frames.labels[j] >= Label.HAIR   # core.data.masks.head_mask, on the device
        loss = loss + edge_weight * masked_l1(pred, frames.images[j], edge_band(head, frames.res))
    return StepResult(loss, face, fm, {"loss": loss.detach()})
