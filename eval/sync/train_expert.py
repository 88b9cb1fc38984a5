"""Train and validate the offline landmark sync expert (:mod:`eval.sync.expert`).

``python -m eval.sync.train_expert train CLIP_DIRS... --out weights/sync_expert.safetensors
[--resume] [--seed 0] [--steps N]``
    Contrastive training on processed-clip folders (``python -m core.preprocess``; only
    ``manifest.json`` and ``arrays.safetensors`` are read). Clips whose source is one of
    :data:`EVALUATION_CLIPS` are refused. Each clip's first ``1 - val_fraction`` of frames
    trains, the rest is monitored (validation loss and offset accuracy in the log).

    Each step draws ``batch`` centre frames over all clips; for each, the mouth window
    is the anchor and the candidates are the same clip's audio windows at every offset
    ``-15..15`` (target: offset 0) plus the true audio windows of the other samples of
    the batch (other clips, other times); cross-entropy over cosine similarities / 0.1,
    plus the symmetric audio-to-mouth term over the batch. Augmentation: mouth features
    scaled by ``1 +- 0.2`` and jittered, two mel bands masked.

    Alignment of the training data: some recordings carry an audio-video offset of their
    own. Before the main training, the clips are split into ``align_folds`` folds; for
    each fold a first model is trained for ``align_steps`` steps on the *other* folds and
    measures the best offset of every clip of its fold over the whole clip (a model never
    measures a clip it was trained on: a model measuring its own training clips just
    recalls their recorded alignment). The offsets, minus their median (so that zero stays
    the alignment of most recordings), become each clip's audio shift in the main
    training; estimates with a confidence (LSE-C) below ``min_align_confidence`` are set
    to zero.

    Resumable: the state (model, optimizer, RNG, offsets, loss curve) is checkpointed in
    ``.<out name>.work/state.safetensors`` beside the output every ``checkpoint_every``
    steps; ``--resume`` continues it and gives the same weights as an uninterrupted run.

``python -m eval.sync.train_expert validate CLIP_DIRS... [--weights W] [--table MD]``
    Scores held-out processed clips: best offset vs the reference offset (known, else the
    weight-free estimate of ``eval.sync.syncnet.av_offset``), sync at that
    alignment vs audio shifted by +-5 and +-10 frames, per-5-s-segment offset hits, and
    mismatched pairs (one clip's mouth with another clip's audio); prints the markdown
    table (and writes it to ``--table``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.errors import InputError
from core.progress import ProgressFn, format_seconds
from eval.sync.expert import (
    MAX_OFFSET,
    SyncExpert,
    SyncExpertConfig,
    audio_features,
    audio_windows,
    canonical_landmarks,
    load_sync_expert,
    mouth_features,
    save_sync_expert,
    score_features,
    shift_audio,
    video_windows,
)

#: The clips the shipped expert is validated on (source file stems); training refuses them.
EVALUATION_CLIPS: frozenset[str] = frozenset({
    "obama_20s", "lieu_60s", "man_256_26s_30fps", "woman_20s_512x480_30fps",
    "man_fr_macron_50s_30fps"})
#: Known audio-video offsets (frames, positive = audio late) of evaluation clips whose
#: recording is off; the others are taken as recorded in sync (0).
KNOWN_OFFSETS: dict[str, int] = {"obama_20s": 6}
STATE_KIND = "sync-expert-state"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`.

    Attributes:
        steps: optimisation steps of the main training (2000).
        batch: centre frames per step (32); each brings 31 offset candidates.
        lr: AdamW peak learning rate (1e-3), linear warm-up over ``warmup`` steps (100),
            cosine decay to 5 % at the end.
        weight_decay: AdamW weight decay (1e-3).
        temperature: softmax temperature on cosine similarities (0.1).
        max_offset: offsets of the same clip used as negatives, ``+-15`` frames.
        val_fraction: last fraction of every clip kept for monitoring (0.15).
        align_folds: folds of the cross-fitted offset measurement (2; 0 = train on the
            audio as recorded).
        align_steps: steps of each fold's first model (500).
        min_align_confidence: LSE-C below which a clip's measured offset is ignored (0.05).
        scale_jitter: mouth features scaled by ``1 + U(-j, j)`` per sample (0.2).
        noise: Gaussian noise added to the mouth features, in mouth widths (0.003).
        mel_masks: mel bands zeroed per audio window (2), each up to ``mel_mask_bins``
            (5) bins wide.
        checkpoint_every: steps between resumable state files (250).
        eval_every: steps between validation lines (250).
        seed: seed of every random draw (0).
    """

    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 1e-3
    temperature: float = 0.1
    max_offset: int = MAX_OFFSET
    val_fraction: float = 0.15
    align_folds: int = 2
    align_steps: int = 500
    min_align_confidence: float = 0.05
    scale_jitter: float = 0.2
    noise: float = 0.003
    mel_masks: int = 2
    mel_mask_bins: int = 5
    checkpoint_every: int = 250
    eval_every: int = 250
    seed: int = 0


