"""One benchmark cell: (clip, method, training seconds) -> its avatar, renders and scores.

:func:`run_cell` is a pure function of its picklable :class:`CellTask` (everything it reads
is named by the task, everything it writes goes under ``task.out``), so any executor can
run cells: this process, local worker processes, or a cluster. Layout under ``out``:

``clips/{stem}/``                  processed clips made by the benchmark from raw videos.
``avatars/{stem}_{avatar}_{s}s/``  adapted avatars ('instag' = with the prior, 'scratch' =
                                   without; same preset, seed and steps). An avatar already
                                   there is reused; ``mean-mouth`` renders the 'instag' one.
``curves/{cell}.json``             held-out PSNR along the adaptation
                                   (:class:`CurveRecorder`).
``renders/{cell}/{clip}.mp4``      every scored clip of held-out frames ('heldout' = the
                                   method, else the control's name), lossless RGB at the
                                   evaluation resolution, with a ``.json`` sidecar naming
                                   what made it (re-rendered when that changes).
``cache/``                         FaceMesh landmarks of the recording and of each render.
``cells/{cell}.json``              the finished cell: one flat row (written atomically).

Scores come from :mod:`eval.bench.scoring` on the stored renders, so ``rescore`` recomputes every
metric of a finished cell without adapting or rendering anything. Control scores are
stored with the control's name as prefix (``shuffled_aperture_r``, ``silence_psnr_head``).
"""
from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
import os
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import write_bytes, write_text
from core.progress import ProgressFn
from eval.bench.methods import ADAPTED, AVATAR_OF, CONTROLS, METHODS
from eval.bench.scoring import NA, Render, ScoreConfig, score_render

