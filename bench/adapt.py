"""Adaptation speed: wall time, CPU time and steps/s per stage, for one or more presets
measured one after the other in the same run.

    python -m bench.adapt [--clip CLIP] [--prior NAME|PATH] [--preset fast cpu]
                          [--steps FACE MOUTH FUSE] [--threads N]

Without ``--steps`` each preset runs its full schedule (the numbers quoted in the docs).
With several presets it ends with each one's wall and CPU time as a fraction of the last
preset's (``--preset fast cpu``: the fast preset against the cpu one). CPU time (this
process, all threads) is the steadier figure on a machine shared with other jobs; wall
time is what a user waits.
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


def run_preset(clip: Path, prior: str | None, preset: str,
               steps: list[int] | None) -> dict:
    """Adapt once with ``preset``; returns wall / CPU seconds and per-stage timings."""
    cfg = PRESETS[preset]
    if steps:
        cfg = replace(cfg, face_steps=steps[0], mouth_steps=steps[1], fuse_steps=steps[2])
    stamps: dict[str, list[float]] = {}

    def progress(text: str, frac: float) -> None:
        m = re.match(r"(face|mouth|fuse) (\d+)/", text)
        if m:
            stamps.setdefault(m.group(1), []).append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        adapt(clip, Path(tmp) / "avatar", prior, cfg, progress)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stages = {}
    for stage, n in (("face", cfg.face_steps), ("mouth", cfg.mouth_steps), ("fuse", cfg.fuse_steps)):
        ts = stamps.get(stage, [])
        if len(ts) > 1:
            stages[stage] = (n, ts[-1] - ts[0], (len(ts) - 1) / (ts[-1] - ts[0]))
    return {"preset": preset, "cfg": cfg, "wall": wall, "cpu": cpu, "stages": stages}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="video or processed folder")
    p.add_argument("--prior", default=DEFAULT_PRIOR, help="prior file or manifest name")
    p.add_argument("--preset", nargs="+", default=["cpu"], choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, nargs=3, default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    prior = None if a.prior == "none" else a.prior
    runs = []
    for preset in a.preset:
        r = run_preset(a.clip, prior, preset, a.steps)
        runs.append(r)
        cfg = r["cfg"]
        print(f"clip {a.clip.name}, preset {preset} at {cfg.res}², {cfg.seconds:g} s of video, "
              f"{torch.get_num_threads()} threads")
        print(f"{'stage':>10} {'steps':>6} {'seconds':>8} {'steps/s':>8}")
        for stage, (n, dt, rate) in r["stages"].items():
            print(f"{stage:>10} {n:>6} {dt:>8.1f} {rate:>8.2f}")
        print(f"{'total':>10} {cfg.total_steps:>6} {r['wall']:>8.1f} "
              f"{cfg.total_steps / r['wall']:>8.2f}  ({r['wall'] / 60:.2f} min wall, "
              f"{r['cpu'] / 60:.2f} min CPU)", flush=True)
    if len(runs) > 1:
        ref = runs[-1]
        print(f"\nagainst {ref['preset']}:")
        for r in runs[:-1]:
            print(f"  {r['preset']}: wall {r['wall']:.1f} s / {ref['wall']:.1f} s = "
                  f"{r['wall'] / ref['wall']:.3f}; CPU {r['cpu']:.1f} s / {ref['cpu']:.1f} s = "
                  f"{r['cpu'] / ref['cpu']:.3f}")


if __name__ == "__main__":
    main()
