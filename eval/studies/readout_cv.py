"""Choosing the mouth drive's person-specific parts without the evaluation clips:
cross-fitted priors.

``python -m eval.studies.readout_cv CLIP_DIR... --out DIR [--heldout CLIP_DIR...]``

The drive of :class:`core.model.mouth_drive.MouthDrive` has two person-specific parts: the
read-out (the audio-to-mouth predictor's last layer refitted on a person's first seconds,
pulled toward the prior's; settings ``mix`` and ``penalty``) and the person's own model (a
predictor trained from scratch on the same seconds, :mod:`core.train.person_mouth`, blended
with the prior). Tuning them on the clips the project reports would grade its own homework,
and the pre-training clips cannot score them with the shipped prior (it has seen them). So
the pre-training clips are split in two folds (alternate clips in name order); a mouth prior
is trained on each fold (:func:`core.train.mouth_prior.train_mouth_prior`, same settings as
the shipped one) and scores the other fold's clips: for each clip long enough (at least
``train_seconds`` + 2 s), a drive fitted on the first ``train_seconds`` (its offset measured
there, as the benchmark does) predicts the rest from that span's audio alone, and the
held-out aperture r (predicted vs tracked mouth code) is reported for every read-out setting
and every person-model weight. ``--heldout`` clips are scored the same way with the shipped
prior over their last ``test_seconds`` (the benchmark's span), for reference only.

Writes ``DIR/readout_cv.md`` (per-setting means over the cross-fitted clips, and each
clip's row) and ``DIR/readout_cv.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

#: (mix, penalty) settings scored; mix 0 is the prior alone.
GRID: tuple[tuple[float, float], ...] = ((0.0, 0.0),) + tuple(
    (m, p) for m in (0.5, 1.0) for p in (10.0, 30.0, 100.0, 300.0, 1000.0))
#: weights of the person's own model (:mod:`core.train.person_mouth`, trained from scratch on
#: the same first seconds) blended with the prior and the default read-out; 1 = it alone.
PERSON_WEIGHTS: tuple[float, ...] = (1.0, 0.5)


def person_setting(weight: float) -> str:
    return "person model alone" if weight == 1 else f"read-out + person model, weight {weight:g}"


def settings() -> list[str]:
    """Every scored setting's name, in table order."""
    return [setting_name(m, p) for m, p in GRID] + [person_setting(w) for w in PERSON_WEIGHTS]


def score_clip(clip_dir: Path, predictor, gain: np.ndarray, train_seconds: float,
               test_seconds: float | None, seed: int = 0) -> dict | None:
    """Held-out aperture r (and its spread ratio) of every :data:`GRID` setting and every
    :data:`PERSON_WEIGHTS` blend on one processed clip; None when the clip is too short.
    Test span: the last ``test_seconds`` (None: everything after the training seconds). The
    audio front end runs once per span; every setting refits only the read-out, and one
    person model (``seed``) serves every blend."""
    from dataclasses import replace

    from core.data.dataset import ProcessedClip
    from core.data.preprocess import FPS
    from core.model.mouth_drive import (SAMPLES_PER_FRAME, MouthDrive, ReadoutConfig, pearson,
                                        shift_frames)
    from core.model.mouth_predictor import audio_front_end
    from core.train.person_mouth import PersonMouthConfig, train_person_model

    clip = ProcessedClip.load(clip_dir)
    a = clip.arrays
    pts, wav, valid = a["points3d"].numpy(), a["audio"].numpy(), a["valid"].numpy().astype(bool)
    T, n = clip.num_frames, int(round(train_seconds * FPS))
    start = n if test_seconds is None else max(n, T - int(round(test_seconds * FPS)))
    if T - start < 2 * FPS:
        return None
    base = MouthDrive.fit(pts, wav, n, valid, predictor=predictor, gain=gain)
    code = base.tracked(pts).numpy()
    tracked = code[start:]
    train_code = base.tracked(pts[:n]).numpy()      # as fitting sees it (pose from those frames)
    ok = valid[start:]
    m = T - start
    aligned = shift_frames(m, base.av_offset, m).numpy()
    inputs = predictor.config.inputs
    train_steps = audio_front_end(wav[:n * SAMPLES_PER_FRAME], inputs)
    test_steps = audio_front_end(wav[start * SAMPLES_PER_FRAME: T * SAMPLES_PER_FRAME], inputs)
    row = {"clip": clip_dir.name, "frames": T, "test_frames": int(ok.sum()), "offset": base.av_offset}
    for mix, penalty in GRID:
        drive = replace(base)
        if mix > 0:
            drive.personalise(train_code, train_steps, valid[:n], ReadoutConfig(mix, penalty))
        pred = drive.codes(test_steps, m).numpy()[aligned]
        p, t = pred[ok, 0], tracked[ok, 0]
        row[setting_name(mix, penalty)] = {"r": round(pearson(p, t), 3),
                                           "spread": round(float(p.std() / max(t.std(), 1e-9)), 2)}
    with_readout = replace(base)     # the default read-out and one person model per clip,
    with_readout.personalise(train_code, train_steps, valid[:n], ReadoutConfig())  # every weight
    person = train_person_model(with_readout, train_code, train_steps, valid[:n],
                                PersonMouthConfig(), seed)
    for w in PERSON_WEIGHTS:
        drive = replace(with_readout)
        drive.set_person(person, w, train_steps, n)
        pred = drive.codes(test_steps, m).numpy()[aligned]
        p, t = pred[ok, 0], tracked[ok, 0]
        row[person_setting(w)] = {"r": round(pearson(p, t), 3),
                                  "spread": round(float(p.std() / max(t.std(), 1e-9)), 2)}
    return row