#: Version of the cell row layout; cells written by an older layout are recomputed
#: (their avatars and up-to-date renders are reused). 3: head-boundary band PSNR / SSIM.
CELL_SCHEMA = 4
#: Version of the render recipe; renders made by another one are re-rendered.
#: 2: test plates from ``core.data.masks.torso_plate`` (head area filled from its surroundings).
RENDER_VERSION = 2
QUICK_CLIP_RES = 128
CLIP_RES = {"cpu": 256, "gpu": 512, "zerogpu": 512, "tiny": 128}
#: A work-folder checkpoint newer than this (s) means another process is adapting the cell.
BUSY_SECONDS = 300.0


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
        landmarks: compute the FaceMesh-based scores (aperture, LMD, AUE, sync).
        curve_frames: held-out frames scored per point of the PSNR-vs-steps curve (evenly
            spaced over the cell's test span, ``eval.bench.protocol.HeldoutCurve``); None =
            25 (quick 10).
        curve_every: a curve point every this many steps (None = 100 for 'cpu', 50 for
            'fast', else the preset's ckpt_every).
        curve_aperture: also score the curve frames' lip aperture r at every curve point
            (FaceMesh on the renders; adds a few seconds per point).
        videos: write the side-by-side videos.
        jobs: cells run in this many local processes (1 = in this process).
        ray: an :class:`eval.bench.ray_executor.RayOptions`: run the cells as Ray tasks instead
            (None = local).
        syncnet: SyncNet weights (path / hub id / None = $INSTAG_SYNCNET_WEIGHTS or weights/).
        sync_expert: landmark sync expert weights (None = shipped).
        rescore: recompute the scores of finished cells from their stored renders only.
        adapt: adapt missing avatars (False: their cells are skipped, e.g. to score what
            exists while adaptations run elsewhere).
        adapt_overrides: ``core.adapt.AdaptConfig`` fields set on top of the preset for every
            adapted cell (ablations, e.g. ``{"mouth_code": False}``); recorded in each row, and
            a stored cell made with other overrides is recomputed. Use one ``--out`` folder per
            ablation variant (avatars are named by clip, method and seconds only).
        device: where cells adapt and render (``core.device.resolve_device``: 'auto' picks
            CUDA when the process sees a GPU, e.g. a Ray cell given one with ``--ray-gpus``).
        raster: the rasterizer (``core.raster.render.RASTER_CHOICES``).
    """

    preset: str = "cpu"
    quick: bool = False
    seed: int = 0
    test_seconds: float | None = None
    clip_res: int | None = None
    landmarks: bool = True
    curve_frames: int | None = None
    curve_every: int | None = None
    curve_aperture: bool = False
    videos: bool = True
    jobs: int = 1
    syncnet: str | None = None
    sync_expert: str | None = None
    rescore: bool = False
    adapt: bool = True
    ray: Any = None
    adapt_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    raster: str = "auto"

    def __post_init__(self) -> None:
        if self.quick:
            self.preset = "tiny"
        if self.test_seconds is None:
            self.test_seconds = 2.0 if self.quick else 12.0
        if self.curve_frames is None:
            self.curve_frames = 10 if self.quick else 25
        if self.clip_res is None:
            self.clip_res = QUICK_CLIP_RES if self.quick else CLIP_RES.get(self.preset, 256)
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        from core.train.adapt import AdaptConfig

        known = {f.name for f in fields(AdaptConfig)} - {"seconds", "seed", "av_offset"}
        bad = sorted(set(self.adapt_overrides) - known)
        if bad:
            raise ValueError(f"unknown adaptation settings {bad}; choose from {sorted(known)}")

    def adapt_config(self, seconds: float, method: str = "instag"):
        """The ``core.adapt.AdaptConfig`` of an adapted cell. 'scratch' has nothing
        pre-trained: besides adapting without the motion-field prior (:func:`ensure_avatar`),
        its mouth drive is the person's own model alone (``person_weight`` 1), unless the
        overrides set that weight."""
        from core.train.adapt import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; one of {sorted(PRESETS)}")
        own = {"person_weight": 1.0} if method == "scratch" else {}
        # the offset is measured on the training seconds: held-out frames inform nothing
        return replace(PRESETS[self.preset], **{**own, **self.adapt_overrides},
                       seconds=float(seconds), seed=self.seed, av_offset="training")

    @property
    def eval_res(self) -> int:
        from core.train.adapt import PRESETS

        return PRESETS[self.preset].res

    @property
    def score(self) -> ScoreConfig:
        return ScoreConfig(landmarks=self.landmarks, syncnet=self.syncnet,
                           sync_expert=self.sync_expert)


@dataclass(frozen=True)
class CellTask:
    """Everything needed to run one cell (picklable).

    clip_dir: processed-clip folder; stem: its name in tables; method: one of
    :data:`eval.bench.methods.METHODS`; seconds: training length; train_seconds: every training
    length of the run (the shared test span follows the longest); out: output root;
    prior: prior checkpoint for 'instag' / 'mean-mouth' (None: those cells are skipped).
    """

    clip_dir: Path
    stem: str
    method: str
    seconds: float
    train_seconds: tuple[float, ...]
    out: Path
    prior: Path | None
    cfg: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    @property
    def name(self) -> str:
        return cell_name(self.stem, self.method, self.seconds)


def cell_name(stem: str, method: str, seconds: float) -> str:
    return f"{stem}_{method}_{seconds:g}s"


# ============================================================================ clips
_CLIPS: dict[str, Any] = {}


def load_clip(path: Path):
    """The processed clip at ``path`` (one kept in memory per process)."""
    from core.data.dataset import ProcessedClip

    key = str(Path(path).resolve())
    if key not in _CLIPS:
        _CLIPS.clear()
        _CLIPS[key] = ProcessedClip.load(path)
    return _CLIPS[key]


def test_span(clip, train_seconds: tuple[float, ...] | list[float],
              test_seconds: float) -> torch.Tensor:
    """Held-out indices shared by every training length of a clip: its last
    ``test_seconds``, or all frames after the longest training part when shorter."""
    from eval.bench.protocol import test_indices

    return test_indices(clip, max(train_seconds), test_seconds)


# ============================================================================ adaptation
class CurveRecorder:
    """``adapt(observe=...)`` hook: held-out PSNR (and, with ``aperture``, lip aperture r)
    of ``curve_frames`` evenly spaced test frames (:class:`eval.bench.protocol.HeldoutCurve`),
    persisted after every call to ``curves/{cell}.json`` (``{"points": [[steps, psnr,
    psnr_face, psnr_head, aperture_r, seconds], ...], "observe_s": ...}``) so a resumed
    adaptation keeps its earlier points. ``seconds``: adaptation wall time when the point
    was taken, measured from the recorder's creation (just before adaptation starts) with
    the time spent scoring left out (``observe_s``, also excluded from ``adapt_minutes``);
    a resumed adaptation continues from its last point's seconds. ``acfg``: the cell's
    ``core.adapt.AdaptConfig`` (its mouth-code and drive settings; None: no mouth code)."""

    def __init__(self, clip, seconds: float, res: int, test_seconds: float, n_frames: int,
                 path: Path, acfg=None, aperture: bool = False) -> None:
        from eval.bench.protocol import HeldoutCurve

        self.curve = HeldoutCurve(clip, seconds, res, test_seconds, n_frames,
                                  bool(acfg and acfg.mouth_code), acfg and acfg.readout,
                                  acfg and acfg.person, acfg.seed if acfg else 0,
                                  aperture=aperture)
        self.path = path
        old = json.loads(path.read_text()) if path.is_file() else {}
        self.points = [tuple(p) for p in old.get("points", [])]
        self.observe_s = float(old.get("observe_s", 0.0))
        self.before_s = max([float(p[5]) for p in self.points if len(p) > 5] or [0.0])
        self.t0 = time.perf_counter()
        self.observed_here = 0.0

    def __call__(self, steps: int, umf, ident) -> None:
        t0 = time.perf_counter()
        wall = self.before_s + (t0 - self.t0) - self.observed_here
        self.curve.points.clear()
        self.curve(steps, umf, ident)
        got = [(*p, round(wall, 2)) for p in self.curve.points]
        self.points = [p for p in self.points if p[0] != steps] + got
        self.points.sort(key=lambda p: p[0])
        self.observed_here += time.perf_counter() - t0
        self.observe_s += time.perf_counter() - t0
        write_text(self.path, json.dumps({"points": self.points, "observe_s": self.observe_s}))


def read_curve(out: Path, name: str) -> tuple[list[dict], float]:
    """``([{'step', 'psnr', 'psnr_face'[, 'psnr_head', 'aperture_r', 'seconds']}],
    observe_seconds)`` from ``curves/{name}.json`` (empty when the avatar was adapted
    without recording one; older curves lack the last keys)."""
    p = out / "curves" / f"{name}.json"
    if not p.is_file():
        return [], 0.0
    d = json.loads(p.read_text())
    keys = ("step", "psnr", "psnr_face", "psnr_head", "aperture_r", "seconds")
    pts = [{k: (int(v) if k == "step" else float(v)) for k, v in zip(keys, q)}
           for q in d.get("points", [])]
    return sorted(pts, key=lambda x: x["step"]), float(d.get("observe_s", 0.0))


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


def ensure_avatar(clip_dir: Path, out: Path, stem: str, method: str, seconds: float,
                  prior: Path | None, cfg: BenchmarkConfig,
                  progress: ProgressFn | None = None) -> tuple[Path, bool]:
    """The avatar folder of an adapted method ('instag' with ``prior``, 'scratch' without),
    adapting it (resumable, recording the PSNR-vs-steps curve) unless it exists.
    Returns ``(folder, adapted_here)``."""
    from core.train.adapt import adapt
    from core.errors import InputError

    name = cell_name(stem, method, seconds)
    av = out / "avatars" / name
    if (av / "model.safetensors").is_file() and (av / "plates.mp4").is_file():
        return av, False
    acfg = cfg.adapt_config(seconds, method)
    work = av.with_name(f".{av.name}.work")
    ck, pidf = work / "adapt.safetensors", work / "benchmark.pid"
    ours_dead = pidf.is_file() and not _alive(int(pidf.read_text() or 0))
    if ck.is_file() and not ours_dead and time.time() - ck.stat().st_mtime < BUSY_SECONDS:
        raise RuntimeError(f"{work} was updated {time.time() - ck.stat().st_mtime:.0f} s ago: "
                           "another process seems to be adapting this cell; it is left alone "
                           "(rerun the benchmark when it has finished)")
    curve = out / "curves" / f"{name}.json"
    if not ck.is_file():  # a fresh start: no stale curve points
        curve.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    pidf.write_text(str(os.getpid()))
    report = progress or (lambda s, f: None)
    hook = lambda s, f: report(f"{name}: adapting: {s}", f)  # noqa: E731
    use_prior = prior if method == "instag" else None
    kw: dict[str, Any] = {}
    if "device" in inspect.signature(adapt).parameters:
        kw["device"] = cfg.device
    if "observe" in inspect.signature(adapt).parameters:
        rec = CurveRecorder(load_clip(clip_dir), seconds, acfg.res, cfg.test_seconds,
                            cfg.curve_frames, curve, acfg, aperture=cfg.curve_aperture)
        every = cfg.curve_every or {"cpu": 100, "fast": 50}.get(cfg.preset, acfg.ckpt_every)
        kw.update(observe=rec, observe_every=every)
    try:
        adapt(clip_dir, av, use_prior, acfg, progress=hook, resume=True, work=work, **kw)
    except InputError as e:
        if "different run" not in str(e):
            raise
        shutil.rmtree(work, ignore_errors=True)
        curve.unlink(missing_ok=True)
        if "observe" in kw:
            kw["observe"].points = []
        adapt(clip_dir, av, use_prior, acfg, progress=hook, resume=False, work=work, **kw)
    return av, True


# ============================================================================ renders
def render_path(out: Path, cell: str, control: str = "") -> Path:
    """Where a cell's render is stored (``control`` '' = the method's own render)."""
    return out / "renders" / cell / f"{control or 'heldout'}.mp4"


def write_render(path: Path, frames: np.ndarray, source: dict) -> None:
    """Lossless RGB mp4 of the frames (so scores recomputed from it are exact) and its
    sidecar ``.json`` (``source``: what made it)."""
    from core.data.media import write_video

    write_video(path, iter(frames), fps=25.0, crf=0, pix_fmt="rgb24", preset="veryfast")
    write_text(path.with_suffix(".json"), json.dumps(source, indent=1, sort_keys=True))


def read_render(path: Path) -> np.ndarray:
    """(n, H, W, 3) uint8 frames of a stored render."""
    from core.data.media import iter_frames

    return np.stack(list(iter_frames(path, fps=25.0)))


def render_is_current(path: Path, source: dict) -> bool:
    side = path.with_suffix(".json")
    return path.is_file() and side.is_file() and json.loads(side.read_text()) == source


def landmarks(frames: np.ndarray, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """FaceMesh ``(points (n, 478, 3) with NaN misses, valid (n,))`` of frames, cached in
    ``cache`` under the frames' content hash."""
    digest = hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()[:16]
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["digest"]) == digest:
                return z["points"], z["valid"]
    from eval.metrics.frames import detect

    tr = detect(frames)
    pts, valid = np.asarray(tr.points, np.float64), np.asarray(tr.valid, bool)
    buf = io.BytesIO()
    np.savez(buf, points=pts, valid=valid, digest=digest)
    write_bytes(cache, buf.getvalue())
    return pts, valid


