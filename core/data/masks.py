"""Semantic masks of a processed clip: background, torso, hair, face, mouth interior.

One concept: *which pixels are what* in every ``res x res`` frame, and the
static plates built from that (background, per-frame torso + background).

Sources (all offline, bundled with MediaPipe 0.10.21):
  * MediaPipe selfie segmentation (``model_selection=0``, the general 256x256
    model): person probability per pixel; person = probability >
    :attr:`MaskConfig.person_threshold` (0.5).
  * FaceMesh landmarks (from :mod:`core.data.landmarks`): the polygons below.

Label enum (:class:`Label`, uint8):
  0 BACKGROUND  not the person.
  1 TORSO       person pixels not in the head: neck, shoulders, clothes (and hair
                that hangs below the jaw line).
  2 HAIR        head but not face: hair, ears, forehead above the face oval.
                Person pixels above the head cut line and inside the head band
                (see :func:`segment`).
  3 FACE        inside the face-oval polygon (:data:`FACE_OVAL`), minus the mouth
                interior. Always head, whatever the segmentation says.
  4 MOUTH       inside the inner-lip polygon (:data:`INNER_LIPS`): teeth, tongue,
                mouth cavity (empty when the lips are closed).
"""
from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Label(IntEnum):
    """Per-pixel labels returned by :func:`segment`."""

    BACKGROUND = 0
    TORSO = 1
    HAIR = 2
    FACE = 3
    MOUTH = 4


#: Face oval, FaceMesh indices in contour order (clockwise in the image from
#: the forehead top 10, through the subject's left 454, chin 152, right 234).
FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
#: Inner lip contour (mouth opening), contour order starting at the right corner 78.
INNER_LIPS: tuple[int, ...] = (
    78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95,
)
#: Outer lip contour, contour order starting at the right corner 61.
OUTER_LIPS: tuple[int, ...] = (
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
)
#: Lower half of the face oval from the subject's left cheek (454) via the chin
#: (152) to the right cheek (234): the jaw line used for the head/torso cut.
JAW_LINE: tuple[int, ...] = FACE_OVAL[8:29]
#: Jaw-angle landmarks (subject's right 58, left 288): outside the face's
#: horizontal extent the head/torso cut runs at their height (about the ear lobes).
JAW_ANGLES: tuple[int, int] = (58, 288)


@dataclass
class MaskConfig:
    """Settings of :func:`segment`.

    Attributes:
        person_threshold: selfie-segmentation probability above which a pixel is
            the person.
        model_selection: MediaPipe selfie-segmentation model: 0 general
            (256x256 input, suits square crops), 1 landscape (144x256).
        head_band: half-width of the head band around the face centre, in units
            of the face-oval half-width. Person pixels above the cut line and
            inside the band are hair/head (2), the rest torso (1). 1.8 takes in
            ears and most hair, not the shoulders.
        side_cut: beside the face, the head/torso cut runs at the jaw-angle
            height (0) ... the chin height (1); see :func:`label_frame`.
    """

    person_threshold: float = 0.5
    model_selection: int = 0
    head_band: float = 1.8
    side_cut: float = 1.0


def _person_prob(frames: Iterable[np.ndarray], cfg: MaskConfig) -> Iterable[np.ndarray]:
    """Yield (H, W) float32 person probabilities, one per frame."""
    import contextlib
    import itertools
    import time

    import mediapipe as mp

    from core.data.landmarks import quiet_native_logs

    it = iter(frames)
    head = next(it, None)  # read before building the graph: its start-up logs are async
    if head is None:
        return
    with quiet_native_logs():
        seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=cfg.model_selection)
    t0 = time.monotonic()
    with seg:
        for f in itertools.chain([head], it):
            # start-up logs are asynchronous: stay quiet for the first 0.5 s
            with quiet_native_logs() if time.monotonic() - t0 < 0.5 else contextlib.nullcontext():
                r = seg.process(np.ascontiguousarray(f))
            yield r.segmentation_mask


