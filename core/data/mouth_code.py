"""The mouth code: a few numbers per frame that say how the mouth is shaped.

Measured on FaceMesh landmarks with the head pose removed (every frame aligned to the mean
shape of the given frames by a similarity fit of the skull landmarks,
:func:`core.data.pose.procrustes_align`), in units of the
eye-corner distance (IOD, landmarks 33-263 of the mean shape):

=============  ===========================================================================
aperture       inner-lip gap, |13 - 14| (0 = lips closed)
width          mouth-corner distance, |61 - 291|
protrusion     how far the lip centres (0, 17) stand in front of the mouth corners (61, 291)
               along the camera axis (FaceMesh z grows away from the camera)
jaw            chin (152) to the nose bridge (168)
=============  ===========================================================================

The raw geometry differs between people (lip thickness, face shape), so the model sees the
code *normalised per person*: z-scores with the mean and standard deviation of the frames the
avatar is trained on (:class:`MouthCodeStats`), never of held-out frames. The deformation
fields take the normalised code as an input; an audio-to-mouth predictor
(:mod:`core.model.mouth_predictor`) supplies it when new audio drives the avatar.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOUTH_CODE_NAMES: tuple[str, ...] = ("aperture", "width", "protrusion", "jaw")
MOUTH_CODE_DIM = len(MOUTH_CODE_NAMES)

LIP_TOP, LIP_BOTTOM = 13, 14
CORNERS = (61, 291)
LIP_CENTRES = (0, 17)
CHIN, NOSE_BRIDGE = 152, 168
EYE_CORNERS = (33, 263)


def mouth_geometry(points3d: np.ndarray) -> np.ndarray:
    """Raw mouth code of every frame.

    Args:
        points3d: (T, 478, 3) FaceMesh points (pixel x, y; z scaled like x), no NaN.
    Returns:
        (T, 4) float32, columns :data:`MOUTH_CODE_NAMES`, in IOD units.
    """
    from core.data.pose import procrustes_align

    P = np.asarray(points3d, np.float64)
    if P.ndim != 3 or P.shape[1] < 468 or P.shape[2] != 3:
        raise ValueError(f"points3d must be (T, 478, 3), got {P.shape}")
    A, mean = procrustes_align(P)
    iod = max(float(np.linalg.norm(mean[EYE_CORNERS[0]] - mean[EYE_CORNERS[1]])), 1e-9)
    A = A / iod
    aperture = np.linalg.norm(A[:, LIP_TOP] - A[:, LIP_BOTTOM], axis=-1)
    width = np.linalg.norm(A[:, CORNERS[0]] - A[:, CORNERS[1]], axis=-1)
    protrusion = A[:, list(CORNERS), 2].mean(1) - A[:, list(LIP_CENTRES), 2].mean(1)
    jaw = np.linalg.norm(A[:, CHIN] - A[:, NOSE_BRIDGE], axis=-1)
    return np.stack([aperture, width, protrusion, jaw], 1).astype(np.float32)


@dataclass
class MouthCodeStats:
    """Per-person normalisation of the raw mouth code: ``code = (raw - mean) / std``.

    Attributes:
        mean, std: (4,) float32, from the training frames only; ``std`` floored at
            ``min_std`` (IOD units) so a feature that hardly moves is not blown up.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray, min_std: float = 1e-3) -> MouthCodeStats:
        """Statistics of ``raw`` (T, 4): pass only the frames the model is trained on."""
        raw = np.asarray(raw, np.float64)
        return cls(raw.mean(0).astype(np.float32),
                   np.maximum(raw.std(0), min_std).astype(np.float32))

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """(T, 4) raw -> (T, 4) float32 z-scores."""
        return ((np.asarray(raw, np.float32) - self.mean) / self.std).astype(np.float32)

    def denormalise(self, code: np.ndarray) -> np.ndarray:
        """(T, 4) z-scores -> raw IOD units."""
        return (np.asarray(code, np.float32) * self.std + self.mean).astype(np.float32)


#: Column of the expression input kept for models with a mouth-code input: blink (AU45).
BLINK_COLUMN = 5


def mouth_free_expression(expr: np.ndarray) -> np.ndarray:
    """The expression input of a model that takes the mouth code: blink only, the other
    columns (brow and lid AU stand-ins) zero. Measured on held-out seconds, the brow/lid
    stand-ins predict the lips-apart signal with R² up to 0.6 (speech moves the brows and
    cheeks, and FaceMesh couples them); a linear correction fitted on the training seconds
    does not carry over and would feed the recorded lips back in. Blink stays (R² 0.00-0.25,
    see docs/results/lip_sync.md). ``expr`` (T, 6) -> (T, 6) float32."""
    out = np.zeros_like(np.asarray(expr, np.float32))
    out[:, BLINK_COLUMN] = np.asarray(expr, np.float32)[:, BLINK_COLUMN]
    return out


def r2_from(X: np.ndarray, y: np.ndarray) -> float:
    """R² of the least-squares linear prediction (with intercept) of ``y`` (T,) from ``X`` (T, k)."""
    A = np.concatenate([np.asarray(X, np.float64), np.ones((len(X), 1))], 1)
    y = np.asarray(y, np.float64)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    return float(1.0 - (y - A @ coef).var() / max(y.var(), 1e-12))


__all__ = ["BLINK_COLUMN", "MOUTH_CODE_DIM", "MOUTH_CODE_NAMES", "MouthCodeStats",
           "mouth_free_expression", "mouth_geometry", "r2_from"]