def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


# ============================================================================ the cell
def _renderers(task: CellTask, clip, test_idx: torch.Tensor, frames, n_train: int,
               avatar) -> dict[str, Any]:
    """``{render name: () -> frames}`` of a cell (name '' = the method itself)."""
    from eval.bench import baselines as B
    from eval.bench import controls as C
    from eval.bench.protocol import render_frames

    m = task.method
    if m in ADAPTED:
        from core.data.audio import AudioFeatureSpec

        spec = AudioFeatureSpec.from_dict(clip.manifest["audio"])
        driven = {"": lambda: frames, "shuffled": lambda: C.shuffled_audio(frames),
                  "silence": lambda: C.silent_audio(frames, spec, avatar.drive)}
        return {c: (lambda c=c: render_frames(avatar.umf, avatar.ident, driven[c]()))
                for c in ("", *CONTROLS)}
    if m == "mean-mouth":
        def held():
            train = B.training_frames(clip, n_train, frames.res)
            return render_frames(C.held_audio_umf(avatar.umf, train), avatar.ident,
                                 C.held_mouth(frames))
        return {"": held}
    if m == "retrieval":
        return {"": lambda: B.retrieval_frames(clip, n_train, test_idx, frames)[0]}
    if m == "loop":
        return {"": lambda: B.loop_frames(clip, n_train, test_idx, frames)}
    if m == "shifted":
        return {}
    raise ValueError(f"unknown method {m!r}; one of {METHODS}")


