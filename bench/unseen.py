"""The unseen-Gaussian prune on all training frames against a few spread evenly over them.

Run from the project root::

    python -m bench.unseen --avatar AVATAR --clip CLIP [--avatar ... --clip ...] [--views 16 32 64]

For each avatar (a finished one; the prune's test is the one adaptation runs when its face
stage ends) it builds the training frames from its processed clip (the first
``train_seconds`` of the avatar, tracked mouth codes, as adaptation does), sums every face
Gaussian's compositing weight over all of them and over ``--views`` frames spread evenly
(:func:`core.train.unseen.face_view_weights`, threshold scaled by the fraction used, as
``AdaptConfig.unseen_views`` does), and prints, side by side:
the seconds each took, how many Gaussians each would remove, and how many of them differ
(removed by one and kept by the other) and the largest weight over all frames among those
(in pixels, summed over all frames: what removing it takes out of the training renders).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(avatar: Path, clip_dir: Path, views: list[int], min_weight: float) -> list[dict]:
    """One row per view count (0 = every training frame) for ``avatar``."""
    from core.data.dataset import ProcessedClip
    from core.model.avatar import load_avatar
    from core.train.stages import TrainFrames
    from core.train.unseen import face_view_weights, unseen_mask

    av = load_avatar(avatar)
    clip = ProcessedClip.load(clip_dir)
    n = av.num_frames
    frames = TrainFrames.from_clip(clip, torch.arange(n), av.res, fit_frames=n, drive=av.drive)
    conds = [frames.cond(j, tracked=True) for j in range(frames.n)]
    rows, ref = [], None
    for k in [0, *views]:
        t0 = time.perf_counter()
        w, used = face_view_weights(av.umf, av.ident, conds, k)
        secs = time.perf_counter() - t0
        mask = unseen_mask(w, min_weight * used / len(conds))
        if ref is None:
            ref, full = mask, w
        differ = mask ^ ref
        rows.append({"avatar": avatar.name, "frames": used, "seconds": secs,
                     "gaussians": av.ident.face.num, "removed": int(mask.sum()),
                     "differ": int(differ.sum()),
                     "differ_weight": float(full[differ].max()) if differ.any() else 0.0})
    return rows


def main(argv: list[str] | None = None) -> int:
    from core.train.unseen import UNSEEN_WEIGHT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--avatar", type=Path, action="append", required=True)
    p.add_argument("--clip", type=Path, action="append", required=True,
                   help="the processed clip of each --avatar, in the same order")
    p.add_argument("--views", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if len(a.avatar) != len(a.clip):
        p.error("give one --clip per --avatar")
    torch.set_num_threads(a.threads)
    print(f"{'avatar':40s} {'frames':>6s} {'seconds':>8s} {'face gaussians':>14s} "
          f"{'removed':>8s} {'differ from all':>15s} {'their largest weight, px':>24s}")
    for av, clip in zip(a.avatar, a.clip):
        for r in measure(av, clip, a.views, UNSEEN_WEIGHT):
            print(f"{r['avatar']:40s} {r['frames']:6d} {r['seconds']:8.1f} {r['gaussians']:14d} "
                  f"{r['removed']:8d} {r['differ']:15d} {r['differ_weight']:24.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
