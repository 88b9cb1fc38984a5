"""Train the audio-to-mouth prior (:mod:`core.model.mouth_predictor`) on processed clips.

``python -m core.train.mouth_prior CLIP_DIR... --out weights/mouth_prior.safetensors
[--inputs mel+phones] [--steps 1500] [--seed 0] [--holdout CLIP_DIR...]``

Landmarks only, no rendering: for every clip, the audio front end (:func:`audio_front_end`)
and the per-clip normalised mouth code of its tracked landmarks (:func:`mouth_geometry`,
z-scored over the clip). Training: random 4 s crops from random clips, MSE on the code
(aperture weighted x2), Adam, augmentation by mel-bin shift (+-2 bins), time masking, feature
noise and random gain on the loudness columns.

**Audio-video offsets** (``--align``). Many recordings have their audio a few frames off the
picture, which blurs what the model learns. A model trained on a clip absorbs that clip's lag,
so offsets are estimated across two folds: a model trained on one half of the clips predicts the aperture of
each clip of the other half, and the clip's offset is the lag (within +-``max_offset`` frames)
that best lines the prediction up with the tracked aperture
(:func:`core.model.mouth_drive.estimate_av_offset`). The final pass (from scratch, same seed)
trains on all clips with their audio re-timed by those offsets, saved in the metadata.

Held-out clips (``--holdout``) are never trained on; their aperture correlation (predicted
vs tracked, whole clip, at offset 0 and at their best offset) is reported and saved.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.data.mouth_code import MOUTH_CODE_DIM, MouthCodeStats, mouth_geometry
from core.model.mouth_drive import estimate_av_offset, lagged_corr, pearson, shift_frames
from core.model.mouth_predictor import (MEL_DIM, MouthPredictor, MouthPredictorConfig,
                                        audio_front_end, save_predictor, to_frames)


@dataclass(frozen=True)
class MouthPriorTrainConfig:
    """Training schedule (defaults: about 2-4 minutes on one CPU thread for 25 clips).

    Attributes:
        steps: optimiser steps per pass (1500). batch: crops per step (16).
        crop_frames: crop length in video frames (100 = 4 s).
        lr: Adam learning rate (2e-3), cosine-decayed to 5 %; weight_decay 1e-4.
        code_weights: loss weight of each code column (aperture counts double).
        max_offset: audio-video offsets searched per clip, +-frames (8).
        align: estimate each clip's audio-video offset (two folds) and train on re-timed
            audio (False: on the clips here the fold estimates scatter over +-7 frames, the
            held-out correlations do not improve, and the aligned model estimated obama_20s's
            lag from its first 5 s as -4 frames instead of about +5; see weights/README.md).
        mel_shift, time_mask, noise: augmentation (+-2 mel bins, up to 8 masked steps per
            crop, Gaussian noise std 0.1).
    """

    steps: int = 1500
    batch: int = 16
    crop_frames: int = 100
    lr: float = 2e-3
    weight_decay: float = 1e-4
    code_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0)
    max_offset: int = 8
    align: bool = False
    mel_shift: int = 2
    time_mask: int = 8
    noise: float = 0.1


@dataclass
class ClipData:
    """One clip's training arrays: ``feats`` (S, D) 50 Hz, ``code`` (T, 4) per-clip z-scores,
    ``valid`` (T,) bool (face found), ``offset`` frames (audio late > 0) used to align."""

    name: str
    feats: torch.Tensor
    code: torch.Tensor
    valid: torch.Tensor
    offset: int = 0


def load_clip_data(folder: str | Path, inputs: str) -> ClipData:
    """Front-end features and normalised mouth code of a processed clip folder."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    arrays = load_file(str(folder / "arrays.safetensors"))
    raw = mouth_geometry(arrays["points3d"])
    valid = arrays["valid"].astype(bool)
    stats = MouthCodeStats.fit(raw[valid] if valid.any() else raw)
    feats = audio_front_end(arrays["audio"], inputs)
    return ClipData(folder.name, feats, torch.from_numpy(stats.normalise(raw)), torch.from_numpy(valid))


def shift_steps(feats: torch.Tensor, offset_frames: int) -> torch.Tensor:
    """Features re-timed so that audio ``offset_frames`` late (> 0) lines up with the video:
    step ``m`` of the result is step ``m + 2 * offset`` of the input (edge-clamped; 2 steps
    per frame, :func:`core.model.mouth_drive.shift_frames` on the step grid)."""
    return feats[shift_frames(feats.shape[0], 2 * offset_frames)]