def run_cell(task: CellTask, progress: ProgressFn | None = None) -> dict:
    """Compute one cell: adapt its avatar if needed, render the method and its controls
    unless up-to-date renders exist, score every render, write ``cells/{cell}.json``.

    With ``task.cfg.rescore`` nothing is adapted or rendered: the stored renders are
    scored again (missing renders are an error). Adaptation and the avatar's renders run on
    ``task.cfg.device`` with ``task.cfg.raster``. Returns the cell's row.
    """
    from core.raster.render import raster_backend

    with raster_backend(task.cfg.raster):
        return _run_cell(task, progress)


def _run_cell(task: CellTask, progress: ProgressFn | None = None) -> dict:
    from eval.bench import baselines as B
    from eval.bench.protocol import ground_truth, heldout_frames

    t0 = time.perf_counter()
    cfg, out, name = task.cfg, Path(task.out), task.name
    report = progress or (lambda s, f: None)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    old = _read_row(out, name)
    row: dict[str, Any] = {"clip": task.stem, "method": task.method,
                           "train_seconds": float(task.seconds), "preset": cfg.preset,
                           "seed": cfg.seed, "eval_res": cfg.eval_res, "quick": cfg.quick,
                           "schema": CELL_SCHEMA,
                           "adapt_overrides": json.dumps(cfg.adapt_overrides, sort_keys=True)}
    avatar_kind = AVATAR_OF.get(task.method)
    if avatar_kind == "instag" and task.prior is None:
        row["status"] = "skipped: no prior (pass --prior or keep the shipped one)"
        return row
    avatar = avatar_dir = None
    if avatar_kind is not None:
        avatar_dir = out / "avatars" / cell_name(task.stem, avatar_kind, task.seconds)
        if not (avatar_dir / "model.safetensors").is_file() and not cfg.adapt:
            row["status"] = f"skipped: avatar {avatar_dir.name} not adapted (adaptation off)"
            return row
        if not cfg.rescore:
            avatar_dir, adapted = ensure_avatar(task.clip_dir, out, task.stem, avatar_kind,
                                                task.seconds, task.prior, cfg, report)
            row["adapted_here"] = adapted
        from core.model.avatar import load_avatar

        from core.device import resolve_device

        avatar = load_avatar(avatar_dir).to(resolve_device(cfg.device))
        row["avatar"] = avatar_dir.name
    clip = load_clip(task.clip_dir)
    res = cfg.eval_res
    test_idx = test_span(clip, task.train_seconds, cfg.test_seconds)
    n_train = min(clip.num_frames, int(round(task.seconds * 25)))
    if n_train > int(test_idx[0]):
        raise ValueError(f"{task.stem}: training part overlaps the test span")
    frames = heldout_frames(clip, test_idx, res, n_train,
                            avatar.drive if avatar is not None else None)
    gt = ground_truth(frames)
    span = f"{int(test_idx[0])}-{int(test_idx[-1]) + 1}"
    row.update(test_start=int(test_idx[0]), test_frames=int(test_idx.numel()))
    audio = B.test_audio(clip, test_idx)
    gt_pts = gt_valid = None
    ref: int | None = None
    if cfg.landmarks:
        gt_pts, gt_valid = landmarks(gt.frames, out / "cache" / f"{task.stem}_test{span}_{res}px.npz")
        from eval.bench.scoring import filled
        from eval.sync.syncnet import av_offset

        try:
            ref, corr = av_offset(filled(gt_pts, gt_valid), audio)
            row.update(gt_av_offset=ref, gt_av_corr=corr)
        except ValueError:
            row.update(gt_av_offset=NA, gt_av_corr=NA)

    # renders (reused when current), then scores
    source = {"version": RENDER_VERSION, "clip": clip.manifest.get("source", {}).get("sha256"),
              "test": span, "res": res, "train_frames": n_train, "method": task.method,
              "avatar": _file_id(avatar_dir / "model.safetensors") if avatar_dir else None}
    renders: dict[str, np.ndarray] = {}
    for ctrl, make in _renderers(task, clip, test_idx, frames, n_train, avatar).items():
        path = render_path(out, name, ctrl)
        src = dict(source, control=ctrl or None)
        if not render_is_current(path, src):
            if cfg.rescore:
                raise FileNotFoundError(f"{path} is missing or out of date: run the benchmark "
                                        "without --rescore to render it")
            report(f"{name}: rendering {ctrl or task.method}", 0.9)
            t1 = time.perf_counter()
            write_render(path, make(), src)
            if not ctrl and avatar is not None:
                row["render_fps"] = int(test_idx.numel()) / max(time.perf_counter() - t1, 1e-9)
        renders[ctrl] = read_render(path)
    report(f"{name}: scoring", 0.95)
    sc = cfg.score
    from eval.metrics.frames import pose_covariates

    pose = pose_covariates(frames.viewmats.double().numpy())
    if task.method in ADAPTED:
        row["expr_lips_r2"] = expression_lips_r2(clip, test_idx, frames.expr.numpy(), n_train)
    if task.method == "shifted":
        row.update(score_render(Render(gt.frames, B.shifted_audio(clip, test_idx), gt_pts,
                                       gt_valid, None, ref_offset=ref, pose=pose), sc))
        row["shift_frames"] = B.SHIFT_FRAMES
    for ctrl, pred in renders.items():
        pts = valid = None
        if cfg.landmarks:
            pts, valid = landmarks(pred, out / "cache" / name / f"{ctrl or 'heldout'}.npz")
        s = score_render(Render(pred, audio, pts, valid, gt, gt_pts, gt_valid, ref, pose), sc)
        row.update(s if not ctrl else {f"{ctrl}_{k}": v for k, v in s.items()})
    if avatar is not None:
        rc = avatar.meta["run"]["config"]
        row["adapt_steps"] = int(rc["face_steps"] + rc["mouth_steps"] + rc["fuse_steps"])
        row["avatar_seed"] = int(rc["seed"])
        if task.method in ADAPTED:  # mean-mouth reuses the instag avatar: no time of its own
            row["curve"], observe_s = read_curve(out, avatar_dir.name)
            row["adapt_minutes"] = (float(avatar.meta.get("wall_s", math.nan))
                                    - observe_s) / 60.0
        want = asdict(cfg.adapt_config(task.seconds, AVATAR_OF.get(task.method, task.method)))
        diff = [f"{k} {rc.get(k)} (preset {want[k]})" for k in
                ("res", "seconds", "face_steps", "mouth_steps", "fuse_steps", "seed")
                if rc.get(k) != want[k]]
        if diff:  # an avatar adapted outside the benchmark with other settings: flagged
            row["note"] = "avatar differs from the preset: " + ", ".join(diff)
        if "render_fps" not in row and old.get("render_fps") is not None:
            row["render_fps"] = old["render_fps"]
    row["status"] = "ok"
    row["cell_seconds"] = round(time.perf_counter() - t0, 1)
    row["computed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    row = _jsonable(row)
    write_text(out / "cells" / f"{name}.json", json.dumps(row, indent=1))
    return row


def expression_lips_r2(clip, test_idx: torch.Tensor, expr: np.ndarray, n_train: int) -> float:
    """R² of the held-out frames' lips-apart signal (FaceMesh, normalised on the first
    ``n_train`` frames) predicted linearly from the expression input the avatar was driven
    with there, (n, 6): how much mouth state that input could carry past the audio."""
    from core.data.mouth_code import r2_from

    ex = clip.expression(n_train)
    lips = ex.values[test_idx.numpy(), list(ex.names).index("lips_apart")]
    return r2_from(np.asarray(expr, np.float64), lips)


def failed_row(task: CellTask, e: BaseException) -> dict:
    """The row of a cell that did not finish (call inside the ``except`` block: it keeps the
    traceback); the cell stays unfinished and is retried by the next run."""
    return {"clip": task.stem, "method": task.method, "train_seconds": float(task.seconds),
            "status": f"failed: {e.__class__.__name__}: {e}", "traceback": traceback.format_exc()}


def run_cell_safe(task: CellTask, progress: ProgressFn | None = None) -> dict:
    """:func:`run_cell` that returns :func:`failed_row` instead of raising."""
    try:
        return run_cell(task, progress)
    except Exception as e:
        return failed_row(task, e)


def finished_row(task: CellTask) -> dict | None:
    """The stored row of a finished cell computed with this run's settings, else None."""
    row = _read_row(Path(task.out), task.name)
    if not row or row.get("status") != "ok" or stale_reason(row, task) is not None:
        return None
    return row


def stale_reason(row: dict, task: CellTask) -> str | None:
    """Why a stored cell does not match this run (None = it does): row layout, preset, seed,
    evaluation res, test span (which follows the longest training length) or adaptation
    overrides (a row without any counts as none)."""
    cfg = task.cfg
    n = int(json.loads((Path(task.clip_dir) / "manifest.json").read_text())["num_frames"])
    start = max(int(round(max(task.train_seconds) * 25)), n - int(round(cfg.test_seconds * 25)))
    for key, want in (("schema", CELL_SCHEMA), ("preset", cfg.preset), ("seed", cfg.seed),
                      ("eval_res", cfg.eval_res), ("test_start", start),
                      ("adapt_overrides", json.dumps(cfg.adapt_overrides, sort_keys=True))):
        got = row.get(key, "{}" if key == "adapt_overrides" else None)
        if got != want:
            return f"{key} {got} != {want}"
    return None


def _read_row(out: Path, name: str) -> dict:
    p = out / "cells" / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, str):
        return str(x)  # MetricUnavailable -> plain str
    return x
