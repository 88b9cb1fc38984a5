"""How one avatar's mouth is driven: tracked mouth codes while it learns, codes predicted
from audio when it speaks (and the motion fields' own audio input then held at the
features of silence, :func:`silent_fields_audio`).

A :class:`MouthDrive` belongs to an avatar and holds

* the audio-to-mouth predictor (:mod:`core.model.mouth_predictor`) and its output ``gain``
  (predictions regress toward the mean; the gain, measured on the prior's training clips,
  restores the spread of real lip motion);
* the person's mouth-code statistics (:class:`core.data.mouth_code.MouthCodeStats`), fitted
  on the training frames only;
* the audio-video offset of the avatar's own recording (frames, audio late > 0), estimated on
  the training frames; the clip's own audio is re-timed by it (new audio is not);
* optionally a *person-specific read-out*: the predictor's last layer refitted on the
  person's training frames (ridge regression pulled toward the prior's own last layer) and
  mixed with the prior's (:class:`ReadoutConfig`). Some people's lips do not do what most
  speakers' do for a sound (one held-out speaker opens his lips less when loud and keeps
  them apart at rest); the read-out learns that from their own seconds, the mix keeps the
  speaker-independent prediction for everyone else;
* optionally the *person's own model*: a predictor of the same architecture trained from
  scratch on the person's training frames alone (:mod:`core.train.person_mouth`), blended
  with the prior's prediction (``person_weight``; 1 = the person's model alone, which is
  what "nothing pre-trained" means for the drive). Measured on pre-training speakers that
  the prior never saw, 5 s of one person teach a small network about as much as 3 minutes
  of others do, and the two err differently, so their blend beats either
  (``docs/results/lip_sync.md``).

Stored inside the avatar file under ``drive.*`` (see :meth:`tensors`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.data.audio import AudioFeatureConfig
from core.data.mouth_code import MouthCodeStats, mouth_geometry
from core.data.preprocess import SAMPLES_PER_FRAME
from core.model.mouth_predictor import (MouthPredictor, MouthPredictorConfig, audio_front_end,
                                        load_predictor, to_frames)

#: Largest audio-video offset searched, frames either way (0.32 s at 25 fps).
MAX_OFFSET = 8

#: How much wider a finished avatar's predicted mouth codes are drawn than fitted
#: (:attr:`MouthDrive.spread`). Fitted on 5 s of a person, the drive's codes spread 0.86-0.96x
#: as wide as the person's tracked lips on those seconds but 0.71x (0.46-0.90) on the seconds
#: after them: measured on the nine people of ``../shared/data/clips_pretrain``, whom no
#: shipped model saw (``python -m eval.studies.drive_spread``). Regression toward the mean
#: is what a fit on a few seconds does on new speech; on screen it is a mouth that mumbles.
#: 1.4 is about 1 / 0.71. Adaptation fits and trains with 1 and stores this in the avatar.
HELDOUT_SPREAD = 1.4


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (n,) arrays; 0 when either is constant or n < 3."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lagged_corr(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
                max_offset: int = MAX_OFFSET) -> dict[int, float]:
    """Correlation of ``pred`` (from the audio) with ``target`` (tracked) when the audio is
    taken as ``lag`` frames late: ``target[t]`` against ``pred[t + lag]``, |lag| <= max_offset."""
    T = len(target)
    valid = np.ones(T, bool) if valid is None else np.asarray(valid, bool)
    out = {}
    for lag in range(-max_offset, max_offset + 1):
        t = np.arange(max(0, -lag), min(T, T - lag))
        t = t[valid[t]]
        out[lag] = pearson(pred[t + lag], target[t])
    return out


#: Mouth-code columns that time the audio (aperture, width, jaw): protrusion, FaceMesh's depth
#: estimate, is the noisiest and is left out.
OFFSET_COLUMNS: tuple[int, ...] = (0, 1, 3)


def offset_curve(pred_code: np.ndarray, tracked_code: np.ndarray, valid: np.ndarray | None = None,
                 max_offset: int = MAX_OFFSET, columns: tuple[int, ...] = OFFSET_COLUMNS) -> dict[int, float]:
    """Mean over ``columns`` of :func:`lagged_corr` of the predicted (T, C) and tracked (T, C)
    mouth codes: how well the audio lines up with the lips at each lag (frames, audio late
    > 0). One column (aperture alone) gives a flat or double-peaked curve on a few seconds
    of speech; width and jaw time the same syllables and sharpen it."""
    pred_code = np.asarray(pred_code).reshape(len(pred_code), -1)
    tracked_code = np.asarray(tracked_code).reshape(len(tracked_code), -1)
    cols = [c for c in columns if c < min(pred_code.shape[1], tracked_code.shape[1])] or [0]
    curves = [lagged_corr(pred_code[:, c], tracked_code[:, c], valid, max_offset) for c in cols]
    return {lag: float(np.mean([cv[lag] for cv in curves])) for lag in curves[0]}


def estimate_av_offset(pred_code: np.ndarray, tracked_code: np.ndarray,
                       valid: np.ndarray | None = None, max_offset: int = MAX_OFFSET,
                       min_gain: float = 0.02) -> int:
    """Audio-video offset in frames (audio late > 0): the lag that best lines up the mouth
    code predicted from the audio with the tracked one (:func:`offset_curve`; (T,) or (T, C)
    arrays); 0 unless it beats lag 0 by ``min_gain`` in mean correlation (silent or
    motionless clips give flat curves)."""
    return best_lag(offset_curve(pred_code, tracked_code, valid, max_offset), min_gain)


def best_lag(curve: dict[int, float], min_gain: float = 0.02) -> int:
    """The lag of a correlation curve's peak; 0 unless it beats lag 0 by ``min_gain``."""
    best = max(curve, key=curve.get)
    return int(best) if curve[best] - curve[0] >= min_gain else 0


