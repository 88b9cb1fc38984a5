"""Audio-ablation controls and the static-mouth baseline: an avatar with its audio taken away.

Each keeps the avatar, plates, poses and expression inputs of the held-out frames
(:func:`eval.bench.protocol.heldout_frames`) and changes only what the audio path receives:

``shuffled`` (:func:`shuffled_audio`)
    The test span's per-frame audio windows permuted in time (seeded): every frame hears a
    random other moment of the same speech, and its 8-frame attention context is
    scrambled too. Same sounds, no timing: a model that uses audio loses aperture r.
``silence`` (:func:`silent_audio`)
    The features of digital silence of the same length (what the avatar does with no
    speech at all).
``mean-mouth`` (:func:`held_audio_umf`, :func:`held_mouth`)
    The face and mouth audio codes (``AudioEncoder`` outputs, 32-d) held at their mean
    over the avatar's training frames, and for a model with a mouth-code input the mouth
    code held at its training mean: the mouth rests at the training average while the
    expression inputs still move the eyes.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from core.data.audio import AudioFeatureSpec
from core.data.features import feature_config
from core.model.head import UMF
from core.model.motion_field import audio_windows
from core.train.stages import TrainFrames

#: Seed of the time shuffle.
SHUFFLE_SEED = 0


def shuffled_audio(frames: TrainFrames, seed: int = SHUFFLE_SEED) -> TrainFrames:
    """``frames`` with their utterance's per-frame audio windows permuted in time; for a
    model with a mouth-code input the codes predicted from that audio move with it (frame
    ``j`` gets the code of the moment whose audio it now hears)."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(frames.audio.shape[0], generator=g)
    out = replace(frames, audio=frames.audio[perm])
    if frames.mouth_pred is not None:
        if frames.n != frames.audio.shape[0]:
            raise ValueError("shuffle the whole held-out span (one code per audio frame)")
        span_codes = frames.mouth_pred[torch.argsort(frames.index)]
        out = replace(out, mouth_pred=span_codes[perm][frames.index])
    return out


def silent_audio(frames: TrainFrames, spec: AudioFeatureSpec, drive=None) -> TrainFrames:
    """``frames`` driven by the audio features of digital silence (same length), and for a
    model with a mouth-code input (``drive``: its :class:`core.model.mouth_drive.MouthDrive`)
    the codes predicted from that silence."""

    from core.model.mouth_drive import silent_fields_audio

    n = int(frames.audio.shape[0])
    silence = np.zeros(n * 640, np.float32)
    feats = silent_fields_audio(n, feature_config(spec))
    out = replace(frames, audio=feats.to(frames.audio.dtype))
    if frames.mouth_pred is not None:
        if drive is None:
            raise ValueError("a mouth-code model's silence control needs its drive")
        out = replace(out, mouth_pred=drive.predicted(silence, n)[frames.index])
    return out


def held_mouth(frames: TrainFrames) -> TrainFrames:
    """For a model with a mouth-code input, the code held at the person's training mean (0:
    codes are z-scores over the training frames) -- the ``mean-mouth`` row's static mouth."""
    if frames.mouth_pred is None:
        return frames
    return replace(frames, mouth_pred=torch.zeros_like(frames.mouth_pred))


class HeldCode(nn.Module):
    """Stands in for an ``AudioEncoder``: returns one fixed code (D,) for every input
    window batch (B, 8, 16, D_audio) -> (B, D)."""

    def __init__(self, code: Tensor) -> None:
        super().__init__()
        self.register_buffer("code", code.detach().clone())

    def forward(self, x: Tensor, use_attention: bool = True) -> Tensor:
        return self.code.expand(x.shape[0], -1)


@torch.no_grad()
def held_audio_umf(umf: UMF, train: TrainFrames) -> UMF:
    """A copy of ``umf`` whose face and mouth audio encoders return their mean code over
    the training frames ``train`` (the avatar's own training audio windows)."""
    held = copy.deepcopy(umf)
    wins = audio_windows(train.audio, train.index)  # (n, 8, 16, D)
    for branch in (held.face, held.mouth):
        branch.audio = HeldCode(branch.audio(wins).mean(0))
    return held
