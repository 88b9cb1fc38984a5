"""``python -m core.preprocess CLIP --out DIR [--res N] [--audio KIND]``: the preprocessing job.

:func:`preprocess_clip` is :func:`core.data.preprocess.preprocess` (tracking, pose, masks,
expression, audio features; the folder format is in that module's doc) plus one measurement
the data layer cannot make: the recording's **audio-video offset**, found with the shipped
audio-to-mouth prior (:func:`core.model.mouth_drive.measure_av_offset`) over the whole clip
and stored in ``manifest.json`` as ``av_offset``: ``frames`` (audio late > 0), ``gain``
(how clearly the best lag beats lag 0), ``curve`` (lag -> mean correlation) and ``method``.
Pre-training and adaptation train on audio re-timed by it; the benchmark re-measures it on
its training seconds only. Every caller that makes processed clips for training (the app,
the benchmark, pre-training, adaptation) goes through here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from core.data.audio import KINDS
from core.data.preprocess import PreprocessConfig, default_res, preprocess
from core.progress import ProgressFn, run_cli_job


def av_offset_entry(arrays: dict[str, np.ndarray]) -> dict:
    """The manifest entry ``{"av_offset": {...}}`` for a clip's arrays (a
    :data:`core.data.preprocess.Annotator`)."""
    from core.model.mouth_drive import measure_av_offset

    found = measure_av_offset(arrays["points3d"], arrays["audio"], arrays["valid"])
    return {"av_offset": found.to_dict()}


def preprocess_clip(clip: str | os.PathLike, out_dir: str | os.PathLike,
                    cfg: PreprocessConfig | None = None, progress: ProgressFn | None = None,
                    overwrite: bool = False) -> Path:
    """:func:`core.data.preprocess.preprocess` with the audio-video offset in the manifest
    (same arguments, errors and atomic write)."""
    return preprocess(clip, out_dir, cfg, progress, overwrite, annotate=av_offset_entry)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.preprocess", description=__doc__.split("\n")[0].strip("`: "))
    p.add_argument("clip", help="video file (mp4, mov, mkv, webm, mpg) with one face and speech")
    p.add_argument("--out", required=True, help="processed-clip folder to create")
    p.add_argument("--res", type=int, default=None, help="working resolution (default 256 CPU / 512 GPU)")
    p.add_argument("--audio", choices=KINDS, default="mel")
    p.add_argument("--hubert-model", default=PreprocessConfig.hubert_model,
                   help="HuBERT hub id or local folder (with --audio hubert)")
    p.add_argument("--allow-download", action="store_true", help="allow downloading HuBERT weights")
    p.add_argument("--max-seconds", type=float, default=PreprocessConfig.max_seconds)
    p.add_argument("--max-frames", type=int, default=None, help="keep only the first N frames")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    cfg = PreprocessConfig(res=a.res or default_res(), audio=a.audio, hubert_model=a.hubert_model,
                           allow_download=a.allow_download, max_seconds=a.max_seconds,
                           max_frames=a.max_frames)
    out, code = run_cli_job(lambda bar: preprocess_clip(a.clip, a.out, cfg, bar, overwrite=a.overwrite))
    if code:
        return code
    m = json.loads((out / "manifest.json").read_text())
    tr = m["tracking"]
    off = m.get("av_offset", {}).get("frames", 0)
    print(f"{out}: {m['num_frames']} frames at {m['res']}², focal {m['focal']:.0f} px, "
          f"reprojection {tr['reproj_err_px_mean']:.2f} px, audio-video offset {off:+d} frames, "
          f"{m['timings_s']['total']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