def shift_frames(n: int, offset: int, limit: int | None = None) -> Tensor:
    """(n,) source frame per frame when the audio is ``offset`` frames late: ``i + offset``,
    clamped to ``[0, limit - 1]`` (default ``n``)."""
    limit = n if limit is None else limit
    return (torch.arange(n) + offset).clamp(0, max(limit - 1, 0))


@dataclass(frozen=True)
class AvOffset:
    """A recording's measured audio-video offset.

    Attributes:
        frames: offset in frames at 25 fps (audio late > 0: the lips move ``frames`` frames
            before their sound is heard); 0 when no lag beats lag 0 clearly.
        gain: mean correlation at ``frames`` minus at lag 0 (how clear the peak is).
        curve: lag (frames) -> mean correlation of predicted and tracked mouth codes.
    """

    frames: int
    gain: float
    curve: dict[int, float]

    def to_dict(self) -> dict:
        return {"frames": self.frames, "gain": self.gain,
                "curve": {str(k): v for k, v in self.curve.items()},
                "method": "audio-to-mouth prior: mean lagged correlation of aperture, width, jaw"}


@dataclass(frozen=True)
class ReadoutConfig:
    """The person-specific read-out of :class:`MouthDrive` (see the module doc).

    Attributes:
        mix: weight of the person's read-out in the predicted code, the prior's last layer
            getting ``1 - mix`` (0 = the speaker-independent prior alone; 1 = the read-out
            alone, which the penalty still keeps near the prior).
        penalty: ridge penalty pulling the refitted last layer toward the prior's (a sum of
            squares over the training frames against this times the squared distance).

    The defaults (1.0, 300) gave the best held-out aperture correlation on 13 pre-training
    speakers, each predicted by a mouth prior trained on the other half of the clips
    (``docs/results/lip_sync.md``).
    """

    mix: float = 1.0
    penalty: float = 300.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"readout mix must be in [0, 1], got {self.mix}")
        if self.penalty <= 0:
            raise ValueError(f"readout penalty must be > 0, got {self.penalty}")


