"""The evaluation protocol of METHOD.md §8: held-out frames of the adaptation clip.

Adaptation uses the first ``train_seconds`` of a processed clip; the test part is the last
``test_seconds`` (paper: 12 s; never overlapping the training part), driven by its own
audio, poses and expressions and composited on its own recorded torso/background plate.
The avatar meets the held-out frames as it would meet new speech: their expression inputs
are normalised with the training frames' statistics and their audio is featurised from
the test span alone (:func:`heldout_frames`). :func:`render_heldout` renders them with an
avatar's model; :func:`ground_truth` gives the recorded frames and region masks that
:mod:`eval.bench.scoring` compares them with.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from core.model.avatar import Avatar, load_avatar
from core.data.crop import crop_intrinsics, resize_crops
from core.data.dataset import ProcessedClip
from core.device import host_values
from core.model.head import DrivenFrames, InferenceHead, render_frame
from core.model.motion_field import audio_windows
from core.train.stages import TrainFrames

TEST_SECONDS = 12.0


def test_indices(clip: ProcessedClip, train_seconds: float,
                 test_seconds: float | None = TEST_SECONDS) -> torch.Tensor:
    """Held-out frame indices: the last ``test_seconds`` after the training part (all frames
    after it when the clip is shorter)."""
    _, test = clip.split(train_seconds, test_seconds)
    if test.numel() == 0:
        raise ValueError(f"{clip.root.name}: no frames after the first {train_seconds} s")
    return test


def heldout_frames(clip: ProcessedClip, idx: torch.Tensor, res: int,
                   train_frames: int, drive=None) -> TrainFrames:
    """The test frames ``idx`` (one contiguous span) at ``res``, as a trained avatar meets
    them: expression inputs normalised with the statistics of the clip's first
    ``train_frames`` frames (the training part), audio featurised from the test span alone
    (like new audio driving the avatar). ``drive``: the avatar's
    :class:`core.model.mouth_drive.MouthDrive` when its fields take the mouth code: the
    codes are predicted from the test span's audio (never the recorded lips) and the
    fields' own audio input is held at the features of silence, as when the avatar speaks
    (:func:`core.synthesize.field_audio`)."""
    start, stop = int(idx[0]), int(idx[-1]) + 1
    if stop - start != idx.numel():
        raise ValueError("held-out frames must be one contiguous span")
    frames = TrainFrames.from_clip(clip, idx, res, fit_frames=train_frames,
                                   audio_span=(start, stop), drive=drive)
    if drive is None:
        return frames
    from core.data.audio import AudioFeatureSpec
    from core.data.features import feature_config
    from core.model.mouth_drive import silent_fields_audio

    held = silent_fields_audio(stop - start, feature_config(AudioFeatureSpec.from_dict(
        clip.manifest["audio"])))
    return replace(frames, audio=held.to(frames.audio.dtype))


def frame_subset(frames: TrainFrames, pick: torch.Tensor) -> TrainFrames:
    """Frames ``pick`` (positions) of ``frames``, keeping the whole utterance's audio so
    their windows stay those of the full span. Absent fields (None: the mouth codes of a
    model without the mouth-code input) stay absent."""
    shared = ("K", "audio")
    return replace(frames, **{f.name: getattr(frames, f.name)[pick] for f in fields(frames)
                              if f.name not in shared and getattr(frames, f.name) is not None})


@torch.no_grad()
def render_heldout(avatar: Avatar | str | Path, frames: TrainFrames) -> np.ndarray:
    """(n, res, res, 3) uint8 frames of the avatar driven by the test frames' own audio,
    poses and expressions, over their own plates."""
    av = avatar if isinstance(avatar, Avatar) else load_avatar(avatar)
    if av.umf.code_dim and frames.mouth_pred is None:
        raise ValueError("this avatar takes mouth codes: build the frames with its drive")
    return render_frames(av.umf, av.ident, frames)


#: Held-out frames whose motion fields are evaluated in one call (memory: about
#: ``RENDER_BATCH`` x Gaussians x 10 floats).
RENDER_BATCH = 8


@torch.no_grad()
def render_frames(umf, ident, frames: TrainFrames, batch: int = RENDER_BATCH,
                  side: int | None = None) -> np.ndarray:
    """(n, res, res, 3) uint8 renders of ``umf`` + ``ident`` for every frame of ``frames``,
    on the models' device (the frames move there once; each render comes back to the CPU).
    ``side``: draw the head at ``side x side`` instead (the intrinsics scaled about the
    crop's centre, each plate resized bilinearly, as :meth:`core.model.avatar.Avatar.at_res`
    does for Talk): (n, side, side, 3).

    The renderer Talk uses (:class:`core.model.head.InferenceHead`: the fields' per-avatar
    constants computed once, ``batch`` frames per field evaluation, only the head's box
    composited), so the benchmark scores the pixels a user gets; identities it does not
    support (personalised fields) go frame by frame through :func:`render_frame`. The two
    agree to one grey level (``tests/test_benchmark.py``)."""
    dev = next(umf.parameters()).device
    if frames.device != dev:
        frames = frames.to(dev)
    side = frames.res if side is None else int(side)
    out = np.empty((frames.n, side, side, 3), np.uint8)
    K = frames.K
    if side != frames.res:
        if not InferenceHead.supports(ident):
            raise ValueError("drawing at another size needs the fast renderer, which this "
                             "identity (personalised fields) does not support")
        K = crop_intrinsics(K, frames.res, side)
    if not InferenceHead.supports(ident):
        for j in range(frames.n):
            img = render_frame(umf, ident, frames.cond(j), frames.plates[j])
            out[j] = (img * 255.0).round().to(torch.uint8).cpu().numpy()
        return out
    head = InferenceHead(umf, ident)
    for s in range(0, frames.n, batch):
        e = min(s + batch, frames.n)
        motions = head.motions(DrivenFrames(
            audio_win=audio_windows(frames.audio, host_values(frames.index[s:e])),
            expr=frames.expr[s:e],
            mouth=None if frames.mouth_pred is None else frames.mouth_pred[s:e]))
        for b, j in enumerate(range(s, e)):
            plate = frames.plates[j]
            if side != frames.res:
                plate = resize_crops(plate[None], side)[0]
            out[j] = head.render(motions, b, frames.viewmats[j], K, plate).cpu().numpy()
    return out


@dataclass
class GroundTruth:
    """The recorded held-out frames and their region masks.

    frames: (n, H, W, 3) uint8; face: (n, H, W) bool, face + mouth interior labels;
    head: (n, H, W) bool, hair + face + mouth (what an avatar renders; the rest of a frame
    is the recorded plate).
    """

    frames: np.ndarray
    face: np.ndarray
    head: np.ndarray


def ground_truth(frames: TrainFrames) -> GroundTruth:
    """The recorded frames of ``frames`` (uint8, the rounding every render uses) and masks."""
    from core.data.masks import head_mask
    from eval.metrics.frames import face_mask

    lab = frames.labels.numpy()
    return GroundTruth(frames=(frames.images * 255.0).round().to(torch.uint8).numpy(),
                       face=face_mask(lab), head=head_mask(lab))


class HeldoutCurve:
    """An ``adapt(observe=...)`` callback: full-frame, face-region and head-region PSNR of a
    fixed subset of held-out frames along training, and (``aperture``) their lip aperture
    r against the recording (FaceMesh on both; NaN when fewer than 3 frames show a face).
    ``points``: list of (steps, psnr, psnr_face, psnr_head, aperture_r). ``mouth_code``: the avatar's fields take the mouth
    code, driven by the drive adaptation fits with ``readout`` / ``person`` / ``seed``
    (:func:`core.train.person_mouth.fit_drive`; None: the prior's prediction alone), its
    offset measured on the training frames."""

    def __init__(self, clip: ProcessedClip, train_seconds: float, res: int,
                 test_seconds: float | None = TEST_SECONDS, num_frames: int = 25,
                 mouth_code: bool = False, readout=None, person=None, seed: int = 0,
                 aperture: bool = False) -> None:
        idx = test_indices(clip, train_seconds, test_seconds)
        pick = torch.linspace(0, idx.numel() - 1, min(num_frames, idx.numel())).round().long()
        n_train = int(round(train_seconds * 25))
        drive = None
        if mouth_code:  # the drive adaptation fits (same clip, frames, settings and seed)
            from core.train.person_mouth import fit_drive

            a = clip.arrays
            drive = fit_drive(a["points3d"].numpy(), a["audio"].numpy(), n_train,
                              a["valid"].numpy(), None, readout, person, seed)
        self.frames = frame_subset(heldout_frames(clip, idx, res, n_train, drive), pick)
        self.gt = ground_truth(self.frames)
        self.gt_points = None
        if aperture:
            from eval.metrics.frames import detect

            self.gt_points = np.asarray(detect(self.gt.frames).points, np.float64)
        self.points: list[tuple[int, float, float, float, float]] = []

    @torch.no_grad()
    def __call__(self, steps: int, umf, ident) -> None:
        from eval.metrics.frames import psnr

        dev = next(umf.parameters()).device
        if self.frames.device != dev:   # once: the held-out frames follow the training device
            self.frames = self.frames.to(dev)
        pred = render_frames(umf, ident, self.frames)
        g = self.gt
        full = [psnr(p, t) for p, t in zip(pred, g.frames)]
        face = [psnr(p, t, m) for p, t, m in zip(pred, g.frames, g.face)]
        head = [psnr(p, t, m) for p, t, m in zip(pred, g.frames, g.head)]
        r = float("nan")
        if self.gt_points is not None:
            from eval.metrics.frames import aperture_scores, detect

            try:
                r = aperture_scores(np.asarray(detect(pred).points, np.float64),
                                    self.gt_points).r
            except ValueError:  # fewer than 3 frames with a face in both
                pass
        self.points.append((int(steps), float(np.mean(full)), float(np.mean(face)),
                            float(np.mean(head)), r))
