"""How much of an avatar's lip score comes from the head pose rather than the audio.

``python -m eval.studies.pose_share AVATAR CLIP_DIR [--train-seconds 5]``

The benchmark renders held-out frames with their recorded head pose, and some people move
their head with their phrasing, so a mouth that never moves can still correlate with the
recorded lip gap (the ``mean mouth`` row, the silence control). This tool re-renders the
avatar's held-out frames (the benchmark's span) with the pose of the first held-out frame
held for all of them, driven by the held-out audio, by that audio shuffled in time and by
silence (:mod:`eval.bench.controls`), and prints the aperture r of each against the recording
(FaceMesh on both, :func:`eval.metrics.frames.lip_aperture`), beside the same with the recorded pose.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np


def held_pose(frames):
    """``frames`` (:class:`core.train.stages.TrainFrames`) all seen from the first one's pose."""
    return replace(frames, viewmats=frames.viewmats[:1].expand_as(frames.viewmats).clone())


def pose_share(avatar_dir: Path, clip_dir: Path, train_seconds: float = 5.0) -> dict[str, float]:
    """Aperture r (rendered vs recorded, held-out frames) per driving condition."""
    from core.data.audio import AudioFeatureSpec
    from core.data.dataset import ProcessedClip
    from core.model.avatar import load_avatar
    from core.model.mouth_drive import pearson
    from eval.bench import controls as C
    from eval.bench.protocol import ground_truth, heldout_frames, render_frames, test_indices
    from eval.studies.talk_motion import aperture

    clip = ProcessedClip.load(clip_dir)
    av = load_avatar(avatar_dir)
    idx = test_indices(clip, train_seconds)
    frames = heldout_frames(clip, idx, av.res, int(round(train_seconds * 25)), av.drive)
    recorded, rec_ok = aperture(ground_truth(frames).frames)
    spec = AudioFeatureSpec.from_dict(clip.manifest["audio"])
    conditions = {
        "audio, recorded pose": lambda: frames,
        "silence, recorded pose": lambda: C.silent_audio(frames, spec, av.drive),
        "audio, pose held": lambda: held_pose(frames),
        "shuffled audio, pose held": lambda: held_pose(C.shuffled_audio(frames)),
        "silence, pose held": lambda: held_pose(C.silent_audio(frames, spec, av.drive)),
    }
    out = {}
    for name, make in conditions.items():
        rendered, ok = aperture(render_frames(av.umf, av.ident, make()))
        ok &= rec_ok
        out[name] = pearson(rendered[ok], recorded[ok])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.studies.pose_share",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("avatar", type=Path, help="adapted avatar folder")
    ap.add_argument("clip", type=Path, help="its processed clip folder")
    ap.add_argument("--train-seconds", type=float, default=5.0)
    a = ap.parse_args(argv)
    r = pose_share(a.avatar, a.clip, a.train_seconds)
    print("| condition | aperture r |\n|---|---|")
    for k, v in r.items():
        print(f"| {k} | {v:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
