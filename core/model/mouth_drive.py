"""How one avatar's mouth is driven: tracked mouth codes while it learns, codes predicted
from audio when it speaks.

A :class:`MouthDrive` belongs to an avatar and holds

* the audio-to-mouth predictor (:mod:`core.model.mouth_predictor`) and its output ``gain``
  (predictions regress toward the mean; the gain, measured on the prior's training clips,
  restores the spread of real lip motion);
* the person's mouth-code statistics (:class:`core.data.mouth_code.MouthCodeStats`), fitted
  on the training frames only;
* the audio-video offset of the avatar's own recording (frames, audio late > 0), estimated on
  the training frames; the clip's own audio is re-timed by it (new audio is not).

Stored inside the avatar file under ``drive.*`` (see :meth:`tensors`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.data.mouth_code import MouthCodeStats, mouth_geometry
from core.model.mouth_predictor import (MouthPredictor, MouthPredictorConfig, audio_front_end,
                                        load_predictor)

SAMPLES_PER_FRAME = 640


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (n,) arrays; 0 when either is constant or n < 3."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lagged_corr(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
                max_offset: int = 8) -> dict[int, float]:
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


def estimate_av_offset(pred_aperture: np.ndarray, tracked_aperture: np.ndarray,
                       valid: np.ndarray | None = None, max_offset: int = 8,
                       min_gain: float = 0.05) -> int:
    """Audio-video offset in frames (audio late > 0): the lag that best lines up the aperture
    predicted from the audio with the tracked one; 0 unless it beats lag 0 by ``min_gain``
    in correlation (short or quiet clips give flat curves)."""
    lags = lagged_corr(pred_aperture, tracked_aperture, valid, max_offset)
    best = max(lags, key=lags.get)
    return int(best) if lags[best] - lags[0] >= min_gain else 0


def shift_frames(n: int, offset: int, limit: int | None = None) -> Tensor:
    """(n,) source frame per frame when the audio is ``offset`` frames late: ``i + offset``,
    clamped to ``[0, limit - 1]`` (default ``n``)."""
    limit = n if limit is None else limit
    return (torch.arange(n) + offset).clamp(0, max(limit - 1, 0))


@dataclass
class MouthDrive:
    """See the module doc. ``gain`` (4,); ``av_offset`` frames."""

    predictor: MouthPredictor
    gain: np.ndarray
    stats: MouthCodeStats
    av_offset: int = 0

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(cls, points3d: np.ndarray, audio: np.ndarray, n_train: int, valid: np.ndarray | None = None,
            predictor: MouthPredictor | None = None,
            gain: np.ndarray | None = None, estimate_offset: bool = True) -> MouthDrive:
        """Fit the per-person parts on the first ``n_train`` frames of a clip.

        Args:
            points3d: (T, 478, 3) tracked FaceMesh points (only ``[:n_train]`` is read).
            audio: 16 kHz mono of the clip (only the training frames' samples are read).
            valid: (T,) frames where the face was found.
            predictor, gain: default the shipped audio-to-mouth prior and its gain.
        """
        if predictor is None:
            predictor, meta = load_predictor()
            gain = np.asarray(meta.get("gain", [1.0] * 4), np.float32)
        gain = np.ones(4, np.float32) if gain is None else np.asarray(gain, np.float32)
        raw = mouth_geometry(points3d[:n_train])
        ok = np.ones(n_train, bool) if valid is None else np.asarray(valid[:n_train], bool)
        stats = MouthCodeStats.fit(raw[ok] if ok.sum() > 2 else raw)
        code = stats.normalise(raw)
        drive = cls(predictor, gain, stats, 0)
        if estimate_offset:
            pred = drive.predicted(audio[: n_train * SAMPLES_PER_FRAME], n_train).numpy()
            drive.av_offset = estimate_av_offset(pred[:, 0], code[:, 0], ok)
        return drive

    # ------------------------------------------------------------------ codes
    def tracked(self, points3d: np.ndarray) -> Tensor:
        """(T, 4) normalised code of tracked points (T, 478, 3)."""
        return torch.from_numpy(self.stats.normalise(mouth_geometry(points3d)))

    @torch.no_grad()
    def predicted(self, audio: np.ndarray | Tensor, num_frames: int) -> Tensor:
        """(num_frames, 4) normalised code predicted from 16 kHz mono ``audio`` (x gain)."""
        steps = audio_front_end(audio, self.predictor.config.inputs)
        return self.predictor.frames(steps, num_frames) * torch.from_numpy(self.gain)

    # ------------------------------------------------------------------ storage
    def tensors(self, prefix: str = "drive.") -> dict[str, Tensor]:
        from core.model.checkpoint import module_tensors

        return {**module_tensors(self.predictor, prefix + "predictor."),
                prefix + "gain": torch.from_numpy(self.gain),
                prefix + "code_mean": torch.from_numpy(self.stats.mean),
                prefix + "code_std": torch.from_numpy(self.stats.std),
                prefix + "av_offset": torch.tensor([self.av_offset], dtype=torch.int64)}

    def meta(self) -> dict:
        """JSON part: the predictor's architecture."""
        from dataclasses import asdict

        return {"predictor": asdict(self.predictor.config), "av_offset": self.av_offset}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], meta: dict, prefix: str = "drive.") -> MouthDrive:
        from core.model.checkpoint import prefixed

        model = MouthPredictor(MouthPredictorConfig(**meta["predictor"]))
        model.load_state_dict(prefixed(t, prefix + "predictor."))
        model.eval()
        return cls(model, t[prefix + "gain"].numpy(),
                   MouthCodeStats(t[prefix + "code_mean"].numpy(), t[prefix + "code_std"].numpy()),
                   int(t[prefix + "av_offset"][0]))


__all__ = ["MouthDrive", "estimate_av_offset", "lagged_corr", "pearson", "shift_frames"]
