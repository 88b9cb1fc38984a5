"""Expression signals from FaceMesh landmark geometry (stand-ins for OpenFace AUs).

One concept: *how the eyes, brows and lips move* in every frame, as a few numbers
per frame that feed the deformation field's expression path (METHOD.md section 3:
5 brow/eye action units + blink).

Landmark sides follow MediaPipe: "left" is the subject's left (image right).

Geometry (all distances measured after removing the head pose, see
:func:`expression_signals`; ``IOD`` = distance of the outer eye corners 33-263,
``FW`` = face width 234-454, both of the clip's mean shape):

==================  =======================================================
eye (right / left)  corners 33-133 / 263-362, upper lid 160,159,158 /
                    387,386,385, lower lid 144,145,153 / 373,374,380
eye aspect ratio    (|160-144| + |158-153|) / (2 |33-133|) (left: 387-373,
                    385-380, 263-362)
brows (r / l)       upper brow 70,63,105,66,107 / 300,293,334,296,336;
                    inner brow 107 / 336
cheek (r / l)       50 / 280
lips                inner-lip middle 13 (upper), 14 (lower)
==================  =======================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.pose import procrustes_align

R_EYE = {"outer": 33, "inner": 133, "upper": (160, 159, 158), "lower": (144, 145, 153)}
L_EYE = {"outer": 263, "inner": 362, "upper": (387, 386, 385), "lower": (373, 374, 380)}
R_BROW = (70, 63, 105, 66, 107)
L_BROW = (300, 293, 334, 296, 336)
R_CHEEK, L_CHEEK = 50, 280
LIP_TOP, LIP_BOTTOM = 13, 14

#: Named geometric columns of :attr:`Expression.values`, in order.
SIGNAL_NAMES: tuple[str, ...] = (
    "blink_left", "blink_right", "brow_raise_left", "brow_raise_right", "lid_open", "lips_apart",
)
#: Columns of :attr:`Expression.au`, in order: OpenFace AU numbers they stand in for.
AU_NAMES: tuple[str, ...] = ("AU01", "AU04", "AU05", "AU06", "AU07", "AU45", "AU25")


@dataclass
class ExpressionConfig:
    """Settings of :func:`expression_signals`.

    Attributes:
        open_percentile: percentile of a clip's eye aspect ratio taken as "eye
            open" (most frames are open; blinks are short).
        closed_fraction: an eye aspect ratio at or below this fraction of the
            open value counts as fully closed (blink = 1); blink falls linearly
            to 0 at ``open_fraction``. Measured: closed eyes give ~10-25 % of the
            open EAR with FaceMesh, half-closed (looking down) ~50 %.
        open_fraction: an eye aspect ratio at or above this fraction of the open
            value counts as open (blink = 0). Below 1 so that the small narrowing
            that comes with speech (smiling, FaceMesh coupling the lids to the jaw)
            is not read as a blink: with 1.0, blink predicts held-out lips-apart
            with R² up to 0.24 (man_256_26s); with 0.75 at most 0.05 on the five
            evaluation clips (docs/results/lip_sync.md).
        lo_percentile, hi_percentile: per-clip robust range of each AU raw
            signal, mapped to [0, 1] (values outside are clipped).
        min_range: floor of that range in IOD units (0.02 = 2 % of the
            eye-corner distance), so a signal that hardly moves in a clip is not
            blown up to full scale: its AU stays near 0.
    """

    open_percentile: float = 90.0
    closed_fraction: float = 0.35
    open_fraction: float = 0.75

    def __post_init__(self) -> None:
        if not 0.0 <= self.closed_fraction < self.open_fraction <= 1.0:
            raise ValueError(f"need 0 <= closed_fraction < open_fraction <= 1, got "
                             f"{self.closed_fraction} / {self.open_fraction}")
    lo_percentile: float = 5.0
    hi_percentile: float = 95.0
    min_range: float = 0.02


@dataclass
class Expression:
    """Per-frame expression signals of a clip.

    Attributes:
        values: (T, 6) float32, columns :data:`SIGNAL_NAMES`:
            ``blink_left``/``blink_right`` in [0, 1] (1 = closed; from the eye
            aspect ratio, per-clip open level, see :class:`ExpressionConfig`);
            ``brow_raise_left``/``right``: mean upper-brow to eye-centre distance
            in IOD units (bigger = raised; ~0.25-0.32 measured); ``lid_open``: mean upper-lid height
            above the eye-corner line in IOD units (both eyes); ``lips_apart``:
            inner-lip gap |13-14| in FW units (0 closed; measured
            medians 0.06-0.09 and maxima ~0.15 on speaking clips).
        au: (T, 7) float32 in [0, 1], columns :data:`AU_NAMES`, each raw signal
            mapped per clip from its [p5, p95] range to [0, 1]:
            AU01 inner brow raiser = inner brow (107/336) height above the inner
            eye corners; AU04 brow lowerer = minus (brow height + inner-brow
            gap 107-336); AU05 upper lid raiser = lid_open; AU06 cheek raiser =
            minus cheek (50/280) to lower-lid distance; AU07 lid tightener =
            minus lower-lid height below the corner line; AU45 blink = mean of
            blink_left/right (already in [0, 1], not re-mapped); AU25 lips part
            = lips_apart.
    """

    values: np.ndarray
    au: np.ndarray
    names: tuple[str, ...] = SIGNAL_NAMES
    au_names: tuple[str, ...] = AU_NAMES

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __getitem__(self, name: str) -> np.ndarray:
        """(T,) column by name, from :attr:`names` or :attr:`au_names`."""
        if name in self.names:
            return self.values[:, self.names.index(name)]
        if name in self.au_names:
            return self.au[:, self.au_names.index(name)]
        raise KeyError(name)

    def model_input(self) -> np.ndarray:
        """(T, 6) float32: the 5 brow/eye AUs (01, 04, 05, 06, 07) then blink (AU45),
        the expression input of METHOD.md section 3."""
        return self.au[:, :6].astype(np.float32)


def _dist(P: np.ndarray, a, b) -> np.ndarray:
    pa = P[:, list(a)].mean(1) if isinstance(a, tuple) else P[:, a]
    pb = P[:, list(b)].mean(1) if isinstance(b, tuple) else P[:, b]
    return np.linalg.norm(pa - pb, axis=-1)


def _height_below_line(P: np.ndarray, pts, c0: int, c1: int) -> np.ndarray:
    """Signed distance of the mean of ``pts`` from the line c0-c1 (2D, image
    x/y of the aligned points); positive = below (larger y)."""
    p = P[:, list(pts), :2].mean(1)
    a, b = P[:, c0, :2], P[:, c1, :2]
    d = b - a
    n = np.stack([-d[:, 1], d[:, 0]], 1) / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    n = n * np.sign(n[:, 1:2] + 1e-12)  # normal pointing down the image
    return ((p - a) * n).sum(1)


def _ear(P: np.ndarray, eye: dict) -> np.ndarray:
    up, lo = eye["upper"], eye["lower"]
    v = _dist(P, up[0], lo[0]) + _dist(P, up[2], lo[2])
    return v / (2 * np.maximum(_dist(P, eye["outer"], eye["inner"]), 1e-12))


def _unit(x: np.ndarray, lo_p: float, hi_p: float, min_range: float, n: int) -> np.ndarray:
    """``x`` mapped to [0, 1] by the [lo_p, hi_p] percentile range of its first ``n`` values."""
    lo, hi = np.percentile(x[:n], lo_p), np.percentile(x[:n], hi_p)
    return np.clip((x - lo) / max(hi - lo, min_range), 0.0, 1.0)


def expression_signals(points: np.ndarray, cfg: ExpressionConfig | None = None,
                       fit_frames: int | None = None) -> Expression:
    """Expression signals of a clip from its FaceMesh landmarks.

    Args:
        points: (T, 478, 3) FaceMesh points (pixel x, y and z scaled like x;
            preferred: the head pose is removed in 3D) or (T, 478, 2) pixel
            landmarks (only in-plane pose is removed). No NaN (fill misses
            first with ``LandmarkTrack.filled()``).
        cfg: :class:`ExpressionConfig`.
        fit_frames: every normalisation statistic (mean shape, eye and face widths,
            open-eye level, percentile ranges) comes from the first ``fit_frames``
            frames only (the training part of a clip; None = all frames); later
            frames are mapped with those statistics and cannot change earlier values.
    Returns:
        :class:`Expression`.
    """
    cfg = cfg or ExpressionConfig()
    P = np.asarray(points, np.float64)
    if P.ndim != 3 or P.shape[1] < 468 or P.shape[2] not in (2, 3):
        raise ValueError(f"points must be (T, 478, 2|3), got {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError("points contain NaN; fill missing frames first")
    n = len(P) if fit_frames is None else int(fit_frames)
    if not 1 <= n <= len(P):
        raise ValueError(f"fit_frames={fit_frames} must be in [1, {len(P)}]")
    A, _ = procrustes_align(P, fit_frames=n)
    mean = A[:n].mean(0)
    iod = float(np.linalg.norm(mean[33] - mean[263]))
    fw = float(np.linalg.norm(mean[234] - mean[454]))
    A = A / iod  # IOD units from here

    ear_l, ear_r = _ear(A, L_EYE), _ear(A, R_EYE)

    def blink(ear: np.ndarray) -> np.ndarray:
        open_ = np.percentile(ear[:n], cfg.open_percentile)
        span = max(open_ * (cfg.open_fraction - cfg.closed_fraction), 1e-6)
        return np.clip((cfg.open_fraction * open_ - ear) / span, 0.0, 1.0)

    blink_l, blink_r = blink(ear_l), blink(ear_r)
    eye_c_l = (L_EYE["outer"], L_EYE["inner"])
    eye_c_r = (R_EYE["outer"], R_EYE["inner"])
    brow_l = _dist(A, L_BROW, eye_c_l)
    brow_r = _dist(A, R_BROW, eye_c_r)
    # upper lid height above the corner line (positive = open)
    lid_l = -_height_below_line(A, L_EYE["upper"], *eye_c_l)
    lid_r = -_height_below_line(A, R_EYE["upper"], *eye_c_r)
    lid_open = (lid_l + lid_r) / 2
    lips_apart = np.maximum(_dist(A, LIP_TOP, LIP_BOTTOM) * iod / fw, 0.0)

    inner_brow = (_dist(A, 336, L_EYE["inner"]) + _dist(A, 107, R_EYE["inner"])) / 2
    brow_gap = _dist(A, 107, 336)
    lower_lid = (_height_below_line(A, L_EYE["lower"], *eye_c_l) + _height_below_line(A, R_EYE["lower"], *eye_c_r)) / 2
    cheek = (_dist(A, L_CHEEK, L_EYE["lower"]) + _dist(A, R_CHEEK, R_EYE["lower"])) / 2

    u = lambda x: _unit(x, cfg.lo_percentile, cfg.hi_percentile, cfg.min_range, n)
    au = np.stack([
        u(inner_brow),                         # AU01
        u(-((brow_l + brow_r) / 2 + brow_gap)),  # AU04
        u(lid_open),                           # AU05
        u(-cheek),                             # AU06
        u(-lower_lid),                         # AU07
        (blink_l + blink_r) / 2,               # AU45
        _unit(lips_apart, cfg.lo_percentile, cfg.hi_percentile, cfg.min_range * iod / fw, n),  # AU25
    ], 1).astype(np.float32)
    values = np.stack([blink_l, blink_r, brow_l, brow_r, lid_open, lips_apart], 1).astype(np.float32)
    return Expression(values=values, au=au)