def _batch(clips: list[ClipData], cfg: MouthPriorTrainConfig, gen: torch.Generator,
           mel_dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, ms = [], [], []
    weights = torch.tensor([c.code.shape[0] for c in clips], dtype=torch.float)
    for _ in range(cfg.batch):
        c = clips[int(torch.multinomial(weights, 1, generator=gen))]
        feats = shift_steps(c.feats, c.offset)
        T = c.code.shape[0]
        L = min(cfg.crop_frames, T)
        t0 = int(torch.randint(0, T - L + 1, (1,), generator=gen))
        x = feats[2 * t0: 2 * (t0 + L)]
        if x.shape[0] < 2 * L:
            x = torch.cat([x, x[-1:].expand(2 * L - x.shape[0], -1)], 0)
        x = x.clone()
        if mel_dims and cfg.mel_shift:
            s = int(torch.randint(-cfg.mel_shift, cfg.mel_shift + 1, (1,), generator=gen))
            x[:, :mel_dims] = torch.roll(x[:, :mel_dims], s, dims=1)
        x = x + cfg.noise * torch.randn(x.shape, generator=gen)
        if x.shape[1] > mel_dims:   # loudness columns of the phone features: gain jitter
            x[:, -5:] = x[:, -5:] * (1 + 0.2 * (torch.rand(1, generator=gen) - 0.5))
        if cfg.time_mask:
            w = int(torch.randint(0, cfg.time_mask + 1, (1,), generator=gen))
            a = int(torch.randint(0, max(2 * L - w, 1), (1,), generator=gen))
            x[a:a + w] = 0.0
        y = c.code[t0: t0 + L]
        m = c.valid[t0: t0 + L].float()
        if y.shape[0] < cfg.crop_frames:   # pad short clips, masked out
            pad = cfg.crop_frames - y.shape[0]
            x = torch.cat([x, x[-1:].expand(2 * pad, -1)], 0)
            y = torch.cat([y, y[-1:].expand(pad, -1)], 0)
            m = torch.cat([m, torch.zeros(pad)], 0)
        xs.append(x)
        ys.append(y)
        ms.append(m)
    return torch.stack(xs), torch.stack(ys), torch.stack(ms)


def train_pass(clips: list[ClipData], model_cfg: MouthPredictorConfig, cfg: MouthPriorTrainConfig,
               seed: int, log=print, tag: str = "") -> tuple[MouthPredictor, list[tuple[int, float]]]:
    """One training pass from scratch; returns the model and its loss curve (step, loss)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MouthPredictor(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    w = torch.tensor(cfg.code_weights, dtype=torch.float)
    mel_dims = MEL_DIM if "mel" in model_cfg.inputs else 0
    curve, run, t_last = [], None, time.time()
    for step in range(1, cfg.steps + 1):
        lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, m = _batch(clips, cfg, gen, mel_dims)
        pred = torch.stack([to_frames(p, y.shape[1]) for p in model(x)])
        loss = (((pred - y) ** 2 * w).sum(-1) * m).sum() / (m.sum() * w.sum()).clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lv = loss.item()
        run = lv if run is None else 0.98 * run + 0.02 * lv
        if step % 100 == 0 or step == cfg.steps:
            curve.append((step, round(run, 4)))
        if time.time() - t_last > 5 or step == cfg.steps:
            log(f"{tag}step {step}/{cfg.steps} loss {run:.4f}")
            t_last = time.time()
    model.eval()
    return model, curve


def evaluate(model: MouthPredictor, clip: ClipData, max_offset: int = 8) -> dict:
    """Aperture correlation predicted vs tracked (offset 0 and best), and each code column's r."""
    pred = model.frames(clip.feats, clip.code.shape[0]).numpy()
    tgt, valid = clip.code.numpy(), clip.valid.numpy()
    lags = lagged_corr(pred[:, 0], tgt[:, 0], valid, max_offset)
    best = max(lags, key=lags.get)
    return {"clip": clip.name, "aperture_r": round(lags[0], 3), "best_offset": best,
            "aperture_r_best": round(lags[best], 3),
            "r_by_code": [round(pearson(pred[valid, j], tgt[valid, j]), 3) for j in range(MOUTH_CODE_DIM)]}


def output_gain(model: MouthPredictor, clips: list[ClipData]) -> list[float]:
    """Per code column, spread of the tracked codes over the spread of the predictions on the
    (aligned) training clips: the factor that gives driven mouths the motion range of real
    ones (a regression toward the mean shrinks it)."""
    preds, tgts = [], []
    for c in clips:
        p = model.frames(shift_steps(c.feats, c.offset), c.code.shape[0]).numpy()
        v = c.valid.numpy()
        preds.append(p[v])
        tgts.append(c.code.numpy()[v])
    p, t = np.concatenate(preds), np.concatenate(tgts)
    return [round(float(t[:, j].std() / max(p[:, j].std(), 1e-6)), 3) for j in range(MOUTH_CODE_DIM)]


def train_mouth_prior(train_dirs: list[Path], out: Path, model_cfg: MouthPredictorConfig,
                      cfg: MouthPriorTrainConfig, seed: int = 0, holdout_dirs: list[Path] = (),
                      log=print) -> dict:
    """Both passes, evaluation on held-out clips, save; returns the metadata written."""
    t0 = time.time()
    log(f"loading {len(train_dirs)} training clips")
    clips = [load_clip_data(d, model_cfg.inputs) for d in train_dirs]
    held = [load_clip_data(d, model_cfg.inputs) for d in holdout_dirs]
    offsets = {}
    if cfg.align:
        # a model trained on a clip absorbs that clip's lag: estimate each half's offsets
        # with a model trained on the other half (two folds), then train on aligned audio
        folds = (clips[0::2], clips[1::2])
        for k, (fit, rest) in enumerate(((folds[0], folds[1]), (folds[1], folds[0]))):
            m, _ = train_pass(fit, model_cfg, cfg, seed, log, f"offset fold {k + 1}/2: ")
            for c in rest:
                pred = m.frames(c.feats, c.code.shape[0]).numpy()
                c.offset = estimate_av_offset(pred, c.code.numpy(), c.valid.numpy(), cfg.max_offset)
                offsets[c.name] = c.offset
        log(f"audio-video offsets (frames, audio late > 0): {offsets}")
    model, curve = train_pass(clips, model_cfg, cfg, seed, log, "final: ")
    gain = output_gain(model, clips)
    log(f"output gain (tracked / predicted spread): {gain}")
    held_eval = [evaluate(model, c, cfg.max_offset) for c in held]
    for h in held_eval:
        log(f"held out {h['clip']}: aperture r {h['aperture_r']} (best {h['aperture_r_best']} "
            f"at {h['best_offset']:+d} frames)")
    meta = {"inputs": model_cfg.inputs, "seed": seed, "gain": gain, "train_clips": [c.name for c in clips],
            "train_frames": int(sum(c.code.shape[0] for c in clips)), "offsets": offsets,
            "loss_curve": curve, "holdout": held_eval, "wall_s": round(time.time() - t0, 1),
            "train_config": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in cfg.__dict__.items()}}
    save_predictor(out, model, meta)
    log(f"saved {out} ({sum(p.numel() for p in model.parameters())} parameters, "
        f"{meta['wall_s']} s)")
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train.mouth_prior", description=__doc__.split("\n")[0])
    ap.add_argument("clips", nargs="+", type=Path, help="processed-clip folders to train on")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--holdout", nargs="*", type=Path, default=[],
                    help="processed-clip folders to evaluate on (never trained on)")
    ap.add_argument("--inputs", default="mel+phones", choices=["mel", "phones", "mel+phones"])
    ap.add_argument("--steps", type=int, default=MouthPriorTrainConfig.steps)
    ap.add_argument("--align", action="store_true",
                    help="estimate clip offsets across two folds and train on re-timed audio")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", type=Path, help="also write the metadata as JSON here")
    a = ap.parse_args(argv)
    overlap = {p.resolve() for p in a.clips} & {p.resolve() for p in a.holdout}
    if overlap:
        ap.error(f"clips both trained on and held out: {sorted(str(p) for p in overlap)}")
    meta = train_mouth_prior(a.clips, a.out, MouthPredictorConfig(inputs=a.inputs),
                             MouthPriorTrainConfig(steps=a.steps, align=a.align), a.seed,
                             a.holdout, log=lambda s: print(s, flush=True))
    if a.report:
        from core.atomic import write_text
        write_text(a.report, json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