# ============================================================================ data
@dataclass
class ClipData:
    """One processed clip's expert inputs.

    Attributes:
        name: source file stem. feats: (T, K*3) mouth features. mel: (2T, n_mels).
        offset: audio shift in frames used in training (audio at ``t + offset`` pairs
            with the mouth at ``t``). points2d: (T, 478, 2) crop pixels (weight-free check).
        audio: (640 T,) float32 16 kHz. canon: (T, K, 3) canonical mouth points.
    """

    name: str
    feats: Tensor
    mel: Tensor
    audio: np.ndarray
    canon: np.ndarray
    points2d: np.ndarray
    offset: int = 0

    @property
    def num_frames(self) -> int:
        return int(self.feats.shape[0])


def load_clip(folder: str | Path, cfg: SyncExpertConfig | None = None) -> ClipData:
    """Read a processed clip's landmarks, poses and audio (not its frames).

    Raises:
        InputError('corrupt'): not a processed-clip folder.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from eval.sync.expert import SYNC_POINTS

    cfg = cfg or SyncExpertConfig()
    root = Path(folder)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        name = Path(manifest["source"]["name"]).stem
        res = int(manifest["res"])
        arr = load_file(str(root / "arrays.safetensors"))
        points3d, viewmats, K = arr["points3d"], arr["viewmats"], arr["K"]
        audio, points2d = arr["audio"], arr["points2d"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            SafetensorError) as e:
        raise InputError("corrupt", f"{root} is not a readable processed clip "
                         f"({e.__class__.__name__}: {e}).",
                         "Run `python -m core.preprocess CLIP --out DIR` first.") from e
    canon = canonical_landmarks(points3d, viewmats, float(K[0, 0]), res)
    canon = canon[:, list(SYNC_POINTS)]
    feats = mouth_features(canon, cfg.unit_variance)
    mel = audio_features(audio, len(feats), cfg.n_mels)
    return ClipData(name=name, feats=torch.from_numpy(feats), mel=torch.from_numpy(mel),
                    audio=np.asarray(audio, np.float32), canon=canon,
                    points2d=np.asarray(points2d, np.float32))


def _centre_range(clip: ClipData, cfg: SyncExpertConfig, max_offset: int,
                  lo_frame: int, hi_frame: int) -> tuple[int, int]:
    """Inclusive centre range whose mouth window lies in ``[lo_frame, hi_frame)`` and whose
    audio windows at ``offset + d`` (|d| <= max_offset) lie inside the clip."""
    T, h, w, o = clip.num_frames, cfg.half, cfg.window, clip.offset
    lo = max(lo_frame + h, h + max_offset - o)
    hi = min(hi_frame - (w - h), T - (w - h) - max_offset - o)
    return lo, hi


def _pool(clips: list[ClipData], cfg: SyncExpertConfig, tcfg: TrainConfig, part: str) -> Tensor:
    """(N, 2) long tensor of (clip index, centre) for ``part`` 'train' or 'val'."""
    rows = []
    for k, c in enumerate(clips):
        cut = round(c.num_frames * (1.0 - tcfg.val_fraction))
        span = (0, cut) if part == "train" else (cut, c.num_frames)
        lo, hi = _centre_range(c, cfg, tcfg.max_offset, *span)
        if hi >= lo:
            cs = torch.arange(lo, hi + 1)
            rows.append(torch.stack([torch.full_like(cs, k), cs], 1))
    return torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.long)


# ============================================================================ one step
def _batch(clips: list[ClipData], picks: Tensor, cfg: SyncExpertConfig, max_offset: int
           ) -> tuple[Tensor, Tensor]:
    """Mouth windows (B, W, D) and audio windows (B, 2M+1, 2W, n_mels) at every offset."""
    offs = torch.arange(-max_offset, max_offset + 1)
    vs, aus = [], []
    for k, c in picks.tolist():
        clip = clips[k]
        vs.append(video_windows(clip.feats, torch.tensor([c]), cfg.half, cfg.window)[0])
        aus.append(audio_windows(clip.mel, c + clip.offset + offs, cfg.half, cfg.window))
    return torch.stack(vs), torch.stack(aus)


def _augment(v: Tensor, a: Tensor, tcfg: TrainConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    B = v.shape[0]
    scale = 1.0 + (torch.rand(B, 1, 1, generator=gen) * 2 - 1) * tcfg.scale_jitter
    v = v * scale + tcfg.noise * torch.randn(v.shape, generator=gen)
    if tcfg.mel_masks:
        n_mels = a.shape[-1]
        bins = torch.arange(n_mels)
        a = a.clone()
        flat = a.view(-1, a.shape[-2], n_mels)
        for _ in range(tcfg.mel_masks):
            width = torch.randint(0, tcfg.mel_mask_bins + 1, (flat.shape[0], 1), generator=gen)
            start = torch.randint(0, n_mels, (flat.shape[0], 1), generator=gen)
            m = (bins[None] >= start) & (bins[None] < start + width)
            flat.masked_fill_(m[:, None, :], 0.0)
    return v, a


def contrastive_loss(net: SyncExpert, v: Tensor, a: Tensor, temperature: float
                     ) -> tuple[Tensor, Tensor]:
    """Loss and per-sample offset hits of one batch.

    Args:
        v: (B, W, D) mouth windows. a: (B, O, 2W, n_mels) audio windows at offsets
            ``-M..M`` (the true pair in the middle, index M).
    Returns:
        (loss, hits): scalar loss (mouth-to-audio over shifted + other samples' audio,
        plus audio-to-mouth over the batch, averaged); (B,) bool, the true offset has the
        highest similarity among the O offsets.
    """
    B, O = a.shape[:2]
    M = O // 2
    ev = net.embed_video(v)                                           # (B, E)
    ea = net.embed_audio(a.reshape(B * O, *a.shape[2:])).reshape(B, O, -1)
    shifted = torch.einsum("be,boe->bo", ev, ea) / temperature        # (B, O)
    true_a = ea[:, M]                                                  # (B, E)
    cross = ev @ true_a.T / temperature                                # (B, B) mouth i, audio j
    eye = torch.eye(B, dtype=torch.bool)
    others = cross.masked_fill(eye, float("-inf"))
    logits = torch.cat([shifted, others], 1)
    target = torch.full((B,), M, dtype=torch.long)
    loss_v = torch.nn.functional.cross_entropy(logits, target)
    loss_a = torch.nn.functional.cross_entropy(cross.T, torch.arange(B))
    hits = shifted.argmax(1) == M
    return 0.5 * (loss_v + loss_a), hits


def _lr(step: int, tcfg: TrainConfig) -> float:
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    p = (step - tcfg.warmup) / max(1, tcfg.steps - tcfg.warmup)
    return tcfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


@torch.no_grad()
def validate_pool(net: SyncExpert, clips: list[ClipData], pool: Tensor, tcfg: TrainConfig,
                  chunk: int = 64) -> tuple[float, float]:
    """(mean loss, offset accuracy) over a pool of centres (no augmentation)."""
    net.eval()
    losses, hits = [], []
    for s in range(0, len(pool), chunk):
        picks = pool[s:s + chunk]
        if len(picks) < 2:
            continue
        v, a = _batch(clips, picks, net.cfg, tcfg.max_offset)
        loss, h = contrastive_loss(net, v, a, tcfg.temperature)
        losses.append(loss.item() * len(picks))
        hits.append(h)
    net.train()
    if not hits:
        return float("nan"), float("nan")
    n = sum(len(h) for h in hits)
    return sum(losses) / n, float(torch.cat(hits).float().mean())


def measure_offsets(net: SyncExpert, clips: list[ClipData], tcfg: TrainConfig
                    ) -> list[dict[str, Any]]:
    """Each clip's best offset and LSE-C on its whole recorded audio (as recorded)."""
    net.eval()
    out = []
    for c in clips:
        s = score_features(net, c.feats.numpy(), c.mel.numpy(), tcfg.max_offset)
        out.append({"clip": c.name, "offset": s.best_offset, "confidence": round(s.confidence, 4)})
    net.train()
    return out


