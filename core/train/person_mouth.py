"""The person's own audio-to-mouth model, and fitting an avatar's whole mouth drive.

An avatar's :class:`core.model.mouth_drive.MouthDrive` predicts its mouth code from audio.
:func:`fit_drive` builds it from the avatar's training frames in one place (adaptation and
the benchmark's held-out curve call it with the same settings, so both see the same drive):

1. the shipped audio-to-mouth prior, the person's code statistics and the recording's
   audio-video offset (:meth:`MouthDrive.fit`), then the person-specific read-out
   (:meth:`MouthDrive.personalise`);
2. the person's own model (:class:`PersonMouthConfig`): a predictor of the prior's
   architecture trained *from scratch* on the training frames alone (their audio re-timed
   by the offset, their tracked code as the target; the prior's training recipe,
   :func:`core.train.mouth_prior.train_pass`, on short crops), blended with the prior's
   prediction.

Why a blend: on 13 pre-training speakers scored by mouth priors that never saw them
(``python -m eval.studies.readout_cv``), the prior with its read-out predicts the held-out aperture
with a mean r of 0.26, a model trained on the speaker's first 5 s alone 0.28, and their
equal blend 0.31 (``docs/results/readout_cv.md``). A weight of 1 is the drive of an avatar
with nothing pre-trained (the benchmark's "from scratch").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.model.mouth_drive import MouthDrive, ReadoutConfig, shift_frames
from core.model.mouth_predictor import MouthPredictor, audio_front_end
from core.data.preprocess import SAMPLES_PER_FRAME


@dataclass(frozen=True)
class PersonMouthConfig:
    """The person's own audio-to-mouth model.

    Attributes:
        weight: its weight in the drive's blend with the prior (0.5; 0 = not trained, the
            prior alone; 1 = it alone, nothing pre-trained).
        steps: optimiser steps (300; about 5 s on one CPU thread).
        crop_frames: training crop length in video frames (25 = 1 s: a 5 s clip gives
            many different crops).
        batch: crops per step (8).
        lr: Adam learning rate (2e-3, cosine-decayed to 5 %), as for the prior.
    """

    weight: float = 0.5
    steps: int = 300
    crop_frames: int = 25
    batch: int = 8
    lr: float = 2e-3

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"person model weight must be in [0, 1], got {self.weight}")
        if self.steps < 1 or self.crop_frames < 2 or self.batch < 1 or self.lr <= 0:
            raise ValueError(f"person model schedule must be positive: steps {self.steps}, "
                             f"crop_frames {self.crop_frames}, batch {self.batch}, lr {self.lr}")


def train_person_model(drive: MouthDrive, tracked: np.ndarray, steps: torch.Tensor,
                       valid: np.ndarray | None, cfg: PersonMouthConfig, seed: int = 0) -> MouthPredictor:
    """Train a predictor of the drive's architecture from scratch on one person.

    Args:
        drive: the fitted drive (its predictor's architecture and its ``av_offset``).
        tracked: (T, 4) the training frames' mouth code, normalised with the drive's stats.
        steps: (S, D) front-end steps of the training frames' audio (``S >= 2 T``), not yet
            re-timed; they are shifted by ``drive.av_offset`` here.
        valid: (T,) frames where the face was found (None: all).
        cfg, seed: schedule; the same seed gives the same model.
    """
    from core.train.mouth_prior import ClipData, MouthPriorTrainConfig, train_pass

    T = len(tracked)
    aligned = steps[shift_frames(steps.shape[0], 2 * drive.av_offset)]
    ok = np.ones(T, bool) if valid is None else np.asarray(valid[:T], bool)
    data = ClipData("person", aligned.float(), torch.as_tensor(np.asarray(tracked, np.float32)),
                    torch.from_numpy(ok))
    schedule = MouthPriorTrainConfig(steps=cfg.steps, batch=cfg.batch,
                                     crop_frames=min(cfg.crop_frames, T), lr=cfg.lr)
    model, _ = train_pass([data], drive.predictor.config, schedule, seed, log=lambda s: None)
    return model


def fit_drive(points3d: np.ndarray, audio: np.ndarray, n_train: int, valid: np.ndarray | None,
              av_offset: int | None, readout: ReadoutConfig | None,
              person: PersonMouthConfig | None, seed: int = 0) -> MouthDrive:
    """An avatar's mouth drive from its first ``n_train`` frames: :meth:`MouthDrive.fit`
    (arguments as there), then the person-specific read-out when ``readout`` has a mix > 0
    (None: the prior's last layer alone) and the person's own model when ``person`` has a
    weight > 0. The training audio goes through the front end once, for both."""
    drive = MouthDrive.fit(points3d, audio, n_train, valid, av_offset=av_offset)
    use_readout = readout is not None and readout.mix > 0
    use_person = person is not None and person.weight > 0
    if not (use_readout or use_person):
        return drive
    tracked = drive.tracked(points3d[:n_train]).numpy()
    steps = audio_front_end(audio[:n_train * SAMPLES_PER_FRAME], drive.predictor.config.inputs)
    if use_readout:
        drive.personalise(tracked, steps, valid, readout)
    if use_person:
        model = train_person_model(drive, tracked, steps, valid, person, seed)
        drive.set_person(model, person.weight, steps, n_train)
    return drive


__all__ = ["PersonMouthConfig", "fit_drive", "train_person_model"]