def setting_name(mix: float, penalty: float) -> str:
    return "prior alone" if mix == 0 else f"mix {mix:g}, penalty {penalty:g}"


def summary(rows: list[dict]) -> list[tuple[str, float, float, float]]:
    """(setting, mean r, lowest r, median spread) over ``rows``."""
    out = []
    for k in settings():
        r = np.array([row[k]["r"] for row in rows])
        s = np.array([row[k]["spread"] for row in rows])
        out.append((k, float(r.mean()), float(r.min()), float(np.median(s))))
    return out


def table(rows: list[dict], title: str) -> list[str]:
    lines = [f"### {title}", "", "| setting | mean aperture r | lowest | median spread |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {m:.3f} | {lo:.3f} | {s:.2f} |" for k, m, lo, s in summary(rows)]
    keys = settings()
    lines += ["", "| clip | offset | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    lines += [f"| {r['clip']} | {r['offset']:+d} | " + " | ".join(f"{r[k]['r']:.3f}" for k in keys) + " |"
              for r in rows]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.studies.readout_cv",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("clips", nargs="+", type=Path, help="pre-training processed-clip folders")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heldout", nargs="*", type=Path, default=[],
                    help="evaluation clips, scored with the shipped prior for reference")
    ap.add_argument("--train-seconds", type=float, default=5.0)
    ap.add_argument("--test-seconds", type=float, default=12.0, help="span of --heldout clips")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from tqdm import tqdm

    from core.atomic import write_text
    from core.model.mouth_predictor import MouthPredictorConfig, load_predictor
    from core.train.mouth_prior import MouthPriorTrainConfig, train_mouth_prior

    clips = sorted(a.clips, key=lambda p: p.name)
    overlap = {p.name for p in clips} & {p.name for p in a.heldout}
    if overlap:
        ap.error(f"clips both cross-fitted and held out: {sorted(overlap)}")
    a.out.mkdir(parents=True, exist_ok=True)
    folds = (clips[0::2], clips[1::2])
    rows: list[dict] = []
    for k, (fit, score) in enumerate(((folds[0], folds[1]), (folds[1], folds[0]))):
        path = a.out / f"mouth_prior_fold{k + 1}.safetensors"
        train_mouth_prior(fit, path, MouthPredictorConfig(), MouthPriorTrainConfig(), a.seed,
                          log=lambda s, k=k: print(f"fold {k + 1}: {s}", flush=True))
        predictor, meta = load_predictor(path)
        gain = np.asarray(meta["gain"], np.float32)
        for d in tqdm(score, desc=f"fold {k + 1} scoring", unit="clip"):
            row = score_clip(d, predictor, gain, a.train_seconds, None, a.seed)
            if row is not None:
                rows.append({**row, "fold": k + 1})
    held: list[dict] = []
    if a.heldout:
        predictor, meta = load_predictor()
        gain = np.asarray(meta["gain"], np.float32)
        for d in tqdm(a.heldout, desc="held-out clips", unit="clip"):
            row = score_clip(d, predictor, gain, a.train_seconds, a.test_seconds, a.seed)
            if row is not None:
                held.append(row)
    best = max(summary(rows), key=lambda s: s[1])
    lines = ["# The drive's person-specific parts: settings chosen on cross-fitted priors", "",
             f"`python -m eval.studies.readout_cv` on {len(clips)} pre-training clips in two folds; "
             f"{len(rows)} clips long enough to score (first {a.train_seconds:g} s fitted, the rest "
             f"held out); seed {a.seed}. Best mean aperture r: **{best[0]}** ({best[1]:.3f}).", ""]
    lines += table(rows, "Cross-fitted pre-training clips (each scored by the fold prior that never saw it)")
    if held:
        lines += table(held, f"Evaluation clips, shipped prior (last {a.test_seconds:g} s; reference, not used to choose)")
    write_text(a.out / "readout_cv.md", "\n".join(lines))
    write_text(a.out / "readout_cv.json", json.dumps({"cross_fitted": rows, "heldout": held,
                                                      "best": best[0]}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
