"""Audio-ablation controls and the static-mouth baseline: an avatar with its audio taken away.

Each keeps the avatar, plates, poses and expression inputs of the held-out frames
(:func:`eval.protocol.heldout_frames`) and changes only what the audio path receives:

``shuffled`` (:func:`shuffled_audio`)
    The test span's per-frame audio windows permuted in time (seeded): every frame hears a
    random other moment of the same speech, and its 8-frame attention context is
    scrambled too. Same sounds, no timing: a model that uses audio loses aperture r.
``silence`` (:func:`silent_audio`)
    The features of digital silence of the same length (what the avatar does with no
    speech at all).
``mean-mouth`` (:func:`held_audio_umf`)
    The face and mouth audio codes (``AudioEncoder`` outputs, 32-d) held at their mean
    over the avatar's training frames: the mouth rests at the training average while the
    expression inputs still move the eyes and brows.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from core.data.audio import AudioFeatureSpec, audio_features
from core.model.head import UMF
from core.model.motion_field import audio_windows
from core.train.stages import TrainFrames

#: Seed of the time shuffle.
SHUFFLE_SEED = 0


def shuffled_audio(frames: TrainFrames, seed: int = SHUFFLE_SEED) -> TrainFrames:
    """``frames`` with their utterance's per-frame audio windows permuted in time."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(frames.audio.shape[0], generator=g)
    return replace(frames, audio=frames.audio[perm])


def silent_audio(frames: TrainFrames, spec: AudioFeatureSpec) -> TrainFrames:
    """``frames`` driven by the audio features of digital silence (same length)."""
    from core.data.audio import feature_config

    n = int(frames.audio.shape[0])
    feats = audio_features(np.zeros(n * 640, np.float32), n, feature_config(spec))
    return replace(frames, audio=feats.to(frames.audio.dtype))


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