def applied_offsets(measured: list[dict[str, Any]], min_confidence: float) -> list[int]:
    """Measured offsets minus their median over the confident clips (zero = how most
    recordings are aligned); unconfident clips get 0."""
    ok = [m["offset"] for m in measured if m["confidence"] >= min_confidence]
    med = round(float(np.median(ok))) if ok else 0
    return [m["offset"] - med if m["confidence"] >= min_confidence else 0 for m in measured]


# ============================================================================ training loop
def _work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.work"


def _save_state(path: Path, net: SyncExpert, opt: torch.optim.Optimizer, gen: torch.Generator,
                meta: dict[str, Any]) -> None:
    from core.model import checkpoint

    tensors = {**checkpoint.module_tensors(net, "model."),
               **checkpoint.optimizer_tensors(opt, "opt."),
               **checkpoint.rng_tensors(gen)}
    checkpoint.save(path, tensors, {"kind": STATE_KIND, **meta})


def _step(net: SyncExpert, opt: torch.optim.Optimizer, clips: list[ClipData], pool: Tensor,
          tcfg: TrainConfig, gen: torch.Generator, lr: float) -> tuple[float, float]:
    """One optimisation step on a random batch of ``pool``; (loss, offset accuracy)."""
    for g in opt.param_groups:
        g["lr"] = lr
    picks = pool[torch.randint(0, len(pool), (tcfg.batch,), generator=gen)]
    v, a = _batch(clips, picks, net.cfg, tcfg.max_offset)
    v, a = _augment(v, a, tcfg, gen)
    loss, hits = contrastive_loss(net, v, a, tcfg.temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item(), hits.float().mean().item()


def cross_fit_offsets(clips: list[ClipData], tcfg: TrainConfig, ecfg: SyncExpertConfig,
                      report: ProgressFn) -> list[dict[str, Any]]:
    """Every clip's recorded offset, measured by a first model trained (``align_steps``)
    on the other folds only (clips dealt to ``align_folds`` folds in name order)."""
    order = sorted(range(len(clips)), key=lambda i: clips[i].name)
    fold_of = {i: j % tcfg.align_folds for j, i in enumerate(order)}
    measured: list[dict[str, Any] | None] = [None] * len(clips)
    short = TrainConfig(**{**asdict(tcfg), "steps": tcfg.align_steps, "val_fraction": 0.0})
    total = tcfg.align_folds * tcfg.align_steps + tcfg.steps
    for f in range(tcfg.align_folds):
        torch.manual_seed(tcfg.seed + 1000 + f)
        gen = torch.Generator().manual_seed(tcfg.seed + 1000 + f)
        others = [c for i, c in enumerate(clips) if fold_of[i] != f]
        pool = _pool(others, ecfg, short, "train")
        net = SyncExpert(ecfg).train()
        opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        for k in range(tcfg.align_steps):
            loss, _ = _step(net, opt, others, pool, short, gen, _lr(k, short))
            report(f"offset fold {f + 1}/{tcfg.align_folds}: step {k + 1}/{tcfg.align_steps} "
                   f"loss {loss:.3f}", (f * tcfg.align_steps + k + 1) / total)
        mine = [i for i in range(len(clips)) if fold_of[i] == f]
        for i, m in zip(mine, measure_offsets(net, [clips[i] for i in mine], tcfg)):
            measured[i] = m
    return [m for m in measured if m is not None]


def train(clip_dirs: list[str | Path], out: str | Path, tcfg: TrainConfig | None = None,
          ecfg: SyncExpertConfig | None = None, resume: bool = False,
          progress: ProgressFn | None = None, log=print) -> Path:
    """Train the sync expert on processed clips and write its weights to ``out``.

    Raises:
        InputError: an evaluation clip among the inputs, unreadable clips, or a
            ``--resume`` state made for other clips or settings.
    """
    from core.model import checkpoint

    tcfg = tcfg or TrainConfig()
    ecfg = ecfg or SyncExpertConfig()
    out = Path(out)
    report = progress or (lambda text, frac: None)
    t0 = time.perf_counter()
    clips = [load_clip(d, ecfg) for d in clip_dirs]
    banned = sorted({c.name for c in clips} & EVALUATION_CLIPS)
    if banned:
        raise InputError("wrong_weights", f"Evaluation clips among the training clips: "
                         f"{', '.join(banned)}.", "Leave them out: the sync expert is "
                         "validated on them and must never see them in training.")
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise InputError("corrupt", "The same source clip is given twice.",
                         "Pass each processed clip once.")
    log(f"{len(clips)} clips, {sum(c.num_frames for c in clips)} frames "
        f"({sum(c.num_frames for c in clips) / 25:.0f} s)")
    state_path = _work_dir(out) / "state.safetensors"
    state = None
    if resume and state_path.is_file():
        state = checkpoint.load(state_path, kind=STATE_KIND)
        meta = state[1]
        if meta["clips"] != names or meta["train"] != asdict(tcfg) or meta["config"] != asdict(ecfg):
            raise InputError("wrong_weights", f"{state_path} was made for other clips or "
                             "settings.", "Run again without --resume (or with the same "
                             "clips and settings).")
    t_run, cpu0 = time.perf_counter(), time.process_time()
    measured: list[dict[str, Any]] | None = None
    if state is not None:
        measured = state[1]["measured"]
    elif tcfg.align_folds > 1 and len(clips) >= tcfg.align_folds:
        measured = cross_fit_offsets(clips, tcfg, ecfg, report)
    if measured is not None:
        for c, o in zip(clips, applied_offsets(measured, tcfg.min_align_confidence)):
            c.offset = o
        log("recorded offsets, cross-fitted (frames, + = audio late; applied = minus the "
            "median): " + ", ".join(f"{m['clip']} {m['offset']:+d} (C {m['confidence']:.2f}, "
                                    f"applied {c.offset:+d})" for m, c in zip(measured, clips)))

    torch.manual_seed(tcfg.seed)
    net = SyncExpert(ecfg).train()
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    gen = torch.Generator().manual_seed(tcfg.seed)
    step, curve, elapsed0, run = 0, [], 0.0, [None, None]
    if state is not None:
        tensors, meta = state
        net.load_state_dict(checkpoint.prefixed(tensors, "model."))
        checkpoint.load_optimizer_tensors(opt, tensors, "opt.")
        checkpoint.load_rng_tensors(gen, tensors)
        step, curve, run, elapsed0 = meta["step"], meta["curve"], meta["running"], meta["elapsed_s"]
        log(f"resumed at step {step}")
    train_pool, val_pool = _pool(clips, ecfg, tcfg, "train"), _pool(clips, ecfg, tcfg, "val")
    if len(train_pool) == 0:
        raise InputError("too_short", "No clip is long enough to train on (each needs at "
                         f"least {ecfg.window + 2 * tcfg.max_offset + 1} frames).",
                         "Pass longer processed clips.")
    log(f"{len(train_pool)} training centres, {len(val_pool)} validation centres")
    before = tcfg.align_folds * tcfg.align_steps if measured is not None else 0
    total = before + tcfg.steps
    while step < tcfg.steps:
        lv, hv = _step(net, opt, clips, train_pool, tcfg, gen, _lr(step, tcfg))
        step += 1
        run = [lv if run[0] is None else 0.98 * run[0] + 0.02 * lv,
               hv if run[1] is None else 0.98 * run[1] + 0.02 * hv]
        elapsed = elapsed0 + time.perf_counter() - t_run
        left = (time.perf_counter() - t_run) / max(step - (state[1]["step"] if state else 0), 1) \
            * (tcfg.steps - step)
        report(f"step {step}/{tcfg.steps} loss {run[0]:.3f} acc {run[1]:.2f} "
               f"({format_seconds(left)} left)", (before + step) / total)
        if step % tcfg.eval_every == 0 or step == tcfg.steps:
            vl, va = validate_pool(net, clips, val_pool, tcfg)
            curve.append({"step": step, "train_loss": round(run[0], 4),
                          "train_acc": round(run[1], 3), "val_loss": round(vl, 4),
                          "val_acc": round(va, 3), "elapsed_s": round(elapsed, 1)})
            log(f"step {step}: train loss {run[0]:.3f} acc {run[1]:.2f} | val loss {vl:.3f} "
                f"acc {va:.2f} | {format_seconds(elapsed)}")
        if step % tcfg.checkpoint_every == 0 and step < tcfg.steps:
            _save_state(state_path, net, opt, gen, {
                "step": step, "curve": curve, "running": run, "measured": measured,
                "clips": names, "train": asdict(tcfg), "config": asdict(ecfg),
                "elapsed_s": elapsed})
    elapsed = elapsed0 + time.perf_counter() - t_run
    info = {"clips": {c.name: c.num_frames for c in clips}, "train": asdict(tcfg),
            "steps": step, "measured_offsets": measured,
            "applied_offsets": {c.name: c.offset for c in clips},
            "curve": curve, "train_seconds": round(elapsed, 1),
            "cpu_seconds_this_process": round(time.process_time() - cpu0, 1),
            "parameters": sum(p.numel() for p in net.parameters())}
    save_sync_expert(net, out, info)
    log(f"wrote {out} ({info['parameters']} parameters); training {format_seconds(elapsed)}, "
        f"loading {format_seconds(time.perf_counter() - t0 - (elapsed - elapsed0))}")
    return out


# ============================================================================ validation
@dataclass
class ClipValidation:
    """Validation numbers of one held-out clip (see :func:`validate_clip`).

    ``reference``: the offset the expert should find: the known one (``source`` 'known')
    or, when the recording's offset is not known, the weight-free estimate of
    :func:`eval.sync.syncnet.av_offset` (``source`` 'weight-free'), which does not use the expert.
    """

    name: str
    seconds: float
    reference: int
    source: str
    best: int
    weight_free: int
    weight_free_r: float
    lse_c: float
    lse_d: float
    shifts: dict[int, dict[str, float]] = field(default_factory=dict)
    segments_hit: int = 0
    segments: int = 0


def validate_clip(net: SyncExpert, clip: ClipData, known: int | None,
                  shifts: tuple[int, ...] = (0, 5, 10, -5, -10),
                  segment_s: float = 5.0) -> ClipValidation:
    """Score a held-out clip: as recorded; realigned to its reference offset (``known``,
    else the weight-free estimate) then shifted by each of ``shifts`` frames (distance and
    confidence at offset 0, best offset); and every ``segment_s`` segment's best offset
    against the reference."""
    from eval.sync.syncnet import av_offset

    T = clip.num_frames
    s = score_features(net, clip.feats.numpy(), clip.mel.numpy())
    wf_off, wf_r = av_offset(clip.points2d, clip.audio)
    ref = wf_off if known is None else known
    aligned = shift_audio(clip.audio, -ref)
    rows = {}
    for k in shifts:
        a = shift_audio(aligned, k)
        sk = score_features(net, clip.feats.numpy(), audio_features(a, T, net.cfg.n_mels))
        rows[k] = {"d0": sk.distance_at(0), "c0": sk.confidence_at(0), "best": sk.best_offset,
                   "lse_c": sk.confidence}
    seg = int(segment_s * 25)
    hit = n = 0
    for start in range(0, T - seg + 1, seg):
        part = clip.audio[start * 640:(start + seg) * 640]
        ss = score_features(net, clip.feats[start:start + seg].numpy(),
                            audio_features(part, seg, net.cfg.n_mels))
        n += 1
        hit += abs(ss.best_offset - ref) <= 1
    return ClipValidation(name=clip.name, seconds=T / 25, reference=ref,
                          source="weight-free" if known is None else "known",
                          best=s.best_offset, weight_free=wf_off, weight_free_r=wf_r,
                          lse_c=s.confidence, lse_d=s.distance, shifts=rows,
                          segments_hit=hit, segments=n)


def mismatch_score(net: SyncExpert, mouth: ClipData, voice: ClipData) -> tuple[float, int, float]:
    """(LSE-C, best offset, distance) of one clip's mouth with another clip's audio,
    over their common length (each clip's features normalised on its own)."""
    T = min(mouth.num_frames, voice.num_frames)
    s = score_features(net, mouth.feats[:T].numpy(),
                       audio_features(voice.audio[:T * 640], T, net.cfg.n_mels))
    return s.confidence, s.best_offset, s.distance


def validation_table(net: SyncExpert, clips: list[ClipData],
                     known: dict[str, int] | None = None) -> str:
    """The markdown validation tables of held-out clips."""
    known = KNOWN_OFFSETS if known is None else known
    vals = [validate_clip(net, c, known.get(c.name)) for c in clips]
    L = ["### Offset found on the whole clip (frames, + = audio late)", "",
         ("| clip | s | reference offset (source) | expert best offset | error | LSE-C | LSE-D "
          "| 5-s segments within ±1 of reference | weight-free offset (r) |"),
         "|---|---|---|---|---|---|---|---|---|"]
    for v in vals:
        L.append(f"| {v.name} | {v.seconds:.0f} | {v.reference:+d} ({v.source}) | {v.best:+d} | "
                 f"{v.best - v.reference:+d} | {v.lse_c:.3f} | {v.lse_d:.3f} | "
                 f"{v.segments_hit}/{v.segments} | {v.weight_free:+d} ({v.weight_free_r:.2f}) |")
    shifts = list(vals[0].shifts) if vals else []
    hdr = " | ".join(f"shift {k:+d}" for k in shifts)
    L += ["", "### Audio realigned to the reference offset, then shifted (frames; + = delayed)",
          "",
          "Confidence at offset 0 (`median - distance at 0`; higher = in sync):", "",
          f"| clip | {hdr} |", "|---|" + "---|" * len(shifts)]
    for v in vals:
        L.append(f"| {v.name} | " + " | ".join(f"{v.shifts[k]['c0']:+.3f}" for k in shifts) + " |")
    L += ["", "Distance at offset 0 (lower = in sync):", "",
          f"| clip | {hdr} |", "|---|" + "---|" * len(shifts)]
    for v in vals:
        L.append(f"| {v.name} | " + " | ".join(f"{v.shifts[k]['d0']:.3f}" for k in shifts) + " |")
    L += ["", "Best offset found (should equal the shift):", "",
          f"| clip | {hdr} |", "|---|" + "---|" * len(shifts)]
    for v in vals:
        L.append(f"| {v.name} | " + " | ".join(f"{v.shifts[k]['best']:+d}" for k in shifts) + " |")
    if len(clips) > 1:
        L += ["", "### Mismatched pairs: one clip's mouth with another clip's audio", "",
              "| mouth of | audio of | LSE-C | best offset | LSE-D |", "|---|---|---|---|---|"]
        for i, c in enumerate(clips):
            o = clips[(i + 1) % len(clips)]
            conf, off, dist = mismatch_score(net, c, o)
            L.append(f"| {c.name} | {o.name} | {conf:.3f} | {off:+d} | {dist:.3f} |")
    return "\n".join(L) + "\n"


def validation_report(net: SyncExpert, clips: list[ClipData], clip_dirs: list[str]) -> str:
    """The whole ``docs/results/sync_expert.md``: what is measured, how to regenerate it,
    and :func:`validation_table`."""
    trained = ", ".join(sorted(net.meta.get("clips", {}))) or "unknown"
    cmd = "python -m eval.sync.train_expert validate " + " ".join(
        f"runs/clips/{Path(d).name}" for d in clip_dirs) + " --table docs/results/sync_expert.md"
    return f"""# Landmark sync expert: validation on held-out clips

The offline sync expert (`eval/sync/expert.py`, shipped weights
`weights/sync_expert.safetensors`) scored on clips it never saw in training. Regenerate with
(processed clips made by `python -m core.preprocess CLIP --out runs/clips/NAME --res 256`):

```
OMP_NUM_THREADS=1 {cmd}
```

Definitions (`eval/sync/expert.py`): for every offset `d` in -15..15 frames, the mean over
5-frame windows of the distance between the mouth embedding at `t` and the audio embedding
at `t + d`; **LSE-C** = median - min over offsets, **LSE-D** = min, **best offset** = argmin
(positive = audio late). *Confidence at offset 0* = median - distance at `d = 0` (the
audio as given). *Weight-free offset*: the lip-opening / loudness cross-correlation of
`eval.sync.syncnet.av_offset`, which uses no trained weights, with its correlation r. *Reference
offset*: the offset the expert should find: the known lag of the recording where it is
known (obama_20s: audio about 6 frames late), else the weight-free offset (the other
clips' true offsets are not known; the weight-free estimate is independent of the
expert). *5-s segments*: consecutive 5 s pieces of the clip, each scored on its own.
Trained on {len(net.meta.get("clips", {}))} clips: {trained}.
How the shipped weights were made, and the reading of these tables: `weights/README.md`.

{validation_table(net, clips)}"""


# ============================================================================ CLI
class _LineProgress:
    """``progress(text, fraction)`` printing one line every ``every`` seconds (logs)."""

    def __init__(self, every: float = 5.0) -> None:
        self.every, self.last = every, 0.0

    def __call__(self, text: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.every or fraction >= 1.0:
            self.last = now
            print(f"{100 * fraction:5.1f}% {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.sync.train_expert",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the sync expert on processed clips")
    t.add_argument("clips", nargs="+", help="processed-clip folders (python -m core.preprocess)")
    t.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    t.add_argument("--resume", action="store_true", help="continue the run's saved state")
    t.add_argument("--seed", type=int, default=TrainConfig.seed)
    t.add_argument("--steps", type=int, default=TrainConfig.steps)
    t.add_argument("--align-folds", type=int, default=TrainConfig.align_folds,
                   help="folds of the cross-fitted measurement of the clips' own offsets "
                        "(0 = train on the audio as recorded)")
    v = sub.add_parser("validate", help="validation tables on held-out processed clips")
    v.add_argument("clips", nargs="+", help="processed-clip folders of held-out clips")
    v.add_argument("--weights", default=None, help="expert weights (default: shipped)")
    v.add_argument("--table", default=None, help="also write the markdown table here")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        if a.cmd == "train":
            tcfg = TrainConfig(seed=a.seed, steps=a.steps, align_folds=a.align_folds)
            if sys.stderr.isatty():
                from core.progress import ProgressBar

                with ProgressBar() as bar:
                    train(a.clips, a.out, tcfg, resume=a.resume, progress=bar, log=bar.write)
            else:
                train(a.clips, a.out, tcfg, resume=a.resume, progress=_LineProgress(),
                      log=lambda s: print(s, flush=True))
        else:
            net = load_sync_expert(a.weights)
            clips = [load_clip(d, net.cfg) for d in a.clips]
            table = validation_report(net, clips, a.clips)
            print(table)
            if a.table:
                from core.atomic import write_text

                write_text(a.table, table)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
