"""What the boundary band costs a near-perfect renderer: the recording against itself.

``python -m eval.studies.band_floor CLIP_DIR... [--train-seconds 5] [--frames 60]``

Band PSNR (:func:`eval.metrics.frames.boundary_band`) scores the pixels a few pixels either side of
the recorded head boundary, where a clip's edges are sharpest (hair against a wall). Any
renderer with sub-pixel blur or misalignment there loses more in the band than over the
head. This tool measures how much on each clip, with no model at all: the recorded
held-out frames (the benchmark's span, ``frames`` evenly spaced) against themselves moved
by one pixel (right, and down) and blurred by a 0.7 px Gaussian. Prints head PSNR, band
PSNR and band minus head for each, and the image gradient in the band over that in the head.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def degraded(frames: np.ndarray) -> dict[str, np.ndarray]:
    """(T, H, W, 3) uint8 recorded frames -> name -> the same frames slightly degraded."""
    import cv2

    return {"1 px right": np.roll(frames, 1, 2), "1 px down": np.roll(frames, 1, 1),
            "blur 0.7 px": np.stack([cv2.GaussianBlur(f, (0, 0), 0.7) for f in frames])}


def band_floor(clip_dir: Path, train_seconds: float = 5.0, num_frames: int = 60) -> dict:
    """Per degradation: (head PSNR, band PSNR) dB over the held-out frames, and the band's
    mean gradient magnitude over the head's."""
    import torch

    from core.data.dataset import ProcessedClip
    from core.data.masks import head_mask
    from eval.metrics.frames import boundary_band, psnr
    from eval.bench.protocol import test_indices

    clip = ProcessedClip.load(clip_dir)
    idx = test_indices(clip, train_seconds)
    pick = idx[torch.linspace(0, idx.numel() - 1, min(num_frames, idx.numel())).round().long()]
    gt = clip.frames[pick].numpy()
    head = head_mask(clip.labels[pick].numpy())
    band = boundary_band(head)
    out: dict = {}
    for name, pred in degraded(gt).items():
        h = np.mean([psnr(p, g, m) for p, g, m in zip(pred, gt, head) if m.any()])
        b = np.mean([psnr(p, g, m) for p, g, m in zip(pred, gt, band) if m.any()])
        out[name] = (float(h), float(b))
    gray = gt.astype(np.float64).mean(-1)
    grad = np.hypot(*np.gradient(gray, axis=(1, 2)))
    out["gradient ratio"] = float(grad[band].mean() / max(grad[head].mean(), 1e-9))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.studies.band_floor",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("clips", nargs="+", type=Path, help="processed-clip folders")
    ap.add_argument("--train-seconds", type=float, default=5.0)
    ap.add_argument("--frames", type=int, default=60, help="held-out frames used per clip")
    a = ap.parse_args(argv)
    names = list(degraded(np.zeros((1, 4, 4, 3), np.uint8)))
    print("| clip | " + " | ".join(f"{n}: head / band / band - head" for n in names)
          + " | band / head gradient |")
    print("|---|" + "---|" * (len(names) + 1))
    for d in a.clips:
        r = band_floor(d, a.train_seconds, a.frames)
        cells = [f"{r[n][0]:.2f} / {r[n][1]:.2f} / {r[n][1] - r[n][0]:+.2f}" for n in names]
        print(f"| {d.name} | " + " | ".join(cells) + f" | {r['gradient ratio']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
