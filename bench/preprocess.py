"""Preprocessing speed: seconds per frame for a 5 s 512² clip (target: the whole clip in
under 60 s on 2 CPU cores with mel audio).

    python -m bench.preprocess [--clip ../shared/data/clips/may_5s.mp4] [--res 256 512]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from core.data.preprocess import PreprocessConfig, preprocess

DEFAULT_CLIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clips" / "may_5s.mp4"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP.resolve())
    p.add_argument("--res", type=int, nargs="+", default=[256, 512])
    a = p.parse_args()
    print(f"clip: {a.clip.name}")
    print(f"{'res':>5} {'frames':>7} {'total s':>8} {'s/frame':>8}  stages (s)")
    for res in a.res:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = preprocess(a.clip, Path(tmp) / "clip", PreprocessConfig(res=res))
            total = time.perf_counter() - t0
            m = json.loads((out / "manifest.json").read_text())
        n = m["num_frames"]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in m["timings_s"].items() if k != "total")
        verdict = "meets" if total < 60 * n / 125 else "misses"
        print(f"{res:>5} {n:>7} {total:>8.1f} {total / n:>8.3f}  {stages}  ({verdict} the 60 s / 5 s target)")


if __name__ == "__main__":
    main()
