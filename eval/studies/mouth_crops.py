"""Zoomed open mouths side by side: the recording and the stored held-out renders of one or
more benchmark runs, at the frames where the recorded mouth is widest open.

``python -m eval.studies.mouth_crops CLIP_DIR RUN [RUN ...] --out crops.png
[--method instag] [--train-seconds 5] [--frames 4] [--zoom 4]``

Each row is one held-out frame (the ``--frames`` widest recorded inner-lip gaps,
:func:`eval.metrics.frames.lip_aperture`, FaceMesh on the recorded frames); the columns are
the recorded frame and each run's render of it, cropped around the recorded lips (a box of
0.8 x 0.64 eye distances) and enlarged ``--zoom`` times with nearest-neighbour pixels, so the
render's own pixels show. The runs must have scored the same clip, method and training
length (``python -m eval.benchmark``: ``RUN/renders/{clip}_{method}_{s}s/heldout.mp4``).
Nothing is rendered here; the image is written as PNG. Crops of the shared clips are for
looking at, not for committing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def widest_open(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` frames with the widest inner-lip gap (frames without a face
    last), widest first, from (T, 478, 2+) landmarks."""
    from eval.metrics.frames import lip_aperture

    gap = np.nan_to_num(lip_aperture(points), nan=-1.0)
    return np.argsort(-gap, kind="stable")[:n]


def lips_box(points: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the crop around one frame's lips: centred on the outer-lip
    landmarks, 0.8 x 0.64 eye-corner distances, clipped to a ``size`` square frame."""
    from core.data.masks import OUTER_LIPS
    from eval.metrics.frames import EYE_CORNERS

    p = np.asarray(points, np.float64)[:, :2]
    cx, cy = p[list(OUTER_LIPS)].mean(0)
    eyes = float(np.linalg.norm(p[EYE_CORNERS[0]] - p[EYE_CORNERS[1]]))
    w, h = 0.8 * eyes, 0.64 * eyes
    x0 = int(np.clip(round(cx - w / 2), 0, size - 1))
    y0 = int(np.clip(round(cy - h / 2), 0, size - 1))
    return x0, y0, int(min(size, x0 + round(w))), int(min(size, y0 + round(h)))


def mouth_crops(clip_dir: Path, runs: list[Path], method: str = "instag",
                train_seconds: float = 5.0, frames: int = 4, zoom: int = 4) -> np.ndarray:
    """(rows, cols, 3) uint8: one row per widest-open held-out frame, the recording then each
    run's render, cropped around the recorded lips and enlarged ``zoom`` times."""
    import cv2

    from eval.bench.cells import cell_name, landmarks, read_render, render_path

    if not runs:
        raise ValueError("give at least one benchmark run folder")
    clip_dir = Path(clip_dir)
    cell = cell_name(clip_dir.name, method, train_seconds)
    renders = []
    for run in runs:
        path = render_path(Path(run), cell)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run} has no stored render of {cell} "
                                    "(run python -m eval.benchmark on that clip first)")
        renders.append(read_render(path))
    n, res = renders[0].shape[0], renders[0].shape[1]
    if any(r.shape != renders[0].shape for r in renders):
        raise ValueError("the runs' renders differ in size or length: "
                         f"{[r.shape for r in renders]}")
    start = int(json.loads((Path(runs[0]) / "cells" / f"{cell}.json").read_text())["test_start"])
    recorded = _recorded(clip_dir, start, n, res)
    # the benchmark's own landmark cache of these frames (same frames, same file: read back)
    points, _ = landmarks(recorded, Path(runs[0]) / "cache"
                          / f"{clip_dir.name}_test{start}-{start + n}_{res}px.npz")
    rows = []
    for k in widest_open(points, frames):
        x0, y0, x1, y1 = lips_box(points[k], res)
        tiles = [recorded[k]] + [r[k] for r in renders]
        rows.append(np.concatenate([
            cv2.resize(np.ascontiguousarray(t[y0:y1, x0:x1]), ((x1 - x0) * zoom, (y1 - y0) * zoom),
                       interpolation=cv2.INTER_NEAREST) for t in tiles], 1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)


def _recorded(clip_dir: Path, start: int, n: int, res: int) -> np.ndarray:
    """The recorded held-out frames (n, res, res, 3) uint8 the run's renders stand for, made
    as the benchmark makes them (:meth:`core.train.stages.TrainFrames.from_clip`: area
    resize in [0, 1], then :func:`eval.bench.protocol.ground_truth`'s rounding)."""
    import torch
    import torch.nn.functional as F

    from core.data.dataset import ProcessedClip

    clip = ProcessedClip.load(clip_dir)
    frames = clip.frames[start:start + n]
    if frames.shape[0] != n:
        raise ValueError(f"{clip_dir} has {clip.num_frames} frames; the run's test span is "
                         f"{n} frames from {start}: not the same clip")
    if frames.shape[1] == res:
        return frames.numpy()
    x = F.interpolate(frames.permute(0, 3, 1, 2).float() / 255.0, size=(res, res), mode="area")
    return (x.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.studies.mouth_crops",
                                description=__doc__.split("\n")[0])
    p.add_argument("clip", type=Path, help="the processed-clip folder the runs scored")
    p.add_argument("runs", type=Path, nargs="+", help="benchmark output folders (columns)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--method", default="instag")
    p.add_argument("--train-seconds", type=float, default=5.0)
    p.add_argument("--frames", type=int, default=4, help="rows: the widest-open frames")
    p.add_argument("--zoom", type=int, default=4)
    a = p.parse_args(argv)
    import cv2

    img = mouth_crops(a.clip, a.runs, a.method, a.train_seconds, a.frames, a.zoom)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(a.out), np.ascontiguousarray(img[..., ::-1])):
        print(f"could not write {a.out}", file=sys.stderr)
        return 1
    print(f"{a.out}: {img.shape[1]}x{img.shape[0]}, columns: recorded, "
          + ", ".join(str(r) for r in a.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
