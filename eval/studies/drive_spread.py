"""How wide an avatar's mouth drive predicts new speech, against how wide the person's lips
move: the measurement behind :data:`core.model.mouth_drive.HELDOUT_SPREAD`.

``python -m eval.studies.drive_spread CLIP [CLIP ...] [--train-seconds 5] [--out MD]``

Each CLIP (a video, preprocessed into a temporary folder at 64², or a processed-clip
folder): the drive is fitted on the first ``--train-seconds`` exactly as adaptation fits it
(:func:`core.train.person_mouth.fit_drive` with the ``cpu`` preset's read-out and person
model, seed 0, spread 1), then predicts the codes of the training seconds and, separately,
of the seconds after them from their audio alone, re-timed by the recording's offset as the
benchmark does. Printed per clip: held-out aperture r, and the spread ratio, the standard
deviation of the predicted inner-lip aperture (code column 0) over that of the tracked one,
on the held-out and on the training frames (frames without a face left out); then the
means. Use people no shipped model saw (``../shared/data/clips_pretrain``), never the
evaluation clips.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Shortest held-out part measured (frames, 3 s).
MIN_HELDOUT = 75


@dataclass(frozen=True)
class Spread:
    """One clip's measurement: frames in all; held-out aperture r; spread ratios (predicted
    std / tracked std of the inner-lip aperture) on the held-out and the training frames."""

    clip: str
    frames: int
    heldout_r: float
    heldout_spread: float
    train_spread: float


def predicted_span(drive, audio: np.ndarray, start: int, stop: int) -> np.ndarray:
    """(stop - start, 4) codes the drive predicts for frames ``start:stop`` from their own
    audio (and the offset's frames after it), re-timed by the drive's audio-video offset."""
    from core.model.mouth_drive import MAX_OFFSET, SAMPLES_PER_FRAME, shift_frames

    n = stop - start
    wav = audio[start * SAMPLES_PER_FRAME:(stop + MAX_OFFSET) * SAMPLES_PER_FRAME]
    codes = drive.predicted(wav, n + MAX_OFFSET).numpy()
    return codes[shift_frames(n, drive.av_offset, n + MAX_OFFSET).numpy()]


def measure(clip, n_train: int, seed: int = 0) -> Spread:
    """:class:`Spread` of a processed clip (:class:`core.data.dataset.ProcessedClip`) with a
    drive fitted on its first ``n_train`` frames."""
    from core.model.mouth_drive import pearson
    from core.train.adapt import PRESETS
    from core.train.person_mouth import fit_drive

    cfg = PRESETS["cpu"]
    a = clip.arrays
    pts, wav = a["points3d"].numpy(), a["audio"].numpy()
    ok = a["valid"].numpy().astype(bool)
    T = len(pts)
    if T < n_train + MIN_HELDOUT:
        raise ValueError(f"{clip.root.name}: {T} frames; at least {n_train + MIN_HELDOUT} "
                         f"needed ({n_train} to fit, {MIN_HELDOUT} held out)")
    known = clip.av_offset if cfg.av_offset == "recording" else None
    drive = fit_drive(pts, wav, n_train, ok, known, cfg.readout, cfg.person, seed)
    tracked = drive.tracked(pts).numpy()[:, 0]
    held, train = predicted_span(drive, wav, n_train, T)[:, 0], predicted_span(drive, wav, 0, n_train)[:, 0]
    mh, mt = ok[n_train:], ok[:n_train]
    return Spread(clip.root.name, T, pearson(held[mh], tracked[n_train:][mh]),
                  float(held[mh].std() / tracked[n_train:][mh].std()),
                  float(train[mt].std() / tracked[:n_train][mt].std()))


def markdown(rows: list[Spread], n_train: int) -> str:
    """The measurements as a table, with the means and what they ask of the drive."""
    lines = [f"Drive fitted on the first {n_train} frames; spread = predicted / tracked std of "
             "the inner-lip aperture.", "",
             "| clip | frames | held-out r | spread, held-out | spread, training |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.clip} | {r.frames} | {r.heldout_r:.2f} | {r.heldout_spread:.2f} | "
              f"{r.train_spread:.2f} |" for r in rows]
    if rows:
        h = np.array([r.heldout_spread for r in rows])
        t = np.array([r.train_spread for r in rows])
        lines += [f"| mean of {len(rows)} | | {np.mean([r.heldout_r for r in rows]):.2f} | "
                  f"{h.mean():.2f} | {t.mean():.2f} |", "",
                  f"Held-out spread {h.mean():.3f} (median {np.median(h):.3f}, "
                  f"{h.min():.2f}-{h.max():.2f}): a factor of {1 / h.mean():.2f} brings the "
                  "mean back to the person's own."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.studies.drive_spread",
                                description=__doc__.split("\n")[0])
    p.add_argument("clips", nargs="+", type=Path, help="videos or processed-clip folders")
    p.add_argument("--train-seconds", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    a = p.parse_args(argv)
    from core.atomic import write_text
    from core.data.dataset import ProcessedClip
    from core.data.preprocess import FPS, PreprocessConfig, preprocess

    n_train = int(round(a.train_seconds * FPS))
    rows: list[Spread] = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in a.clips:
            d = c if c.is_dir() else preprocess(c, Path(tmp) / c.stem,
                                                PreprocessConfig(res=64, full_frame=False))
            try:
                r = measure(ProcessedClip.load(d), n_train)
            except ValueError as e:
                print(f"skipped: {e}")
                continue
            rows.append(r)
            print(f"{r.clip}: {r.frames} frames, held-out r {r.heldout_r:.2f}, spread "
                  f"held-out {r.heldout_spread:.2f}, training {r.train_spread:.2f}", flush=True)
    md = markdown(rows, n_train)
    print(md)
    if a.out is not None:
        write_text(a.out, md)
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
