"""Zoomed crops of the jaw line and chin of rendered videos, on one grid image.

``python -m eval.studies.jawline VIDEO... --out PNG [--frames N] [--line-check CLIP_DIR]``

Where a rendered head meets the neck and the background, a head that is not fully opaque
up to its edge lets the plate behind it show through: a thin line under the chin or along
the cheek, one or two pixels wide, invisible at full-frame scale. This tool makes it
visible. For each video, ``N`` frames evenly spaced over its length (on the 25 fps
timeline of :func:`core.data.media.iter_frames`) go through FaceMesh
(:func:`core.data.landmarks.detect_landmarks`, still-image mode: the frames are far apart);
the box around the lower face oval (:data:`core.data.masks.JAW_LINE`: cheek, jaw angle,
chin, other cheek), grown by ``pad`` of its size on each side, is cut out and enlarged by
an integer factor with nearest-neighbour sampling (each source pixel becomes a k x k block,
so a one-pixel line stays one sharp line). A crop larger than its tile is shrunk by an
integer stride instead (never smoothed).

Grid layout (all sizes in pixels, :class:`JawGridConfig`): one row per video, a title
band (``title_px`` high: the file name, its frame count, the zoom and the frames without a
face) above ``frames`` tiles of ``tile`` (width, height) each, every tile captioned below
(``caption_px``: frame number and time) and ``gap_px`` between tiles and rows::

    width  = gap + frames * (tile_w + gap)
    height = gap + videos * (title + tile_h + caption + gap)

A frame in which FaceMesh finds no face is skipped (its tile stays empty), named in its
row's title and in the returned :class:`JawRow`. The PNG is written atomically.

``--line-check CLIP_DIR`` turns the look into a count (:func:`background_line_in_video`):
in every 5th frame, head pixels along the jaw (FaceMesh face oval against the neck below the
jaw line) whose colour is nearer the clip's background plate than both the face and the neck
colours next to them (:func:`background_line_pixels`, also used by the tests on the
training labels).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.progress import ProgressFn, run_cli_job
from core.data.preprocess import FPS

#: Grid background and text colours (RGB).
BACKGROUND = (40, 40, 40)
TEXT = (235, 235, 235)


@dataclass(frozen=True)
class JawGridConfig:
    """Settings of :func:`jawline_grid` (sizes in pixels).

    Attributes:
        frames: frames per video, evenly spaced from its first to its last frame.
        pad: the jaw box grows by this fraction of its width / height on each side.
        tile: (width, height) of one crop's cell; a crop is enlarged by the largest
            integer factor that fits (x3 for the jaw of a 256 px render).
        title_px: height of a row's title band.
        caption_px: height of the caption band under each tile.
        gap_px: space between tiles and between rows.
    """

    frames: int = 5
    pad: float = 0.15
    tile: tuple[int, int] = (600, 420)
    title_px: int = 24
    caption_px: int = 20
    gap_px: int = 4

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if min(self.tile) < 16 or self.pad < 0:
            raise ValueError(f"tile {self.tile} must be at least 16 x 16 and pad {self.pad} >= 0")


@dataclass
class JawRow:
    """One video's row.

    Attributes:
        video: the file.
        total_frames: its length in frames (25 fps).
        shown: frame indices with a crop in the grid.
        skipped: picked frame indices in which FaceMesh found no face.
        scale: the crops' enlargement (``'x2'``; ``'1/2'`` = shrunk by a stride of 2).
    """

    video: Path
    total_frames: int
    shown: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    scale: str = ""


def pick_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices evenly spaced over ``[0, total - 1]`` (all frames when fewer)."""
    if total <= 0:
        return []
    return sorted({round(float(x)) for x in np.linspace(0, total - 1, min(n, total))})


def read_picked(video: Path, n: int) -> tuple[int, list[int], list[np.ndarray]]:
    """``(total frames, picked indices, their (H, W, 3) uint8 frames)`` of a video: one
    pass counts the frames, a second keeps only the picked ones (memory: n frames)."""
    from core.data.media import iter_frames

    total = sum(1 for _ in iter_frames(video, fps=FPS))
    idx = pick_indices(total, n)
    want, frames = set(idx), []
    if idx:
        for i, f in enumerate(iter_frames(video, fps=FPS, max_frames=idx[-1] + 1)):
            if i in want:
                frames.append(np.ascontiguousarray(f))
    return total, idx[:len(frames)], frames


