"""The full frame: the source's own size, the crop box in it, and putting a rendered crop back.

One concept: *where the square crop sits in the recorded frame, and how a rendered crop
goes back into it without a seam*.

- :func:`output_size`: the source's size with its long side capped (:data:`MAX_SIDE`,
  1920 px) and both sides even (rounded down; 4:2:0 video); portrait, square and landscape alike.
- :class:`FullFrame`: the source size, the output size and the crop box in output pixels
  (rounded to whole pixels: at most half an output pixel off where the source was scaled
  down; exact otherwise). Stored in a processed clip's manifest (``full_frame``) and an
  avatar's metadata, versioned (:data:`VERSION`).
- :func:`box_feather`: a square alpha that is 1 inside and falls to 0 at the crop box's
  edge over ``feather`` pixels (smoothstep), so a whole rendered crop pasted back shows no
  seam where the box meets the frame.
- :func:`lower_face_mask`: the soft region the audio drives (lips, jaw, cheeks below the
  nose), from one frame's tracked FaceMesh landmarks, enlarged so a jaw that opens wider
  than the recorded one stays inside, feathered. It follows the head pose because the
  landmarks are the looped frame's own.
- :func:`composite`: a rendered ``res x res`` crop resized to the box and blended into a
  full frame with a ``res x res`` alpha (resized with it); outside the box the frame is
  untouched.

Everything here works on small arrays (tests use synthetic frames with known answers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Longest output side in pixels (a 4K source is scaled down to 1920 on its long side).
MAX_SIDE = 1920
#: Name of the recorded frames' file, in a processed clip's folder and in an avatar's.
SOURCE_FILE = "source.mp4"
#: Format version of the ``full_frame`` entry (manifest and avatar metadata).
VERSION = 1
#: The lower-face polygon: the face oval from the subject's left cheek at nose height (323)
#: through the chin (152) to the right cheek (93), closed under the nose (2).
LOWER_FACE: tuple[int, ...] = (
    323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132,
    93, 2,
)


def _even(x: float) -> int:
    """The even number at or below ``x`` (at least 2; a hair of float error forgiven)."""
    import math

    return max(2, 2 * math.floor(x / 2 + 1e-6))


def output_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """``(w, h)``: the source's ``width x height`` scaled so its long side is at most
    ``max_side`` (never enlarged), each side rounded down to an even number (at least 2)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    s = min(1.0, max_side / max(width, height))
    return _even(width * s), _even(height * s)


