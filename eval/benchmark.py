"""The benchmark of tracker issue 5: InsTaG vs the same model from scratch vs simple baselines,
on the held-out protocol of METHOD.md §8.

``python -m eval.benchmark --clips CLIP... --train-seconds 5 10 --methods instag scratch
retrieval loop shifted --prior weights/prior.safetensors --out runs/benchmark [--quick]``

One *cell* = (clip, method, training seconds). Layout under ``--out``:

``clips/{stem}/``            processed clips (res 256 cpu / 512 gpu / 128 quick); a clip given
                             as a processed folder is used where it is.
``avatars/{stem}_{method}_{s}s/``  adapted avatars ('instag' = with the prior, 'scratch' =
                             ``prior=None``; same preset, seed and steps). An avatar already
                             there (e.g. adapted by hand with ``python -m core.adapt``) is reused.
``curves/{cell}.json``       held-out PSNR along the adaptation (below).
``renders/{cell}.mp4``       the method's held-out frames (for the side-by-side videos).
``cells/{cell}.json``        finished metrics of a cell (written atomically; a finished cell is
                             never recomputed -- delete the file to recompute it).
``results.csv``, ``results.md``, ``plots/*.png``, ``videos/{stem}_{s}s_side_by_side.mp4``.

Test span: the same for every training length of a clip: its last ``test_seconds`` (12 s,
quick 2 s), or all frames after the longest training part when the clip is shorter (obama_20s
with 5 and 10 s training: the last 10 s). Evaluation resolution = the preset's ``res``.

Metrics per cell: :func:`eval.protocol.score_frames` quantities (PSNR / SSIM full frame and
face, LPIPS or 'unavailable', LMD mouth / face, AUE stand-ins; FaceMesh runs once on the
rendered and once (cached) on the real test frames), the weight-free sync score
(:func:`eval.sync.av_sync_curve` on the rendered frames' mouth opening vs the test audio):
``av_offset`` / ``av_corr`` (best offset in frames, positive = audio late, and its
correlation), ``av_corr_ref`` (the correlation at the offset where the real test video
peaks) and ``av_offset_err`` (|best - real best|), and SyncNet LSE-C / LSE-D when the
weights load (else 'unavailable'). 'shifted' (real frames, audio 0.4 s late) reports sync
scores only; its image / landmark metrics are 'n/a'. ``gt_av_offset`` / ``gt_av_corr``: the
same sync score of the real test video with its real audio (the reference).

Held-out PSNR vs training steps: adaptations run by the benchmark pass
``observe=CurveRecorder`` to ``core.adapt.adapt``, which scores ``curve_frames`` evenly spaced
held-out frames (``eval.protocol.HeldoutCurve``, the cell's own test span) on the live model
every ``curve_every`` steps (default 100 for the cpu preset, else the preset's ``ckpt_every``)
and after the last step;
points go to ``curves/{cell}.json`` as they come (a resumed run keeps them). States before
the mouth / fuse stages render the mouth branch as it is at that step. The scoring time is
subtracted from ``adapt_minutes``. An avatar adapted outside the benchmark has a curve only
if its ``curves/{cell}.json`` was written the same way.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import inspect
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import write_bytes, write_text
from core.progress import ProgressFn

METHODS: tuple[str, ...] = ("instag", "scratch", "retrieval", "loop", "shifted")
#: Training lengths offered by the app (quick runs on short clips); the paper uses 5 / 10 / 20.
TRAIN_SECONDS: tuple[float, ...] = (3.0, 5.0, 10.0)
ADAPTED: tuple[str, ...] = ("instag", "scratch")
#: Display names (tables, plots, videos).
LABELS = {"instag": "InsTaG (prior)", "scratch": "from scratch", "retrieval": "audio retrieval",
          "loop": "loop (no lip motion)", "shifted": "real, audio +0.4 s", "gt": "ground truth"}
#: Visible marks of the side-by-side panels that are not the recording.
MARKS = {"instag": "AI-generated", "scratch": "AI-generated", "retrieval": "synthetic composite",
         "loop": "looped footage"}
#: (key, table header, higher is better) of the results table, in order.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("psnr", "PSNR", True), ("psnr_face", "PSNR face", True), ("ssim", "SSIM", True),
    ("ssim_face", "SSIM face", True), ("lpips", "LPIPS", False), ("lmd_mouth", "LMD mouth", False),
    ("aue_lower", "AUE lower", False), ("aue_upper", "AUE upper", False),
    ("av_corr_ref", "AV corr @real offset", True), ("av_offset_err", "AV offset err", False),
    ("av_corr", "AV corr best", True),
    ("lse_c", "LSE-C", True), ("lse_d", "LSE-D", False))
CSV_COLUMNS: tuple[str, ...] = (
    "clip", "method", "train_seconds", "status", "preset", "seed", "eval_res", "test_start",
    "test_frames", "psnr", "ssim", "psnr_face", "ssim_face", "lpips", "lmd_mouth", "lmd_face",
    "aue_upper", "aue_lower", "av_offset", "av_corr", "av_corr_ref", "av_offset_err", "lse_c", "lse_d", "syncnet_offset",
    "gt_av_offset", "gt_av_corr", "adapt_steps", "adapt_minutes", "render_fps", "cell_seconds",
    "computed_at", "note")
NA = "n/a"
QUICK_CLIP_RES = 128
#: A work-folder checkpoint newer than this (s) means another process is adapting the cell.
BUSY_SECONDS = 300.0
CLIP_RES = {"cpu": 256, "gpu": 512, "tiny": 128}


@dataclass
class BenchmarkResult:
    """table_md: the markdown of ``results.md``; csv_path: ``results.csv``; plots: PNG paths;
    rows: one flat dict per cell (the CSV columns plus ``curve``)."""

    table_md: str
    csv_path: Path
    plots: list[Path]
    rows: list[dict]


@dataclass
class BenchmarkConfig:
    """Settings of a benchmark run.

    Attributes:
        preset: ``core.adapt`` preset of the adapted methods ('cpu' / 'gpu' / 'tiny');
            quick runs use 'tiny'.
        quick: CI-sized run: tiny preset, 2 s test span, clips preprocessed at 128 px and cut
            to the frames needed.
        seed: adaptation seed (and torch's global seed per cell).
        test_seconds: held-out span (s); None = 12 (quick 2).
        clip_res: preprocessing res for raw videos; None = by preset (256 / 512 / 128).
        landmarks: compute LMD / AUE and the sync score (FaceMesh on every rendered frame).
        curve_frames: held-out frames scored per point of the PSNR-vs-steps curve (evenly
            spaced over the cell's own test span, ``eval.protocol.HeldoutCurve``).
        curve_every: a curve point every this many steps (None = 100 for 'cpu', else the
            preset's ckpt_every).
        videos: write the side-by-side videos.
        jobs: cells run in this many processes (1 = in this process).
        syncnet: SyncNet weights (path / hub id / None = $INSTAG_SYNCNET_WEIGHTS or weights/).
    """

    preset: str = "cpu"
    quick: bool = False
    seed: int = 0
    test_seconds: float | None = None
    clip_res: int | None = None
    landmarks: bool = True
    curve_frames: int = 25
    curve_every: int | None = None
    videos: bool = True
    jobs: int = 1
    syncnet: str | None = None

    def __post_init__(self) -> None:
        if self.quick:
            self.preset = "tiny"
        if self.test_seconds is None:
            self.test_seconds = 2.0 if self.quick else 12.0
        if self.clip_res is None:
            self.clip_res = QUICK_CLIP_RES if self.quick else CLIP_RES.get(self.preset, 256)

    def adapt_config(self, seconds: float):
        from core.adapt import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; one of {sorted(PRESETS)}")
        return replace(PRESETS[self.preset], seconds=float(seconds), seed=self.seed)

    @property
    def eval_res(self) -> int:
        from core.adapt import PRESETS

        return PRESETS[self.preset].res


def cell_name(stem: str, method: str, seconds: float) -> str:
    return f"{stem}_{method}_{seconds:g}s"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, str):
        return str(x)  # MetricUnavailable -> plain str
    return x


# ============================================================================ clips
def prepare_clip(clip: Path, out: Path, cfg: BenchmarkConfig, train_seconds: list[float],
                 progress: ProgressFn | None = None) -> Path:
    """The processed-clip folder of ``clip``: itself when it is one, else
    ``{out}/clips/{stem}`` (preprocessed once; reused when present)."""
    clip = Path(clip)
    if clip.is_dir():
        if not (clip / "manifest.json").is_file():
            raise FileNotFoundError(f"{clip} is not a processed-clip folder (no manifest.json)")
        return clip
    dest = out / "clips" / clip.stem
    if (dest / "manifest.json").is_file():
        return dest
    from core.preprocess import PreprocessConfig, preprocess

    max_frames = None
    if cfg.quick:
        max_frames = int(round((max(train_seconds) + cfg.test_seconds) * 25))
    pcfg = PreprocessConfig(res=cfg.clip_res, max_frames=max_frames,
                            min_seconds=min(4.0, (max_frames or 100) / 25))
    report = progress or (lambda s, f: None)
    preprocess(clip, dest, pcfg, progress=lambda s, f: report(f"{clip.stem}: preprocessing: {s}", f))
    return dest


_CLIPS: dict[str, Any] = {}


def _load_clip(path: Path):
    from core.dataset import ProcessedClip

    key = str(Path(path).resolve())
    if key not in _CLIPS:
        _CLIPS.clear()  # one clip in memory at a time
        _CLIPS[key] = ProcessedClip.load(path)
    return _CLIPS[key]


def test_span(clip, train_seconds: list[float], test_seconds: float) -> torch.Tensor:
    """Held-out indices shared by every training length (see module doc)."""
    from eval.protocol import test_indices

    return test_indices(clip, max(train_seconds), test_seconds)


# ============================================================================ adaptation
class CurveRecorder:
    """``adapt(observe=...)`` hook: held-out PSNR (full frame, face) of ``curve_frames`` evenly
    spaced test frames (:class:`eval.protocol.HeldoutCurve`), persisted after every call to
    ``curves/{cell}.json`` (``{"points": [[steps, psnr, psnr_face], ...], "observe_s": ...}``,
    the layout of the lead's hand-run cells) so an interrupted and resumed adaptation keeps
    its earlier points; ``observe_s`` (time spent scoring) is excluded from ``adapt_minutes``."""

    def __init__(self, clip, seconds: float, res: int, test_seconds: float, n_frames: int,
                 path: Path) -> None:
        from eval.protocol import HeldoutCurve

        self.curve = HeldoutCurve(clip, seconds, res, test_seconds, n_frames)
        self.path = path
        old = json.loads(path.read_text()) if path.is_file() else {}
        self.points = [tuple(p) for p in old.get("points", [])]
        self.observe_s = float(old.get("observe_s", 0.0))

    def __call__(self, steps: int, umf, ident) -> None:
        t0 = time.perf_counter()
        self.curve.points.clear()
        self.curve(steps, umf, ident)
        self.points = [p for p in self.points if p[0] != steps] + list(self.curve.points)
        self.points.sort(key=lambda p: p[0])
        self.observe_s += time.perf_counter() - t0
        write_text(self.path, json.dumps({"points": self.points, "observe_s": self.observe_s}))


def ensure_avatar(clip_dir: Path, out: Path, stem: str, method: str, seconds: float,
                  prior: Path | None, cfg: BenchmarkConfig,
                  progress: ProgressFn | None = None) -> tuple[Path, bool]:
    """The avatar folder of an adapted cell, adapting it (resumable, recording the PSNR-vs-steps
    curve) unless it exists. Returns ``(folder, adapted_here)``."""
    from core.adapt import adapt
    from core.errors import InputError

    name = cell_name(stem, method, seconds)
    av = out / "avatars" / name
    if (av / "model.safetensors").is_file() and (av / "plates.mp4").is_file():
        return av, False
    acfg = cfg.adapt_config(seconds)
    work = av.with_name(f".{av.name}.work")
    ck, pidf = work / "adapt.safetensors", work / "benchmark.pid"
    ours_dead = pidf.is_file() and not _alive(int(pidf.read_text() or 0))
    if ck.is_file() and not ours_dead and time.time() - ck.stat().st_mtime < BUSY_SECONDS:
        raise RuntimeError(f"{work} was updated {time.time() - ck.stat().st_mtime:.0f} s ago: "
                           "another process seems to be adapting this cell; it is left alone "
                           "(rerun the benchmark when it has finished)")
    if not ck.is_file():  # a fresh start: no stale curve points
        (out / "curves" / f"{name}.json").unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    pidf.write_text(str(os.getpid()))
    report = progress or (lambda s, f: None)
    hook = lambda s, f: report(f"{name}: adapting: {s}", f)  # noqa: E731
    use_prior = prior if method == "instag" else None
    kw: dict[str, Any] = {}
    if "observe" in inspect.signature(adapt).parameters:
        rec = CurveRecorder(_load_clip(clip_dir), seconds, acfg.res, cfg.test_seconds,
                            cfg.curve_frames, out / "curves" / f"{name}.json")
        every = cfg.curve_every or (100 if cfg.preset == "cpu" else acfg.ckpt_every)
        kw = {"observe": rec, "observe_every": every}
    try:
        adapt(clip_dir, av, use_prior, acfg, progress=hook, resume=True, work=work, **kw)
    except InputError as e:
        if "different run" not in str(e):
            raise
        shutil.rmtree(work, ignore_errors=True)
        (out / "curves" / f"{name}.json").unlink(missing_ok=True)
        if kw:
            kw["observe"].points = []
        adapt(clip_dir, av, use_prior, acfg, progress=hook, resume=False, work=work, **kw)
    return av, True


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_curve(out: Path, name: str) -> tuple[list[dict], float]:
    """``([{'step', 'psnr', 'psnr_face'}], observe_seconds)`` from ``curves/{cell}.json``
    (empty when the avatar was adapted without recording one)."""
    p = out / "curves" / f"{name}.json"
    if not p.is_file():
        return [], 0.0
    d = json.loads(p.read_text())
    pts = [{"step": int(q[0]), "psnr": float(q[1]), "psnr_face": float(q[2])}
           for q in d.get("points", [])]
    return sorted(pts, key=lambda x: x["step"]), float(d.get("observe_s", 0.0))


# ============================================================================ scoring
def _landmarks(frames: np.ndarray, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FaceMesh ``(points (T, 478, 3) with NaN misses, valid (T,))`` of frames (cached)."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return z["points"], z["valid"]
    from eval.metrics import detect

    tr = detect(frames)
    pts, valid = np.asarray(tr.points, np.float64), np.asarray(tr.valid, bool)
    if cache is not None:
        buf = io.BytesIO()
        np.savez(buf, points=pts, valid=valid)
        write_bytes(cache, buf.getvalue())
    return pts, valid


def _filled(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Misses filled by linear interpolation per coordinate (for the sync scores)."""
    p = points.copy()
    if not valid.any():
        return p
    t = np.arange(len(p))
    flat = p.reshape(len(p), -1)
    for c in range(flat.shape[1]):
        flat[~valid, c] = np.interp(t[~valid], t[valid], flat[valid, c])
    return flat.reshape(p.shape)


_SYNCNET: dict[str, Any] = {}


def _syncnet(spec: str | None):
    """(net, None) or (None, reason)."""
    key = str(spec)
    if key not in _SYNCNET:
        from eval.sync import load_syncnet

        try:
            _SYNCNET[key] = (load_syncnet(spec), None)
        except Exception as e:  # absent offline: reported, never guessed
            _SYNCNET[key] = (None, f"unavailable: {str(e).splitlines()[0][:120]}")
    return _SYNCNET[key]


def sync_metrics(frames: np.ndarray, points: np.ndarray, valid: np.ndarray, audio: np.ndarray,
                 syncnet: str | None, ref_offset: int | None = None) -> dict:
    """Weight-free sync (``eval.sync.av_sync_curve``): ``av_offset`` / ``av_corr`` (best offset
    and its correlation), ``av_corr_ref`` (correlation at ``ref_offset``, the real video's
    own best offset) and ``av_offset_err`` (|best - ref|); SyncNet LSE-C / LSE-D when the
    weights load, else 'unavailable: ...'."""
    from eval.sync import av_sync_curve, sync_scores

    out: dict[str, Any] = {k: NA for k in ("av_offset", "av_corr", "av_corr_ref", "av_offset_err")}
    if valid.mean() >= 0.5:
        try:
            offs, corr = av_sync_curve(_filled(points, valid), audio)
            j = int(np.argmax(corr))
            out.update(av_offset=int(offs[j]), av_corr=float(corr[j]))
            if ref_offset is not None:
                out.update(av_corr_ref=float(corr[list(offs).index(ref_offset)]),
                           av_offset_err=abs(int(offs[j]) - int(ref_offset)))
        except ValueError as e:
            out["av_note"] = str(e)
    else:
        out["av_note"] = f"face found in {valid.mean():.0%} of the frames"
    net, reason = _syncnet(syncnet)
    if net is None:
        out.update(lse_c=reason, lse_d=reason, syncnet_offset=reason)
    elif valid.any():
        s = sync_scores(frames, audio, net, points=_filled(points, valid))
        out.update(lse_c=s.lse_c, lse_d=s.lse_d, syncnet_offset=s.offset)
    else:
        out.update(lse_c=NA, lse_d=NA, syncnet_offset=NA)
    return out


def score_cell(pred: np.ndarray, gt: np.ndarray, face: np.ndarray,
               gt_lm: tuple[np.ndarray, np.ndarray], audio: np.ndarray,
               cfg: BenchmarkConfig, ref_offset: int | None = None) -> dict:
    """Image, landmark and sync metrics of predicted frames against the test frames."""
    from eval.metrics import landmark_metrics
    from eval.protocol import score_frames

    s = score_frames(pred, gt, face, landmarks=False).as_dict()
    for k in ("lmd_mouth", "lmd_face", "aue_upper", "aue_lower"):
        s[k] = NA
    if cfg.landmarks:
        pp, pv = _landmarks(pred)
        gp, gv = gt_lm
        ok = pv & gv
        if ok.any():
            lm = landmark_metrics(pp, gp, ok)
            s.update(lmd_mouth=lm.lmd_mouth, lmd_face=lm.lmd_face, aue_upper=lm.aue_upper,
                     aue_lower=lm.aue_lower, landmark_valid=lm.valid_fraction)
        else:
            s["landmark_note"] = f"face found in {pv.mean():.0%} of the rendered frames"
        s.update(sync_metrics(pred, pp, pv, audio, cfg.syncnet, ref_offset))
    return s


def _write_render(path: Path, frames: np.ndarray) -> None:
    from core.media import write_video

    write_video(path, iter(frames), fps=25.0, crf=8, pix_fmt="yuv444p", preset="veryfast")


def _read_render(path: Path) -> np.ndarray:
    from core.media import iter_frames

    return np.stack(list(iter_frames(path, fps=25.0)))


# ============================================================================ cells
@dataclass
class CellTask:
    """Everything a worker needs to run one cell."""

    clip_dir: Path
    stem: str
    method: str
    seconds: float
    train_seconds: list[float]
    out: Path
    prior: Path | None
    cfg: BenchmarkConfig


def run_cell(task: CellTask, progress: ProgressFn | None = None) -> dict:
    """Compute one cell (adapting if needed), write its render and ``cells/{cell}.json``."""
    from eval import baselines as B
    from eval.protocol import ground_truth, heldout_frames, render_heldout

    t0 = time.perf_counter()
    cfg, out = task.cfg, task.out
    name = cell_name(task.stem, task.method, task.seconds)
    report = progress or (lambda s, f: None)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    row: dict[str, Any] = {"clip": task.stem, "method": task.method,
                           "train_seconds": float(task.seconds), "preset": cfg.preset,
                           "seed": cfg.seed, "eval_res": cfg.eval_res, "quick": cfg.quick}
    if task.method == "instag" and task.prior is None:
        row["status"] = "skipped: no prior given"
        return row
    avatar = None
    if task.method in ADAPTED:
        avatar, adapted_here = ensure_avatar(task.clip_dir, out, task.stem, task.method,
                                             task.seconds, task.prior, cfg, report)
        row["avatar"] = str(avatar)
        row["adapted_here"] = adapted_here
    report(f"{name}: scoring", 0.95)
    clip = _load_clip(task.clip_dir)
    res = cfg.eval_res
    test_idx = test_span(clip, task.train_seconds, cfg.test_seconds)
    n_train = min(clip.num_frames, int(round(task.seconds * 25)))
    if n_train > int(test_idx[0]):
        raise ValueError(f"{task.stem}: training part overlaps the test span")
    frames = heldout_frames(clip, test_idx, res, n_train)
    gt, face = ground_truth(frames)
    span = f"{int(test_idx[0])}-{int(test_idx[-1]) + 1}"
    gt_lm = _landmarks(gt, out / "cache" / f"{task.stem}_test{span}_{res}px_landmarks.npz") \
        if cfg.landmarks else (None, None)
    audio = B.test_audio(clip, test_idx)
    row.update(test_start=int(test_idx[0]), test_frames=int(test_idx.numel()))
    ref: int | None = None
    if cfg.landmarks:
        from eval.sync import av_offset

        try:
            ref, row["gt_av_corr"] = av_offset(_filled(*gt_lm), audio)
            row["gt_av_offset"] = ref
        except ValueError:
            row["gt_av_offset"] = row["gt_av_corr"] = NA
    pred: np.ndarray | None = None
    if task.method in ADAPTED:
        from core.avatar import load_avatar

        av = load_avatar(avatar)
        t1 = time.perf_counter()
        pred = render_heldout(av, frames)
        row["render_fps"] = len(pred) / max(time.perf_counter() - t1, 1e-9)
        rc = av.meta["run"]["config"]
        row["adapt_steps"] = int(rc["face_steps"] + rc["mouth_steps"] + rc["fuse_steps"])
        row["curve"], observe_s = read_curve(out, name)
        row["adapt_minutes"] = (float(av.meta.get("wall_s", float("nan"))) - observe_s) / 60.0
        row["avatar_seed"] = int(rc["seed"])
        row["avatar_res"] = int(av.res)
        want = asdict(cfg.adapt_config(task.seconds))
        diff = [f"{k} {rc.get(k)} (preset {want[k]})" for k in
                ("res", "seconds", "face_steps", "mouth_steps", "fuse_steps", "seed")
                if rc.get(k) != want[k]]
        if diff:  # an avatar adapted outside the benchmark with other settings: flagged
            row["note"] = "avatar differs from the preset: " + ", ".join(diff)
    elif task.method == "retrieval":
        pred, nn_idx = B.retrieval_frames(clip, n_train, test_idx, frames)
        row["retrieved"] = nn_idx.tolist()
    elif task.method == "loop":
        pred = B.loop_frames(clip, n_train, int(test_idx.numel()), res)
    elif task.method == "shifted":
        sh = B.shifted_audio(clip, test_idx)
        for k, _, _ in METRICS:
            row[k] = NA
        row.update(psnr_face=NA, lmd_face=NA)
        if cfg.landmarks:
            row.update(sync_metrics(gt, gt_lm[0], gt_lm[1], sh, cfg.syncnet, ref))
        row["shift_frames"] = B.SHIFT_FRAMES
    else:
        raise ValueError(f"unknown method {task.method!r}; one of {METHODS}")
    if pred is not None:
        row.update(score_cell(pred, gt, face, gt_lm, audio, cfg, ref))
        _write_render(out / "renders" / f"{name}.mp4", pred)
    row["status"] = "ok"
    row["cell_seconds"] = round(time.perf_counter() - t0, 1)
    row["computed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    row = _jsonable(row)
    write_text(out / "cells" / f"{name}.json", json.dumps(row, indent=1))
    return row


def _stale(row: dict, task: CellTask) -> str | None:
    """Why a finished cell does not match this run's settings (None = it does): preset,
    seed, evaluation res or test span (which depends on the longest training length)."""
    cfg = task.cfg
    n = int(json.loads((task.clip_dir / "manifest.json").read_text())["num_frames"])
    start = max(int(round(max(task.train_seconds) * 25)), n - int(round(cfg.test_seconds * 25)))
    for key, want in (("preset", cfg.preset), ("seed", cfg.seed), ("eval_res", cfg.eval_res),
                      ("test_start", start)):
        if key in row and row[key] != want:
            return f"{key} {row[key]} != {want}"
    return None


def _worker(task: CellTask) -> dict:
    torch.set_num_threads(1)
    try:
        return run_cell(task)
    except Exception as e:  # reported as a failed row; the cell stays unfinished
        return _failed(task, e)


def _failed(task: CellTask, e: Exception) -> dict:
    import traceback

    return {"clip": task.stem, "method": task.method, "train_seconds": task.seconds,
            "status": f"failed: {e.__class__.__name__}: {e}", "traceback": traceback.format_exc()}


# ============================================================================ tables
def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(float(v)) else None
    return None


def _agg(vals: list[Any]) -> tuple[float, float, int] | None:
    xs = [x for x in (_num(v) for v in vals) if x is not None]
    if not xs:
        return None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, len(xs)


def _fmt(a: tuple[float, float, int] | None, key: str) -> str:
    if a is None:
        return NA
    m, s, n = a
    d = 1 if key == "av_offset_err" else (3 if key in ("ssim", "ssim_face", "lpips", "av_corr",
                                                       "av_corr_ref", "aue_upper", "aue_lower")
                                          else 2)
    return f"{m:.{d}f} ± {s:.{d}f}" if n > 1 else f"{m:.{d}f}"


def _all_unavailable(rs: list[dict], key: str) -> bool:
    return bool(rs) and all("unavailable" in str(r.get(key, "")).lower() for r in rs)


def results_table(rows: list[dict], methods: list[str], train_seconds: list[float]) -> str:
    """Markdown: one table per training length, methods x metrics, mean ± sample std over
    clips (a single clip shows the value alone)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    clips = sorted({r["clip"] for r in rows})
    lines = [f"Clips: {', '.join(clips)}. Cells: {len(ok)} of {len(rows)} finished. "
             "Values: mean ± sample std over clips (no ± = one clip). n/a = not applicable "
             "or not computed.", ""]
    unavailable = sorted({name for r in ok for k, name in (("lpips", "LPIPS"),
                                                            ("lse_c", "SyncNet LSE-C / LSE-D"))
                          if "unavailable" in str(r.get(k, "")).lower()})
    for s in train_seconds:
        lines += [f"### Training on the first {s:g} s", "",
                  "| method | " + " | ".join(h for _, h, _ in METRICS) + " | adapt min | n |",
                  "|---|" + "---|" * (len(METRICS) + 2)]
        for m in methods:
            rs = [r for r in ok if r["method"] == m and float(r["train_seconds"]) == float(s)]
            cells = [_fmt(_agg([r.get(k) for r in rs]), k) if not _all_unavailable(rs, k)
                     else "unavail." for k, _, _ in METRICS]
            cells.append(_fmt(_agg([r.get("adapt_minutes") for r in rs]), "adapt_minutes"))
            bad = [r["status"] for r in rows if r["method"] == m
                   and float(r["train_seconds"]) == float(s) and r.get("status") != "ok"]
            lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) +
                         f" | {len(rs)}{' (' + '; '.join(sorted(set(bad))) + ')' if bad else ''} |")
        lines.append("")
    gts = [(r["clip"], r.get("gt_av_offset"), r.get("gt_av_corr")) for r in ok
           if _num(r.get("gt_av_corr")) is not None]
    if gts:
        seen = {}
        for c, o, k in gts:
            seen.setdefault(c, (o, k))
        lines.append("Reference, the real test video with its own audio (AV offset / corr): " +
                     "; ".join(f"{c} {o:+d} / {k:.3f}" for c, (o, k) in sorted(seen.items())) + ".")
    notes = [f"{cell_name(r['clip'], r['method'], float(r['train_seconds']))}: {r['note']}"
             for r in ok if r.get("note")]
    if notes:
        lines.append("Notes: " + "; ".join(notes) + ".")
    if unavailable:
        lines.append("Unavailable here (weights absent offline; the CSV says where they were "
                     "looked for): " + ", ".join(unavailable) + ".")
    lines += ["", "Weight-free sync score (`eval.sync.av_sync_curve`: mouth opening vs 1-4 kHz "
              "loudness over offsets -15..15 frames): AV corr @real offset = correlation at the "
              "offset where the real test video peaks (higher = lips follow the audio like the "
              "recording); AV offset err = |best offset - real best offset| in frames (0.4 s "
              "shift = 10); AV corr best = the peak correlation at any offset. AUE: landmark stand-ins in [0, 1], not "
              "OpenFace intensities. 'real, audio +0.4 s': sync scores only (its pixels are "
              "the ground truth)."]
    return "\n".join(lines) + "\n"


def _short(v: Any) -> Any:
    """Unavailable-metric strings cut to their reason (the cell JSON keeps the full text)."""
    return re.sub(r"(weights not found).*", r"\1", v) if isinstance(v, str) else v


def write_csv(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _short(r.get(k, "")) for k in CSV_COLUMNS})
    write_text(path, buf.getvalue())
    return path


# ============================================================================ videos
def _label(frame: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(frame)
    h, w = out.shape[:2]
    scale = max(0.35, w / 700)
    th = max(1, round(scale * 1.5))
    (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    cv2.rectangle(out, (0, 0), (min(w, tw + 6), tht + base + 6), (0, 0, 0), -1)
    cv2.putText(out, text, (3, tht + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th,
                cv2.LINE_AA)
    return out


def side_by_side(out: Path, clip_dir: Path, stem: str, seconds: float, methods: list[str],
                 train_seconds: list[float], cfg: BenchmarkConfig) -> Path | None:
    """``videos/{stem}_{s}s_side_by_side.mp4``: ground truth | each rendered method, labelled,
    marked, with the test audio. Skipped when up to date."""
    from core.media import write_video
    from core.synthesize import AI_STATEMENT, draw_mark
    from eval import baselines as B
    from eval.protocol import ground_truth, heldout_frames

    renders = [(m, out / "renders" / f"{cell_name(stem, m, seconds)}.mp4") for m in methods
               if m != "shifted"]
    renders = [(m, p) for m, p in renders if p.is_file()]
    if not renders:
        return None
    path = out / "videos" / f"{stem}_{seconds:g}s_side_by_side.mp4"
    if path.is_file() and all(path.stat().st_mtime >= p.stat().st_mtime for _, p in renders):
        return path
    clip = _load_clip(clip_dir)
    idx = test_span(clip, train_seconds, cfg.test_seconds)
    gt, _ = ground_truth(heldout_frames(clip, idx, cfg.eval_res, int(round(seconds * 25))))
    panels = [("gt", gt)] + [(m, _read_render(p)) for m, p in renders]
    n = min(len(f) for _, f in panels)
    up = max(1, 256 // cfg.eval_res)

    def frames():
        for t in range(n):
            row = []
            for m, f in panels:
                img = f[t]
                if up > 1:
                    img = np.repeat(np.repeat(img, up, 0), up, 1)
                img = _label(img, LABELS.get(m, m))
                if m in MARKS:
                    img = draw_mark(img, MARKS[m])
                row.append(img)
            yield np.concatenate(row, 1)

    meta = {"title": f"{stem}: held-out frames, {seconds:g} s training",
            "comment": "Left: the recording. Others: " + AI_STATEMENT}
    return write_video(path, frames(), fps=25.0, audio=B.test_audio(clip, idx)[: n * 640],
                       sample_rate=16000, metadata=meta)


# ============================================================================ driver
def run_benchmark(clips: list[Path], train_seconds: list[float], methods: list[str],
                  out_dir: Path, prior: Path | None, quick: bool = True,
                  progress: ProgressFn | None = None, preset: str = "cpu",
                  seed: int = 0, config: BenchmarkConfig | None = None) -> BenchmarkResult:
    """Run (or resume) the benchmark; finished cells are read back, never recomputed.

    Args:
        clips: raw videos or processed-clip folders.
        train_seconds: training lengths (s), e.g. [5, 10].
        methods: subset of :data:`METHODS`.
        out_dir: output root (layout in the module doc).
        prior: prior checkpoint for 'instag' (None: 'instag' cells are skipped).
        quick: CI-sized run (tiny preset, 2 s test, 128 px clips).
        progress: ``progress(text, fraction)``.
        preset, seed: adaptation preset and seed (quick forces 'tiny').
        config: full settings (overrides quick / preset / seed when given).
    """
    cfg = config or BenchmarkConfig(preset=preset, quick=quick, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda s, f: None)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
    methods = [m for m in METHODS if m in methods]
    train_seconds = [float(s) for s in train_seconds]
    if prior is not None and not Path(prior).is_file():
        from core.weights import resolve_prior  # a manifest name

        prior = resolve_prior(prior)
    prior = Path(prior) if prior else None

    # clips first (serial: preprocessing is the memory peak)
    clip_dirs: dict[str, Path] = {}
    for k, c in enumerate(clips):
        c = Path(c)
        report(f"preparing {c.name}", 0.0)
        d = prepare_clip(c, out, cfg, train_seconds,
                         lambda s, f, k=k: report(s, 0.05 * (k + f) / len(clips)))
        clip_dirs[d.name if c.is_dir() else c.stem] = d

    tasks = [CellTask(d, stem, m, s, train_seconds, out, prior, cfg)
             for stem, d in clip_dirs.items() for s in train_seconds for m in methods]
    weight = {i: (20.0 if t.method in ADAPTED else 1.0) for i, t in enumerate(tasks)}
    total = sum(weight.values())
    done_w = 0.0
    rows: dict[int, dict] = {}
    pending: list[int] = []
    for i, t in enumerate(tasks):
        f = out / "cells" / f"{cell_name(t.stem, t.method, t.seconds)}.json"
        if f.is_file():
            row = json.loads(f.read_text())
            why = _stale(row, t)
            if why is None:
                rows[i] = row
                done_w += weight[i]
                continue
            report(f"{f.name} was computed with other settings ({why}): recomputing it", 0.05)
        pending.append(i)
    report(f"{len(rows)} of {len(tasks)} cells already finished", 0.05 + 0.85 * done_w / total)

    def frac(extra: float = 0.0) -> float:
        return 0.05 + 0.85 * min(1.0, (done_w + extra) / total)

    if cfg.jobs > 1 and len(pending) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_worker, tasks[i]): i for i in pending}
            for fu in as_completed(futs):
                i = futs[fu]
                rows[i] = fu.result()
                done_w += weight[i]
                report(f"{cell_name(tasks[i].stem, tasks[i].method, tasks[i].seconds)}: "
                       f"{rows[i]['status']}", frac())
    else:
        for i in pending:
            t = tasks[i]
            name = cell_name(t.stem, t.method, t.seconds)
            try:
                rows[i] = run_cell(t, lambda s, f, i=i: report(s, frac(weight[i] * f)))
            except Exception as e:  # recorded; the cell stays unfinished and is retried next run
                rows[i] = _failed(t, e)
            done_w += weight[i]
            report(f"{name}: {rows[i]['status']}", frac())

    all_rows = [rows[i] for i in range(len(tasks))]
    report("writing tables and plots", 0.9)
    table = results_table(all_rows, methods, train_seconds)
    header = (f"# Benchmark results\n\nPreset `{cfg.preset}`{' (quick)' if cfg.quick else ''}, "
              f"seed {cfg.seed}, evaluation at {cfg.eval_res} px, test span "
              f"{cfg.test_seconds:g} s (or all frames after the longest training part), "
              f"prior `{prior}`.\n\n")
    from eval.plots import metric_bars, psnr_vs_steps

    md = header + table + "\n" + PUBLISHED_MD
    write_text(out / "results.md", md)
    csv_path = write_csv(all_rows, out / "results.csv")
    plots = [metric_bars(all_rows, methods, train_seconds, out / "plots" / "metrics.png"),
             psnr_vs_steps(all_rows, out / "plots" / "psnr_vs_steps.png")]
    if cfg.videos:
        combos = [(stem, s) for stem in clip_dirs for s in train_seconds]
        for k, (stem, s) in enumerate(combos):
            report(f"side-by-side video {stem} {s:g} s", 0.9 + 0.1 * k / len(combos))
            try:
                side_by_side(out, clip_dirs[stem], stem, s, methods, train_seconds, cfg)
            except Exception as e:  # a video never sinks the numbers
                report(f"side-by-side video {stem} {s:g} s failed: {e}", 0.9)
    report("done", 1.0)
    return BenchmarkResult(table_md=md, csv_path=csv_path, plots=plots, rows=all_rows)


#: The paper's published numbers (METHOD.md §8): other data, other hardware, GPU scale.
PUBLISHED_MD = """### Published reference (InsTaG paper, CVPR 2025) -- published figures on other data

Not comparable one-to-one: the paper's own test clips, 512 px, GPU training at paper scale,
LPIPS (AlexNet) and SyncNet weights available, OpenFace AUs. Our numbers above come from our
clips, our presets and weight-free stand-ins where marked.

| method (5 s training) | PSNR full / face | LPIPS full / face | LMD | Sync-C | training | FPS |
|---|---|---|---|---|---|---|
| InsTaG | 28.86 / 26.32 | 0.039 / 0.026 | 3.167 | 5.318 | 13 min | 82.5 |
| TalkingGaussian (from scratch) | 28.32 / 26.01 | 0.041 / 0.028 | 3.588 | 3.556 | 31 min | 114 |
| ER-NeRF | 28.23 / 25.63 | 0.040 / 0.031 | 3.541 | 3.074 | 2 h | 30.8 |
| MimicTalk | 24.69 / 26.27 | 0.075 / 0.031 | 3.489 | 6.926 | 16 min | 8.2 |

| PSNR by training length (published) | 5 s | 10 s | 20 s |
|---|---|---|---|
| InsTaG | 28.86 | 29.45 | 29.82 |
| TalkingGaussian (from scratch) | 28.32 | 29.13 | 29.54 |
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--clips", nargs="+", required=True, help="videos or processed-clip folders")
    p.add_argument("--train-seconds", nargs="+", type=float, default=[5.0, 10.0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--prior", default=None, help="prior checkpoint for 'instag' (or 'none')")
    p.add_argument("--out", default="runs/benchmark", help="output folder (resumable)")
    p.add_argument("--preset", default="cpu", help="adaptation preset: cpu | gpu | tiny")
    p.add_argument("--quick", action="store_true", help="CI-sized run (tiny preset, 2 s test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-seconds", type=float, default=None, help="held-out span (12; quick 2)")
    p.add_argument("--curve-frames", type=int, default=25)
    p.add_argument("--curve-every", type=int, default=None, help="steps between curve points")
    p.add_argument("--jobs", type=int, default=1, help="cells in parallel processes")
    p.add_argument("--no-videos", action="store_true")
    p.add_argument("--no-landmarks", action="store_true", help="skip LMD / AUE / sync")
    p.add_argument("--syncnet", default=None, help="SyncNet weights (default: weights/ or env)")
    a = p.parse_args(argv)
    prior = None if a.prior in (None, "none", "None") else Path(a.prior)
    cfg = BenchmarkConfig(preset=a.preset, quick=a.quick, seed=a.seed, test_seconds=a.test_seconds,
                          curve_frames=a.curve_frames, curve_every=a.curve_every, videos=not a.no_videos, jobs=a.jobs,
                          landmarks=not a.no_landmarks, syncnet=a.syncnet)
    from tqdm import tqdm

    bar = tqdm(total=1000, bar_format="{l_bar}{bar}| {elapsed} {desc}")
    last = [""]

    def progress(text: str, frac: float) -> None:
        bar.set_description_str(text[:90], refresh=False)
        bar.update(max(0, round(frac * 1000) - bar.n))
        phase = re.sub(r"[\d/:.,]+.*$", "", text.split(": ")[-1]) + text.split(":")[0]
        if phase != last[0]:  # one log line per phase, the bar for the rest
            bar.write(f"[{time.strftime('%H:%M:%S')}] {text}")
        last[0] = phase

    r = run_benchmark([Path(c) for c in a.clips], a.train_seconds, a.methods, Path(a.out), prior,
                      quick=a.quick, progress=progress, preset=a.preset, seed=a.seed, config=cfg)
    bar.close()
    print(r.table_md)
    print(f"results: {r.csv_path}; plots: {', '.join(map(str, r.plots))}")
    failed = [row for row in r.rows if str(row.get("status", "")).startswith("failed")]
    for row in failed:
        print(f"\n{row['clip']} {row['method']} {row['train_seconds']:g} s {row['status']}\n"
              f"{row.get('traceback', '')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
