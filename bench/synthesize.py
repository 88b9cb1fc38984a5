"""Rendering speed of an avatar driven by new audio (frames per second).

    python -m bench.synthesize --avatar AVATAR [--audio ../shared/data/audio/en_radio31.wav]

Reports the frame loop's FPS (motion fields + rasterizer + compositing + mp4 encoding, as
``synthesize`` measures it) and end-to-end FPS including avatar loading and audio features,
and the avatar's Gaussian counts.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from core.model.avatar import load_avatar
from core.synthesize import synthesize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = (ROOT / ".." / "shared" / "data" / "audio" / "en_radio31.wav").resolve()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--avatar", type=Path, required=True)
    p.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    av = load_avatar(a.avatar)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = synthesize(av, a.audio, Path(tmp) / "out.mp4")
        total = time.perf_counter() - t0
    print(f"avatar {a.avatar.name}: {av.res}², {av.ident.face.num} face + {av.ident.mouth.num} "
          f"mouth Gaussians, {torch.get_num_threads()} threads")
    print(f"audio {a.audio.name}: {r.seconds:.2f} s -> {r.frames} frames")
    print(f"frame loop {r.render_fps:.2f} FPS; end to end {r.frames / total:.2f} FPS ({total:.1f} s)")


if __name__ == "__main__":
    main()