def fit_readout(hidden: np.ndarray, target: np.ndarray, prior: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge regression of ``target`` (n, C) on ``hidden`` (n, h) plus a bias, pulled toward
    ``prior`` (C, h + 1) instead of toward 0: minimises
    ``|[hidden 1] W^T - target|^2 + penalty |W - prior|^2``. Returns W, (C, h + 1)."""
    X = np.c_[np.asarray(hidden, np.float64), np.ones(len(hidden))]
    W0 = np.asarray(prior, np.float64).T
    A = X.T @ X + penalty * np.eye(X.shape[1])
    return np.linalg.solve(A, X.T @ np.asarray(target, np.float64) + penalty * W0).T.astype(np.float32)


@dataclass
class MouthDrive:
    """See the module doc. ``gain`` (4,); ``av_offset`` frames; ``readout`` (4, hidden + 1)
    the person's last layer (None: the prior's alone) and ``mix`` its weight; ``person``
    the person's own model, ``person_weight`` its weight in the blend and ``blend_gain``
    (4,) the factor that gives the blend the members' mean spread (see :meth:`set_person`);
    ``spread`` the factor on every predicted code of a finished avatar (1 while it learns:
    see :data:`HELDOUT_SPREAD`)."""

    predictor: MouthPredictor
    gain: np.ndarray
    stats: MouthCodeStats
    av_offset: int = 0
    readout: np.ndarray | None = None
    mix: float = 0.0
    person: MouthPredictor | None = None
    person_weight: float = 0.0
    blend_gain: np.ndarray | None = None
    spread: float = 1.0

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(cls, points3d: np.ndarray, audio: np.ndarray, n_train: int, valid: np.ndarray | None = None,
            predictor: MouthPredictor | None = None, gain: np.ndarray | None = None,
            av_offset: int | None = None) -> MouthDrive:
        """Fit the person's code statistics and the recording's offset on the first
        ``n_train`` frames of a clip (the read-out and the person's own model are added by
        :func:`core.train.person_mouth.fit_drive`).

        Args:
            points3d: (T, 478, 3) tracked FaceMesh points (only ``[:n_train]`` is read).
            audio: 16 kHz mono of the clip (the training frames' samples, and up to
                ``MAX_OFFSET`` frames after them for the lag search, are read).
            valid: (T,) frames where the face was found.
            predictor, gain: default the shipped audio-to-mouth prior and its gain.
            av_offset: the recording's audio-video offset when it is already known (the
                processed clip's manifest, :func:`measure_av_offset`); None measures it on
                the training frames.
        """
        if predictor is None:
            predictor, meta = load_predictor()
            gain = np.asarray(meta.get("gain", [1.0] * 4), np.float32)
        gain = np.ones(4, np.float32) if gain is None else np.asarray(gain, np.float32)
        raw = mouth_geometry(points3d[:n_train])
        ok = np.ones(n_train, bool) if valid is None else np.asarray(valid[:n_train], bool)
        stats = MouthCodeStats.fit(raw[ok] if ok.sum() > 2 else raw)
        drive = cls(predictor, gain, stats, 0)
        tracked = stats.normalise(raw)
        if av_offset is not None:
            drive.av_offset = int(av_offset)
        else:
            drive.av_offset = drive.measure_offset(tracked, audio, ok).frames
        return drive

    @torch.no_grad()
    def personalise(self, tracked: np.ndarray, steps: Tensor, valid: np.ndarray | None,
                    config: ReadoutConfig) -> None:
        """Fit the person-specific read-out on a recording's (T, 4) tracked code (normalised
        with this drive's statistics) and the (S, D) front-end steps of its audio
        (:func:`core.model.mouth_predictor.audio_front_end` of its first ``640 T`` samples),
        re-timed by :attr:`av_offset` like the training frames' audio."""
        T = len(tracked)
        hidden = to_frames(self.predictor.hidden(steps[None].float())[0], T)[shift_frames(T, self.av_offset, T)]
        ok = np.ones(T, bool) if valid is None else np.asarray(valid[:T], bool)
        target = np.asarray(tracked, np.float64)[ok] / self.gain
        self.readout = fit_readout(hidden.numpy()[ok], target, self.predictor.readout_weights().numpy(),
                                   config.penalty)
        self.mix = float(config.mix)

    def measure_offset(self, tracked: np.ndarray, audio: np.ndarray,
                       valid: np.ndarray | None = None) -> AvOffset:
        """The audio-video offset of a recording: its (T, 4) tracked mouth code (normalised
        with this drive's statistics) and its 16 kHz audio (at least ``640 T`` samples; more
        lets late audio be searched at the end)."""
        T = len(tracked)
        n_audio = min(len(audio), (T + MAX_OFFSET) * SAMPLES_PER_FRAME)
        pred = self.predicted(audio[:n_audio], T + MAX_OFFSET).numpy()
        tracked = np.asarray(tracked, np.float32)
        v = np.ones(T, bool) if valid is None else np.asarray(valid[:T], bool)
        # pad the tracked side so lags read the audio after the last frame
        pad = np.zeros((MAX_OFFSET, tracked.shape[1]), tracked.dtype)
        vpad = np.r_[v, np.zeros(MAX_OFFSET, bool)]
        curve = offset_curve(pred, np.r_[tracked, pad], vpad, MAX_OFFSET)
        frames = best_lag(curve)
        return AvOffset(frames, round(curve[frames] - curve[0], 4),
                        {k: round(c, 4) for k, c in curve.items()})

    # ------------------------------------------------------------------ codes
    def tracked(self, points3d: np.ndarray) -> Tensor:
        """(T, 4) normalised code of tracked points (T, 478, 3)."""
        return torch.from_numpy(self.stats.normalise(mouth_geometry(points3d)))

    @torch.no_grad()
    def predicted(self, audio: np.ndarray | Tensor, num_frames: int,
                  lead_frames: int | None = None) -> Tensor:
        """(num_frames, 4) normalised code predicted from 16 kHz mono ``audio`` (x gain).

        ``lead_frames``: only the first this many frames' codes, with the phones of only
        their audio decoded (:func:`core.model.mouth_predictor.audio_front_end`): a
        fraction of the cost, for a streamed Talk's first frames
        (:class:`core.model.lead_codes.LeadCodes`)."""
        if lead_frames is None:
            return self.codes(audio_front_end(audio, self.predictor.config.inputs), num_frames)
        steps = audio_front_end(audio, self.predictor.config.inputs,
                                decode_samples=lead_frames * SAMPLES_PER_FRAME)
        return self.codes(steps, lead_frames)

    @torch.no_grad()
    def codes(self, steps: Tensor, num_frames: int) -> Tensor:
        """:meth:`predicted` from the audio's (S, D) front-end steps, already computed."""
        if self.person is None or self.person_weight <= 0:
            code = self.prior_codes(steps, num_frames)
        else:
            _, _, code = self._blend(steps, num_frames)
            if self.blend_gain is not None:
                code = code * torch.from_numpy(self.blend_gain)
        return code if self.spread == 1.0 else code * self.spread

    def _blend(self, steps: Tensor, num_frames: int) -> tuple[Tensor, Tensor, Tensor]:
        """(prior, own, blend) codes, each (num_frames, 4), the blend not yet rescaled."""
        w = self.person_weight
        prior = self.prior_codes(steps, num_frames)
        own = to_frames(self.person(steps[None].float())[0], num_frames)
        return prior, own, (1 - w) * prior + w * own

    @torch.no_grad()
    def prior_codes(self, steps: Tensor, num_frames: int) -> Tensor:
        """(num_frames, 4) the prior's prediction (with the read-out and the gain), without
        the person's own model."""
        hidden = self.predictor.hidden(steps[None].float())[0]               # (S, h)
        code = self.predictor.out(hidden.T[None])[0].T                     # (S, 4)
        if self.readout is not None and self.mix > 0:
            w = torch.from_numpy(self.readout)
            code = (1 - self.mix) * code + self.mix * (hidden @ w[:, :-1].T + w[:, -1])
        return to_frames(code, num_frames) * torch.from_numpy(self.gain)

    @torch.no_grad()
    def set_person(self, model: MouthPredictor, weight: float, steps: Tensor, num_frames: int) -> None:
        """Attach the person's own model with weight ``weight`` in [0, 1] (0 = the prior
        alone, 1 = the person's model alone). Averaging two predictions that disagree
        shrinks their spread, so ``blend_gain`` (4,) is set to bring the blend's standard
        deviation over ``steps`` (the (S, D) front-end steps of the training audio; no lip
        data) back to the weighted mean of the members'."""
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"person weight must be in [0, 1], got {weight}")
        model.eval()
        self.person, self.person_weight = model, float(weight)
        prior, own, blend = self._blend(steps, num_frames)
        want = (1 - weight) * prior.std(0) + weight * own.std(0)
        self.blend_gain = (want / blend.std(0).clamp(min=1e-6)).numpy().astype(np.float32)

    # ------------------------------------------------------------------ storage
    def tensors(self, prefix: str = "drive.") -> dict[str, Tensor]:
        from core.model.checkpoint import module_tensors

        out = {**module_tensors(self.predictor, prefix + "predictor."),
               prefix + "gain": torch.from_numpy(self.gain),
               prefix + "code_mean": torch.from_numpy(self.stats.mean),
               prefix + "code_std": torch.from_numpy(self.stats.std),
               prefix + "av_offset": torch.tensor([self.av_offset], dtype=torch.int64)}
        if self.readout is not None:
            out[prefix + "readout"] = torch.from_numpy(self.readout)
            out[prefix + "readout_mix"] = torch.tensor([self.mix], dtype=torch.float32)
        if self.person is not None:
            out.update(module_tensors(self.person, prefix + "person."))
            out[prefix + "person_weight"] = torch.tensor([self.person_weight], dtype=torch.float32)
            out[prefix + "blend_gain"] = torch.from_numpy(self.blend_gain)
        if self.spread != 1.0:
            out[prefix + "spread"] = torch.tensor([self.spread], dtype=torch.float64)
        return out

    def meta(self) -> dict:
        """JSON part: the predictors' architectures."""
        from dataclasses import asdict

        out = {"predictor": asdict(self.predictor.config), "av_offset": self.av_offset}
        if self.person is not None:
            out["person"] = asdict(self.person.config)
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], meta: dict, prefix: str = "drive.") -> MouthDrive:
        from core.model.checkpoint import prefixed

        model = MouthPredictor(MouthPredictorConfig(**meta["predictor"]))
        model.load_state_dict(prefixed(t, prefix + "predictor."))
        model.eval()
        readout = t.get(prefix + "readout")
        drive = cls(model, t[prefix + "gain"].numpy(),
                    MouthCodeStats(t[prefix + "code_mean"].numpy(), t[prefix + "code_std"].numpy()),
                    int(t[prefix + "av_offset"][0]),
                    None if readout is None else readout.numpy(),
                    float(t[prefix + "readout_mix"][0]) if readout is not None else 0.0)
        if "person" in meta:   # avatars made before the person's own model have none
            person = MouthPredictor(MouthPredictorConfig(**meta["person"]))
            person.load_state_dict(prefixed(t, prefix + "person."))
            person.eval()
            drive.person = person
            drive.person_weight = float(t[prefix + "person_weight"][0])
            drive.blend_gain = t[prefix + "blend_gain"].numpy()
        if prefix + "spread" in t:   # avatars made before it have none: 1
            drive.spread = float(t[prefix + "spread"][0])
        return drive