@dataclass(frozen=True)
class FullFrame:
    """Where the crop sits in the output frame.

    Attributes:
        width, height: output frame size in pixels (even, long side <= :data:`MAX_SIDE`).
        box: ``(x0, y0, x1, y1)`` the crop box in output pixels, end-exclusive, square
            (``x1 - x0 == y1 - y0``), inside the frame.
        source_size: ``(W, H)`` of the recording (displayed orientation).
        source_crop: ``(x0, y0, x1, y1)`` the crop box in source pixels.
    """

    width: int
    height: int
    box: tuple[int, int, int, int]
    source_size: tuple[int, int]
    source_crop: tuple[int, int, int, int]

    @classmethod
    def from_source(cls, width: int, height: int, crop: tuple[int, int, int, int],
                    max_side: int = MAX_SIDE) -> "FullFrame":
        """The output frame of a ``width x height`` source whose square crop is ``crop``
        (source pixels)."""
        w, h = output_size(width, height, max_side)
        sx, sy = w / width, h / height
        x0, y0, x1, y1 = (float(c) for c in crop)
        side = max(1, min(round((x1 - x0) * (sx + sy) / 2), w, h))
        bx = min(max(round(x0 * sx), 0), w - side)
        by = min(max(round(y0 * sy), 0), h - side)
        return cls(w, h, (bx, by, bx + side, by + side), (int(width), int(height)),
                   tuple(int(c) for c in crop))  # type: ignore[arg-type]

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "width": self.width, "height": self.height,
                "box": list(self.box), "source_size": list(self.source_size),
                "source_crop": list(self.source_crop)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FullFrame":
        if int(d.get("version", 0)) > VERSION:
            raise ValueError(f"full_frame entry of version {d.get('version')} is newer than "
                             f"this code's {VERSION}")
        return cls(int(d["width"]), int(d["height"]), tuple(int(v) for v in d["box"]),
                   tuple(int(v) for v in d["source_size"]),
                   tuple(int(v) for v in d["source_crop"]))  # type: ignore[arg-type]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def box_feather(side: int, feather: float) -> np.ndarray:
    """(side, side) float32 alpha: 0 at the square's border, rising to 1 at ``feather``
    pixels inside it (smoothstep of the distance to the nearest edge, pixel centres),
    1 in the interior. ``feather <= 0``: all ones (a hard edge)."""
    if feather <= 0:
        return np.ones((side, side), np.float32)
    d = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float32) + 0.5
    ramp = _smoothstep(d / float(feather))
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def lower_face_mask(points2d: np.ndarray, res: int, grow: float = 0.25,
                    feather: float = 0.06) -> np.ndarray:
    """(res, res) float32 alpha of the part of the face the audio drives.

    Args:
        points2d: (478, 2) FaceMesh landmarks of one frame in crop pixels at ``res``.
        grow: the polygon :data:`LOWER_FACE` is enlarged about its centroid by this
            fraction (an opened jaw reaches below the recorded chin).
        feather: Gaussian edge width as a fraction of the face's size (the landmark
            box's larger side); the alpha is 0.5 on the enlarged polygon's outline.
    """
    import cv2

    pts = np.asarray(points2d, np.float64)[list(LOWER_FACE)]
    centre = pts.mean(0)
    poly = centre + (pts - centre) * (1.0 + grow)
    mask = np.zeros((res, res), np.float32)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA,
                 shift=4)
    face = float(np.ptp(np.asarray(points2d, np.float64), axis=0).max())
    sigma = max(0.5, feather * face)
    return cv2.GaussianBlur(mask, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)


def resize(img: np.ndarray, side: int) -> np.ndarray:
    """A square (res, res[, C]) array resized to (side, side[, C]): bicubic up, area down."""
    import cv2

    if img.shape[0] == side:
        return img
    interp = cv2.INTER_CUBIC if side > img.shape[0] else cv2.INTER_AREA
    return cv2.resize(img, (side, side), interpolation=interp)


def composite(frame: np.ndarray, head: np.ndarray, box: tuple[int, int, int, int],
              alpha: np.ndarray) -> np.ndarray:
    """``frame`` with ``head`` blended into ``box``.

    Args:
        frame: (H, W, 3) uint8, the full frame (not modified).
        head: (r, r, 3) uint8, the rendered crop (resized to the box).
        box: ``(x0, y0, x1, y1)`` square, inside the frame.
        alpha: (r, r) or (side, side) float in [0, 1], the head's weight (resized to the
            box bilinearly).

    Returns:
        (H, W, 3) uint8: ``frame + alpha * (head - frame)`` inside the box, ``frame``
        outside.
    """
    import cv2

    x0, y0, x1, y1 = box
    side = x1 - x0
    if y1 - y0 != side or x0 < 0 or y0 < 0 or x1 > frame.shape[1] or y1 > frame.shape[0]:
        raise ValueError(f"box {box} is not a square inside the {frame.shape[1]}x"
                         f"{frame.shape[0]} frame")
    a = alpha if alpha.shape[0] == side else cv2.resize(
        np.asarray(alpha, np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    a = np.clip(a, 0.0, 1.0)
    out = frame.copy()
    rows, cols = np.flatnonzero(a.max(1) > 0), np.flatnonzero(a.max(0) > 0)
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # only where alpha > 0
    h = resize(head, side)[r0:r1, c0:c1].astype(np.float32)
    region = out[y0 + r0:y0 + r1, x0 + c0:x0 + c1].astype(np.float32)
    region += a[r0:r1, c0:c1, None] * (h - region)
    out[y0 + r0:y0 + r1, x0 + c0:x0 + c1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out