def fill_polygon(mask: np.ndarray, pts: np.ndarray, value: int) -> None:
    """Set ``mask`` to ``value`` at pixels whose centre lies inside the polygon.

    ``pts`` (V, 2) in continuous pixel coordinates (pixel ``(i, j)`` has its
    centre at ``(i + 0.5, j + 0.5)``); even-odd rule, evaluated only inside the
    polygon's bounding box. A degenerate polygon (closed lips) covers no pixel,
    unlike cv2.fillPoly, which always draws the outline.
    """
    H, W = mask.shape
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 <= x0 or y1 <= y0:
        return
    px = np.arange(x0, x1) + 0.5
    py = (np.arange(y0, y1) + 0.5)[:, None, None]
    a = pts[None, None, :, :]
    b = np.roll(pts, -1, axis=0)[None, None, :, :]
    ay, by = a[..., 1], b[..., 1]
    crosses = (ay > py) != (by > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = a[..., 0] + (py - ay) * (b[..., 0] - a[..., 0]) / (by - ay)
    inside = (crosses & (px[None, :, None] < xi)).sum(-1) % 2 == 1
    mask[y0:y1, x0:x1][inside] = value


def label_frame(person: np.ndarray, pts: np.ndarray, cfg: MaskConfig | None = None) -> np.ndarray:
    """Labels of one frame.

    Args:
        person: (H, W) bool person mask.
        pts: (478, 2) landmarks in pixels of this frame.
    Returns:
        (H, W) uint8 labels (:class:`Label`).

    Head/torso cut: a pixel at column ``u`` belongs to the head side if it lies
    above the jaw line (:data:`JAW_LINE`, linearly interpolated in ``u``);
    left/right of the face's horizontal extent the cut runs lower, at the
    jaw-angle landmark's height on that side (:data:`JAW_ANGLES`) moved
    ``cfg.side_cut`` of the way down to the chin (ears, earrings and hair
    beside the jaw are head); and only pixels with
    ``|u - face centre| <= cfg.head_band * face half-width`` can be head.
    """
    cfg = cfg or MaskConfig()
    H, W = person.shape
    lab = np.where(person, np.uint8(Label.TORSO), np.uint8(Label.BACKGROUND)).astype(np.uint8)
    oval = pts[list(FACE_OVAL)]
    x_min, x_max = float(oval[:, 0].min()), float(oval[:, 0].max())
    cx, half = (x_min + x_max) / 2, max((x_max - x_min) / 2, 1.0)
    jaw = pts[list(JAW_LINE)]
    order = np.argsort(jaw[:, 0])
    jx, jy = jaw[order, 0], jaw[order, 1]
    u = np.arange(W) + 0.5
    cut = np.interp(u, jx, jy)
    chin = pts[152, 1]
    y_r, y_l = (pts[JAW_ANGLES[k], 1] + cfg.side_cut * (chin - pts[JAW_ANGLES[k], 1]) for k in (0, 1))
    # subject's right (58) is normally on the image left
    left_side, right_side = (y_r, y_l) if pts[JAW_ANGLES[0], 0] < pts[JAW_ANGLES[1], 0] else (y_l, y_r)
    cut[u < jx[0]] = left_side
    cut[u > jx[-1]] = right_side
    v = np.arange(H)[:, None] + 0.5
    head_zone = (v < cut[None, :]) & (np.abs(u - cx) <= cfg.head_band * half)[None, :]
    lab[head_zone & person] = Label.HAIR
    face = np.zeros((H, W), np.uint8)
    fill_polygon(face, oval, 1)
    lab[face > 0] = Label.FACE
    mouth = np.zeros((H, W), np.uint8)
    fill_polygon(mouth, pts[list(INNER_LIPS)], 1)
    lab[mouth > 0] = Label.MOUTH
    return lab


def segment(frames: Iterable[np.ndarray], points2d: np.ndarray, cfg: MaskConfig | None = None) -> np.ndarray:
    """Label every pixel of every frame.

    Args:
        frames: (T, res, res, 3) uint8 RGB array or an iterable of such frames.
        points2d: (T, 478, 2) FaceMesh landmarks in pixels of these frames
            (no NaN: use ``LandmarkTrack.filled()``).
        cfg: :class:`MaskConfig`.
    Returns:
        (T, res, res) uint8 labels, see :class:`Label`.
    """
    cfg = cfg or MaskConfig()
    pts = np.asarray(points2d, np.float32)
    out: list[np.ndarray] = []
    for i, prob in enumerate(_person_prob(frames, cfg)):
        if i >= len(pts):
            raise ValueError(f"more frames than landmark rows ({len(pts)})")
        out.append(label_frame(prob > cfg.person_threshold, pts[i, :, :2], cfg))
    if len(out) != len(pts) or not out:
        raise ValueError(f"{len(out)} frames but {len(pts)} landmark rows")
    return np.stack(out)


def lips_boxes(points2d: np.ndarray, res: int) -> np.ndarray:
    """(T, 4) int32 bounding boxes ``x0, y0, x1, y1`` of the outer lips.

    Pixel indices, end-exclusive (``frame[y0:y1, x0:x1]`` covers every pixel the
    outer-lip polygon :data:`OUTER_LIPS` touches), clipped to ``[0, res]``.
    """
    p = np.asarray(points2d)[:, list(OUTER_LIPS), :2]
    lo = np.floor(p.min(1)).astype(np.int32)
    hi = np.ceil(p.max(1)).astype(np.int32)
    return np.clip(np.concatenate([lo, hi], 1), 0, res).astype(np.int32)


@dataclass
class PlateConfig:
    """Settings of :func:`background_plate`.

    Attributes:
        min_distance_px: a pixel counts as seen only if, in its best frame, it
            is at least this far (pixels) from the person; nearer pixels carry
            segmentation-edge colour and are inpainted instead.
        inpaint_radius: cv2.inpaint radius (pixels, Telea method).
    """

    min_distance_px: float = 2.0
    inpaint_radius: int = 5


def background_plate(frames: Iterable[np.ndarray], labels: Iterable[np.ndarray], cfg: PlateConfig | None = None) -> np.ndarray:
    """Static background image of the clip.

    For every pixel the colour comes from the frame in which that pixel is
    background and farthest from the person (Euclidean distance transform of
    the background mask, i.e. distance to the nearest non-background pixel).
    Pixels that are never at least ``cfg.min_distance_px`` from the person in
    any frame (always covered, or only at the silhouette edge) are filled by
    ``cv2.inpaint`` (Telea) from their surroundings. Streams: one frame in
    memory at a time.

    Args:
        frames: iterable of (res, res, 3) uint8 RGB frames.
        labels: iterable of matching (res, res) uint8 labels from :func:`segment`.
    Returns:
        (res, res, 3) uint8 RGB plate.
    """
    import cv2

    cfg = cfg or PlateConfig()
    best_d: np.ndarray | None = None
    plate: np.ndarray | None = None
    for f, lab in zip(frames, labels):
        bg = (np.asarray(lab) == Label.BACKGROUND).astype(np.uint8)
        d = cv2.distanceTransform(bg, cv2.DIST_L2, 5)
        if best_d is None:
            best_d, plate = d, np.array(f, np.uint8, copy=True)
            continue
        better = d > best_d
        best_d[better] = d[better]
        plate[better] = f[better]
    if plate is None:
        raise ValueError("background_plate needs at least one frame")
    holes = (best_d < cfg.min_distance_px).astype(np.uint8)
    if holes.all():
        return np.zeros_like(plate)
    if holes.any():
        plate = cv2.inpaint(plate, holes, cfg.inpaint_radius, cv2.INPAINT_TELEA)
    return plate


def head_mask(labels: np.ndarray) -> np.ndarray:
    """Bool mask of the head (hair 2, face 3, mouth 4); any shape."""
    return np.asarray(labels) >= Label.HAIR


@dataclass
class TorsoPlateConfig:
    """Settings of :func:`torso_plate`.

    Attributes:
        blur_frac: the filled head area is smoothed by a Gaussian of this standard deviation,
            as a fraction of the frame width (0.015 = 3.8 px at 256 px): the nearest-pixel fill
            becomes a soft continuation of the neck, collar, hair and background around it.
    """

    blur_frac: float = 0.015


def _fill_from_surroundings(frame: np.ndarray, hole: np.ndarray, sigma: float) -> np.ndarray:
    """``frame`` (H, W, 3) uint8 with the ``hole`` (H, W) bool pixels filled from outside it:
    each hole pixel takes the colour of its nearest non-hole pixel, then the hole is smoothed
    by a Gaussian of ``sigma`` pixels. A frame that is all hole is returned unchanged."""
    import cv2
    from scipy.ndimage import distance_transform_edt

    if not hole.any() or hole.all():
        return frame
    _, (iy, ix) = distance_transform_edt(hole, return_indices=True)
    near = frame[iy, ix]
    if sigma > 0:
        near = cv2.GaussianBlur(near, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                borderType=cv2.BORDER_REPLICATE)
    return np.where(hole[..., None], near, frame)


def torso_plate(frames: np.ndarray, labels: np.ndarray,
                cfg: TorsoPlateConfig | None = None) -> np.ndarray:
    """Frames with the head replaced by what lies around it: the project's one plate builder.

    This is the image the rendered head is composited onto (training targets, the
    avatar's ``plates.mp4``, the benchmark's baselines): recorded torso and background of
    each frame, and where the head was, a continuation of its surroundings in that frame
    (:func:`_fill_from_surroundings`): the neck and collar extended up under the chin,
    hair edges continued by the background next to them. Wherever the rendered head is not
    fully opaque (its soft edge), the plate shows what a viewer expects there, not a flat
    background colour.

    Args:
        frames: (..., res, res, 3) uint8 RGB, one frame or a batch.
        labels: (..., res, res) uint8 labels of those frames (:class:`Label`).
        cfg: :class:`TorsoPlateConfig`.
    Returns:
        (..., res, res, 3) uint8 RGB; pixels outside the head are the frame's own.
    """
    cfg = cfg or TorsoPlateConfig()
    f = np.asarray(frames, np.uint8)
    heads = head_mask(labels)
    flat_f = f.reshape(-1, *f.shape[-3:])
    flat_h = heads.reshape(-1, *heads.shape[-2:])
    sigma = cfg.blur_frac * f.shape[-2]
    out = np.stack([_fill_from_surroundings(x, h, sigma) for x, h in zip(flat_f, flat_h)])
    return out.reshape(f.shape)