def silent_fields_audio(num_frames: int, cfg: AudioFeatureConfig) -> Tensor:
    """(num_frames, window, D) what the motion fields' own audio input gets when an avatar
    with a mouth drive speaks: the features of digital silence of that length (for log-mel
    one constant frame, each bin within 0.2 of its per-utterance mean), so the mouth follows
    the code predicted from the speech alone (:meth:`MouthDrive.predicted`).

    The fields still learn with the training recording's features beside the code; driven,
    their direct audio route added motion of its own that did not follow the sound. On
    obama_20s's held-out 12 s (cpu-preset avatar) rendered aperture r rose from 0.45 to 0.50
    without it; on a synthetic voice the rendered aperture followed the code at r 0.93
    instead of 0.78 (``docs/results/tts.md``)."""
    from core.data.features import audio_features

    return audio_features(np.zeros(num_frames * SAMPLES_PER_FRAME, np.float32), num_frames, cfg)


def measure_av_offset(points3d: np.ndarray, audio: np.ndarray, valid: np.ndarray | None = None,
                      predictor: MouthPredictor | None = None) -> AvOffset:
    """The audio-video offset of a whole recording with the shipped audio-to-mouth prior
    (preprocessing stores it in the processed clip's manifest under ``av_offset``)."""
    drive = MouthDrive.fit(points3d, audio, len(points3d), valid, predictor=predictor, av_offset=0)
    return drive.measure_offset(drive.tracked(points3d).numpy(), audio, valid)


__all__ = ["AvOffset", "MAX_OFFSET", "MouthDrive", "OFFSET_COLUMNS", "ReadoutConfig", "best_lag",
           "estimate_av_offset", "fit_readout", "lagged_corr", "measure_av_offset", "offset_curve",
           "pearson", "shift_frames", "silent_fields_audio"]