def jaw_box(points: np.ndarray, width: int, height: int, pad: float):
    """End-exclusive pixel box ``(x0, y0, x1, y1)`` around the :data:`JAW_LINE` landmarks of
    one (478, 2+) FaceMesh frame, grown by ``pad`` of its size per side, clipped to the
    image (``eval.metrics.frames.landmark_box``)."""
    from core.data.masks import JAW_LINE
    from eval.metrics.frames import landmark_box

    return landmark_box(np.asarray(points)[list(JAW_LINE)], width, height, margin=pad)


def fit_scale(height: int, width: int, tile: tuple[int, int]) -> tuple[int, int]:
    """``(k, s)``: the largest integer enlargement ``k`` of a ``height`` x ``width`` crop
    that fits in ``tile`` (width, height), with stride ``s`` = 1; when even ``k`` = 1 is
    too large, ``k`` = 1 and the smallest stride ``s`` that fits."""
    k = min(tile[0] // width, tile[1] // height)
    if k >= 1:
        return k, 1
    return 1, math.ceil(max(width / tile[0], height / tile[1]))


def scale_label(scale: tuple[int, int]) -> str:
    """``'x3'`` for an enlargement, ``'1/2'`` for a stride."""
    k, s = scale
    return f"x{k}" if s == 1 else f"1/{s}"


def zoom(crop: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of an (h, w, 3) crop by :func:`fit_scale`'s ``(k, s)``:
    every ``s``-th pixel, each repeated as a k x k block (never smoothed)."""
    k, s = scale
    c = crop[::s, ::s]
    return np.repeat(np.repeat(c, k, axis=0), k, axis=1) if k > 1 else c


def _text(img: np.ndarray, text: str, x: int, y_top: int, band: int) -> None:
    """White text, vertically centred in a band of height ``band`` starting at ``y_top``."""
    import cv2

    scale = max(0.3, min(0.6, band / 40.0))
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y = y_top + max(0, band - th - base - 1) // 2 + th  # descenders stay in the band
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT, 1, cv2.LINE_AA)


def grid_size(videos: int, cfg: JawGridConfig) -> tuple[int, int]:
    """(width, height) of the grid image of ``videos`` rows (module doc)."""
    tw, th = cfg.tile
    return (cfg.gap_px + cfg.frames * (tw + cfg.gap_px),
            cfg.gap_px + videos * (cfg.title_px + th + cfg.caption_px + cfg.gap_px))


def jawline_grid(videos: Sequence[str | Path], out: str | Path,
                 cfg: JawGridConfig | None = None,
                 progress: ProgressFn | None = None) -> list[JawRow]:
    """Write the jaw-line crop grid of ``videos`` to the PNG ``out`` (module doc).

    Returns one :class:`JawRow` per video. Raises ValueError for an ``out`` that is not a
    ``.png``, :class:`core.errors.InputError` for an unreadable video (nothing is written).
    """
    import cv2

    from core.atomic import write_bytes
    from core.data.landmarks import DetectConfig, detect_landmarks

    cfg = cfg or JawGridConfig()
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"the grid is a PNG image, so {out.name!r} needs a .png name "
                         "(e.g. --out jawline.png)")
    videos = [Path(v) for v in videos]
    if not videos:
        raise ValueError("no video given")
    report = progress or (lambda s, f: None)
    W, H = grid_size(len(videos), cfg)
    img = np.empty((H, W, 3), np.uint8)
    img[:] = BACKGROUND
    tw, th = cfg.tile
    rows: list[JawRow] = []
    for r, video in enumerate(videos):
        report(f"{video.name}: reading frames", r / len(videos))
        total, idx, frames = read_picked(video, cfg.frames)
        row = JawRow(video, total)
        tr = None
        if frames:
            report(f"{video.name}: FaceMesh on {len(frames)} frames", (r + 0.5) / len(videos))
            tr = detect_landmarks(frames, DetectConfig(static_image_mode=True,
                                                       detector_boxes=False))
        y0 = cfg.gap_px + r * (cfg.title_px + th + cfg.caption_px + cfg.gap_px)
        crops: dict[int, np.ndarray] = {}  # tile position -> jaw crop
        for j, (i, f) in enumerate(zip(idx, frames)):
            if tr.valid[j]:
                x0, yb, x1, y1 = jaw_box(tr.points[j], f.shape[1], f.shape[0], cfg.pad)
                crops[j] = f[yb:y1, x0:x1]
                row.shown.append(i)
            else:
                row.skipped.append(i)
        if crops:  # one scale per row, set by its largest crop: equal pixel blocks
            scale = fit_scale(max(c.shape[0] for c in crops.values()),
                              max(c.shape[1] for c in crops.values()), cfg.tile)
            row.scale = scale_label(scale)
        for j, crop in crops.items():
            tile = zoom(crop, scale)
            cx, cy = cfg.gap_px + j * (tw + cfg.gap_px), y0 + cfg.title_px
            ty, tx = cy + (th - tile.shape[0]) // 2, cx + (tw - tile.shape[1]) // 2
            img[ty:ty + tile.shape[0], tx:tx + tile.shape[1]] = tile
            _text(img, f"#{idx[j]}  {idx[j] / FPS:.2f} s", cx + 2, cy + th, cfg.caption_px)
        title = f"{video.name}: {total} frames"
        if crops:
            title += f", jaw crops {row.scale} nearest-neighbour"
        if row.skipped:
            title += f"; no face in frame{'s' if len(row.skipped) > 1 else ''} " + \
                     ", ".join(f"#{i}" for i in row.skipped) + " (skipped)"
        if not idx:
            title += "; no frames"
        _text(img, title, cfg.gap_px + 2, y0, cfg.title_px)
        rows.append(row)
    ok, buf = cv2.imencode(".png", img[..., ::-1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    write_bytes(out, buf.tobytes())
    report("done", 1.0)
    return rows


def background_line_pixels(img: np.ndarray, head: np.ndarray, torso: np.ndarray,
                           bg: np.ndarray, rec: np.ndarray | None = None, tol: float = 0.02,
                           r: int = 4, min_contrast: float = 0.15) -> tuple[int, int]:
    """Count a background-coloured line along the jaw: ``(failing, checked)`` pixels.

    Checked: head pixels within 2 px of the torso (the jaw and the neck's sides) with at least
    3 head and 3 torso pixels 2.5 px or more from the head edge within ``r`` px, where the
    background plate differs from both their median colours by ``min_contrast`` (RGB distance
    in [0, 1] units), and -- when the recording ``rec`` is given -- where the recorded pixel is
    not itself nearer the background than its head and neck colours. A pixel fails when it is
    nearer the background plate's colour than both the head and the neck colours next to it
    (by more than ``tol``).

    Args:
        img: (H, W, 3) float in [0, 1], the rendered frame.
        head, torso: (H, W) bool masks of the head and of the torso below it.
        bg: (H, W, 3) float in [0, 1], the background plate.
        rec: (H, W, 3) float in [0, 1], the recorded frame, or None.
    """
    from scipy.ndimage import distance_transform_edt

    d_in, d_out = distance_transform_edt(head), distance_transform_edt(~head)
    band = head & (d_in <= 2) & (distance_transform_edt(~torso) <= 3)
    dist = np.linalg.norm
    bad = checked = 0
    for y, x in zip(*np.nonzero(band)):
        win = np.s_[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
        hw, nw = head[win] & (d_in[win] >= 2.5), torso[win] & (d_out[win] >= 2.5)
        if hw.sum() < 3 or nw.sum() < 3:
            continue
        b = bg[y, x]
        hc, nc = np.median(img[win][hw], 0), np.median(img[win][nw], 0)
        if dist(b - hc) < min_contrast or dist(b - nc) < min_contrast:
            continue
        if rec is not None:
            hr, nr, q = np.median(rec[win][hw], 0), np.median(rec[win][nw], 0), rec[y, x]
            if dist(q - b) < min(dist(q - hr), dist(q - nr)):   # the recording has it too
                continue
        checked += 1
        p = img[y, x]
        bad += int(dist(p - b) + tol < min(dist(p - hc), dist(p - nc)))
    return bad, checked


def face_and_neck(points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool masks from one (478, 2+) FaceMesh frame: inside the face oval, and outside
    it below the jaw line (:data:`core.data.masks.JAW_LINE`, the neck and collar)."""
    from core.data.masks import FACE_OVAL, JAW_LINE, fill_polygon

    face = np.zeros((height, width), np.uint8)
    fill_polygon(face, np.asarray(points)[list(FACE_OVAL), :2].astype(np.float32), 1)
    jaw = np.asarray(points)[list(JAW_LINE), :2]
    order = np.argsort(jaw[:, 0])
    u = np.arange(width) + 0.5
    cut = np.interp(u, jaw[order, 0], jaw[order, 1], left=np.inf, right=np.inf)
    below = (np.arange(height)[:, None] + 0.5) > cut[None, :]
    return face > 0, (face == 0) & below


def background_line_in_video(video: str | Path, bg: np.ndarray, every: int = 5
                             ) -> tuple[int, int, int]:
    """``(failing, checked, frames)`` of :func:`background_line_pixels` over every
    ``every``-th frame of a rendered video, the head and neck from FaceMesh on the render
    (:func:`face_and_neck`); ``bg`` (H, W, 3) uint8 background plate, resized to the video."""
    import cv2

    from core.data.landmarks import DetectConfig, detect_landmarks
    from core.data.media import iter_frames

    frames = [np.ascontiguousarray(f) for i, f in enumerate(iter_frames(Path(video), fps=FPS))
              if i % every == 0]
    if not frames:
        return 0, 0, 0
    h, w = frames[0].shape[:2]
    plate = cv2.resize(np.asarray(bg, np.uint8), (w, h), interpolation=cv2.INTER_AREA) / 255.0
    tr = detect_landmarks(frames, DetectConfig(static_image_mode=True, detector_boxes=False))
    bad = checked = used = 0
    for f, ok, pts in zip(frames, tr.valid, tr.points):
        if not ok:
            continue
        head, neck = face_and_neck(pts, h, w)
        b, c = background_line_pixels(f / 255.0, head, neck, plate)
        bad, checked, used = bad + b, checked + c, used + 1
    return bad, checked, used


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.studies.jawline",
                                description=__doc__.split("\n")[0])
    p.add_argument("videos", nargs="+", type=Path, help="rendered videos (e.g. Talk renders)")
    p.add_argument("--out", type=Path, required=True, help="the grid image (.png)")
    p.add_argument("--frames", type=int, default=JawGridConfig.frames,
                   help="frames per video, evenly spaced")
    p.add_argument("--line-check", type=Path, default=None, metavar="CLIP_DIR",
                   help="also count background-coloured jaw pixels in every 5th frame against "
                        "this processed clip's background plate (the avatar's own clip)")
    a = p.parse_args(argv)
    if a.out.suffix.lower() != ".png":
        p.error(f"--out {a.out} must name a .png file")
    if a.frames < 1:
        p.error("--frames must be at least 1")
    rows, code = run_cli_job(
        lambda bar: jawline_grid(a.videos, a.out, JawGridConfig(frames=a.frames), bar))
    if code:
        return code
    for r in rows:
        msg = f"{r.video.name}: {len(r.shown)} crops" + (f" ({r.scale})" if r.shown else "")
        if r.skipped:
            msg += f"; no face in frames {', '.join(map(str, r.skipped))}: skipped"
        print(msg)
    print(f"wrote {a.out}")
    if a.line_check is not None:
        from core.data.dataset import ProcessedClip

        bg = ProcessedClip.load(a.line_check).bg.numpy()
        for v in a.videos:
            bad, checked, used = background_line_in_video(v, bg)
            print(f"{v.name}: background-coloured jaw pixels {bad} of {checked} checked "
                  f"({100.0 * bad / max(checked, 1):.2f} %) in {used} frames")
    return 0 if any(r.shown for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
