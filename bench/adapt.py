"""Adaptation speed on the CPU preset: wall time and steps/s per stage.

    python -m bench.adapt [--clip CLIP] [--prior NAME|PATH]
                          [--steps FACE MOUTH FUSE] [--threads N]

Without ``--steps`` it runs the full ``cpu`` preset (the number quoted in the docs).
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from core.train.adapt import PRESETS, adapt
from core.weights import DEFAULT_PRIOR

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = (ROOT / ".." / "shared" / "data" / "clips" / "may_5s.mp4").resolve()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="video or processed folder")
    p.add_argument("--prior", default=DEFAULT_PRIOR, help="prior file or manifest name")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, nargs=3, default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = PRESETS[a.preset]
    if a.steps:
        cfg = replace(cfg, face_steps=a.steps[0], mouth_steps=a.steps[1], fuse_steps=a.steps[2])
    stamps: dict[str, list[float]] = {}

    def progress(text: str, frac: float) -> None:
        m = re.match(r"(face|mouth|fuse) (\d+)/", text)
        if m:
            stamps.setdefault(m.group(1), []).append(time.perf_counter())
        elif "preprocessing" in text:
            stamps.setdefault("preprocess", []).append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        adapt(a.clip, Path(tmp) / "avatar", None if a.prior == "none" else a.prior, cfg, progress)
        total = time.perf_counter() - t0
    print(f"clip {a.clip.name}, preset {a.preset} at {cfg.res}², {cfg.seconds:g} s of video, "
          f"{torch.get_num_threads()} threads")
    print(f"{'stage':>10} {'steps':>6} {'seconds':>8} {'steps/s':>8}")
    for stage, steps in (("face", cfg.face_steps), ("mouth", cfg.mouth_steps), ("fuse", cfg.fuse_steps)):
        ts = stamps.get(stage, [])
        if len(ts) > 1:
            dt = ts[-1] - ts[0]
            print(f"{stage:>10} {steps:>6} {dt:>8.1f} {(len(ts) - 1) / dt:>8.2f}")
    print(f"{'total':>10} {cfg.total_steps:>6} {total:>8.1f} {cfg.total_steps / total:>8.2f}"
          f"  ({total / 60:.1f} min; target <= 12 min for a 5 s clip at 256² with the cpu preset)")


if __name__ == "__main__":
    main()
