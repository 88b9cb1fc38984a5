"""The device check: one prepared command that measures the GPU path end to end.

    python -m bench.gpu_check --prepare             # here, on a CPU machine (MediaPipe, PyAV)
    python -m bench.gpu_check [--device cuda]       # on the GPU machine
    python -m bench.gpu_check --device cpu --quick  # the suite's check that it still runs

``--prepare`` preprocesses a clip at the ``zerogpu`` preset's resolution into a folder git
ignores (``.gpu_check/``), decodes the phones of its training seconds and of the driving audio
into a cache there (``$INSTAG_PHONE_CACHE``), and stores the driving audio as samples, so the
GPU machine needs torch, gsplat and PyAV only (no MediaPipe, no pocketsphinx). The check then
runs, in order:

1. **gsplat**: its first call (the CUDA build on a fresh machine, timed), then forward and
   gradient parity against our torch backend on the same device, packed and dense
   (:mod:`core.raster.parity`); on the CPU, ours against the float64 reference instead;
2. **transfers**: a short adaptation under :class:`core.device.TransferAudit`, counting the
   host/device copies and synchronisations of steady-state steps outside the rasterizer;
3. **adaptation**: the ``zerogpu`` preset on the prepared clip with the shipped prior (wall
   time, time per step of each stage, peak GPU memory);
4. **rendering**: frames per second of the new avatar at 512² and 256² (frames back on the
   CPU, no encoding).

It writes ``gpu_check.json`` and ``gpu.md`` into ``--out`` (default ``docs/results``; with
``--quick``, tiny settings on one thread and a temporary folder unless ``--out`` is given).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
DEFAULT_FOLDER = ROOT / ".gpu_check"
DEFAULT_CLIP = DATA / "clips" / "may_5s.mp4"          # 512² source, not an evaluation clip
DEFAULT_AUDIO = DATA / "audio" / "en_radio31.wav"       # 8 s of English speech
STAGES = ("face", "mouth", "fuse")


def quick_config():
    """The ``--quick`` adaptation: 96², a few steps of each stage (the suite's size)."""
    from core.train.adapt import PRESETS

    return replace(PRESETS["tiny"], res=96, seconds=2.0, face_steps=8, mouth_steps=6,
                   fuse_steps=4, person_steps=20, ckpt_every=1000)


def check_config():
    """The timed adaptation: the ``zerogpu`` preset (the app's default on ZeroGPU)."""
    from core.train.adapt import PRESETS

    return PRESETS["zerogpu"]


# ============================================================================ prepare
def prepare(folder: Path, clip: Path = DEFAULT_CLIP, audio: Path = DEFAULT_AUDIO,
            quick: bool = False) -> Path:
    """Everything the check needs that a bare GPU machine cannot make: the processed clip,
    the phone decodes of its training seconds and of the driving audio, the audio samples.
    Returns ``folder``."""
    from core.data.media import read_audio
    from core.data.phones import PHONE_CACHE_ENV
    from core.data.preprocess import PreprocessConfig
    from core.preprocess import preprocess_clip
    from core.model.mouth_drive import SAMPLES_PER_FRAME

    cfg = quick_config() if quick else check_config()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[PHONE_CACHE_ENV] = str(folder / "phones")
    n = int(round(cfg.seconds * 25))
    pdir = folder / "clip"
    if not (pdir / "manifest.json").is_file():
        preprocess_clip(clip, pdir, PreprocessConfig(res=max(cfg.res, 256) if not quick else 96,
                                                     max_frames=n, min_seconds=min(4.0, n / 25)),
                        overwrite=True)
    wav = read_audio(audio, 16000)
    if quick:
        wav = wav[: 2 * 16000]
    np.save(folder / "audio.npy", wav.astype(np.float32))
    # the decodes the GPU machine will ask for: the drive's fit on the training seconds and
    # the driving audio (the same samples as there, so the same cache keys)
    from core.data.dataset import ProcessedClip
    from core.train.person_mouth import fit_drive

    pc = ProcessedClip.load(pdir, max_frames=n)
    a = pc.arrays
    drive = fit_drive(a["points3d"].numpy(), a["audio"].numpy(), n, a["valid"].numpy(),
                      av_offset=pc.av_offset, readout=cfg.readout, person=cfg.person, seed=cfg.seed)
    drive.predicted(a["audio"][: n * SAMPLES_PER_FRAME], n)
    T = math.ceil(wav.shape[0] / SAMPLES_PER_FRAME)
    padded = np.concatenate([wav, np.zeros(T * SAMPLES_PER_FRAME - wav.shape[0], np.float32)])
    drive.predicted(padded, T)
    (folder / "prepared.json").write_text(json.dumps(
        {"clip": clip.name, "audio": audio.name, "quick": quick, "res": cfg.res,
         "frames": n}, indent=1))
    return folder


# ============================================================================ the check
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gsplat_section(dev: torch.device, quick: bool) -> dict[str, Any]:
    """The first gsplat call (its build on a fresh machine) and backend parity."""
    from core.raster import gsplat_backend
    from core.raster.parity import backend_parity

    out: dict[str, Any] = {}
    if dev.type != "cuda":
        rep = backend_parity("torch", "reference", n=200 if quick else 2000, width=40,
                             height=32)
        out["parity"] = {"torch_vs_reference": _report(rep)}
        out["note"] = "no CUDA: gsplat not run; our backend against the float64 reference"
        return out
    from core.raster.parity import random_scene, camera
    from core.raster.render import rasterize

    t0 = time.perf_counter()
    V, K = camera(32, 32, 40.0, device=dev)
    p = random_scene(10, 0, device=dev)
    rasterize(*p, V, K, 32, 32, backend="gsplat")
    _sync(dev)
    out["first_call_s"] = round(time.perf_counter() - t0, 1)
    out["parity"] = {}
    for packed in (True, False):
        gsplat_backend.PACKED = packed
        rep = backend_parity("gsplat", "torch", device=dev)
        out["parity"]["packed" if packed else "dense"] = _report(rep)
    gsplat_backend.PACKED = True
    return out


def _report(rep) -> dict[str, Any]:
    return {"forward": rep.forward, "grads": rep.grads, "visible_diff": rep.visible_diff,
            "failures": rep.failures()}


def transfer_section(folder: Path, dev: torch.device, prior: str | None) -> dict[str, Any]:
    """Host/device copies and syncs of 6 steady-state steps per stage (outside the
    rasterizer), counted by :class:`core.device.TransferAudit` on a short adaptation."""
    from core.device import TransferAudit
    from core.train.adapt import adapt

    cfg = replace(quick_config(), res=check_config().res if dev.type == "cuda" else 96,
                  face_steps=12, mouth_steps=12, fuse_steps=12)
    audit = TransferAudit(device=dev, recording=False)
    windows = {4: True, 10: False, 16: True, 22: False, 28: True, 34: False}
    steps_audited = 0

    def observe(done: int, umf, ident) -> None:
        nonlocal steps_audited
        if done in windows:
            if not windows[done]:
                steps_audited += 6
            audit.recording = windows[done]

    with tempfile.TemporaryDirectory() as tmp, audit:
        adapt(folder / "clip", Path(tmp) / "av", prior, cfg, device=dev, observe=observe,
              observe_every=1)
    own = audit.outside_rasterizer()
    return {"steps_audited": steps_audited, "transfers_outside_rasterizer": len(own),
            "by_site": audit.summary(),
            "rasterizer_internal": sum(e.in_rasterizer for e in audit.events),
            "library_internal": sum(e.in_library for e in audit.events)}


def adapt_section(folder: Path, out_avatar: Path, dev: torch.device, prior: str | None,
                  quick: bool) -> dict[str, Any]:
    """The timed adaptation: wall time, seconds per step of each stage, peak GPU memory."""
    import re

    from core.train.adapt import adapt, preset_name

    cfg = quick_config() if quick else check_config()
    stamps: dict[str, list[float]] = {}

    def progress(text: str, frac: float) -> None:
        m = re.match(r"(face|mouth|fuse) (\d+)/", text)
        if m:
            _sync(dev)
            stamps.setdefault(m.group(1), []).append(time.perf_counter())

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    adapt(folder / "clip", out_avatar, prior, cfg, progress, device=dev)
    wall = time.perf_counter() - t0
    per_stage = {}
    for stage, steps in zip(STAGES, (cfg.face_steps, cfg.mouth_steps, cfg.fuse_steps)):
        ts = stamps.get(stage, [])
        if len(ts) > 1:
            per_stage[stage] = {"steps": steps, "s_per_step": (ts[-1] - ts[0]) / (len(ts) - 1),
                                "seconds": ts[-1] - ts[0]}
    out = {"preset": preset_name(cfg), "res": cfg.res, "total_steps": cfg.total_steps,
           "wall_s": wall, "stages": per_stage,
           "loop_s": sum(v["seconds"] for v in per_stage.values())}
    out["setup_s"] = wall - out["loop_s"]
    if dev.type == "cuda":
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


@torch.no_grad()
def render_section(folder: Path, avatar_dir: Path, dev: torch.device, quick: bool
                   ) -> dict[str, Any]:
    """Frames per second of the avatar driven by the prepared audio at 512² and 256² (the
    avatar's own resolution and the other one, K and plates scaled): audio front end and
    drive once, then per frame fields + rasterizer + compositing, frames back on the CPU."""
    import torch.nn.functional as F

    from core.model.avatar import load_avatar
    from core.model.head import FrameCond, render_frame
    from core.model.motion_field import audio_windows
    from core.synthesize import field_audio, pingpong

    wav = np.load(folder / "audio.npy")
    av = load_avatar(avatar_dir)
    T = math.ceil(wav.shape[0] / 640)
    wav = np.concatenate([wav, np.zeros(T * 640 - wav.shape[0], np.float32)])
    t0 = time.perf_counter()
    feats = field_audio(av, wav, T)
    mouth = av.drive.predicted(wav, T) if av.drive is not None else None
    front_s = time.perf_counter() - t0
    av.to(dev)
    feats = feats.to(dev)
    mouth = mouth.to(dev) if mouth is not None else None
    out: dict[str, Any] = {"audio_s": T / 25, "front_end_s": front_s,
                           "gaussians": {"face": av.ident.face.num, "mouth": av.ident.mouth.num}}
    n = min(T, 25 if quick else 200)
    for res in ((96,) if quick else (512, 256)):
        K = av.K.clone()
        K[:2] *= res / av.res
        plates = av.plates.permute(0, 3, 1, 2).float() / 255.0
        plates = F.interpolate(plates, size=(res, res), mode="area").permute(0, 2, 3, 1)
        for warm in (True, False):
            _sync(dev)
            t0 = time.perf_counter()
            for t in range(3 if warm else n):
                i = pingpong(t, av.num_frames)
                cond = FrameCond(viewmat=av.viewmats[i], K=K, width=res, height=res,
                                 audio_win=audio_windows(feats, t)[0], expr=av.expr[i],
                                 mouth=None if mouth is None else mouth[t])
                img = render_frame(av.umf, av.ident, cond, plates[i])
                (img * 255.0).round().to(torch.uint8).cpu()
            _sync(dev)
        out[f"fps_{res}"] = n / (time.perf_counter() - t0)
    return out


def run_check(folder: Path, out_dir: Path, device: str = "auto", quick: bool = False,
              prior: str | None = "default") -> dict[str, Any]:
    """All four sections; writes ``gpu_check.json`` and ``gpu.md`` into ``out_dir``."""
    from core.data.phones import PHONE_CACHE_ENV
    from core.device import device_names, resolve_device
    from core.weights import DEFAULT_PRIOR

    if not (folder / "prepared.json").is_file():
        raise SystemExit(f"error: {folder} is not prepared: run `python -m bench.gpu_check "
                         f"--prepare{' --quick' if quick else ''}` on a CPU machine first")
    os.environ[PHONE_CACHE_ENV] = str(folder / "phones")
    prior = DEFAULT_PRIOR if prior == "default" else prior
    dev = resolve_device(device)
    threads = torch.get_num_threads()
    if quick:   # a tiny workload: one thread avoids intra-op waits on a shared CPU
        torch.set_num_threads(1)
    try:
        return _run_sections(folder, out_dir, dev, quick, prior)
    finally:
        torch.set_num_threads(threads)   # the caller's setting comes back (the suite runs it)


def _run_sections(folder: Path, out_dir: Path, dev: torch.device, quick: bool,
                  prior: str | None) -> dict[str, Any]:
    """The four sections of :func:`run_check`, on ``dev``."""
    from core.device import device_names

    result: dict[str, Any] = {
        "device": str(dev), "devices": device_names(), "quick": quick,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "prepared": json.loads((folder / "prepared.json").read_text()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    for name, fn in (("gsplat", lambda: gsplat_section(dev, quick)),
                     ("transfers", lambda: transfer_section(folder, dev, prior))):
        t0 = time.perf_counter()
        result[name] = fn()
        timings[name] = time.perf_counter() - t0
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result["adapt"] = adapt_section(folder, Path(tmp) / "avatar", dev, prior, quick)
        print(f"adapt: {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        result["render"] = render_section(folder, Path(tmp) / "avatar", dev, quick)
        print(f"render: {time.perf_counter() - t0:.1f} s", flush=True)
    result["total_s"] = time.perf_counter() - t_all
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1, default=float))
    (out_dir / "gpu.md").write_text(report_markdown(result))
    return result


def report_markdown(r: dict[str, Any]) -> str:
    """``gpu.md``: what ran where, and the figures."""
    ad, rd = r["adapt"], r["render"]
    lines = [f"# Device check ({'quick, ' if r['quick'] else ''}{r['device']})", "",
             f"`python -m bench.gpu_check{' --quick' if r['quick'] else ''} --device {r['device']}`"
             f" on {', '.join(r['devices'])}; torch {r['torch']} (CUDA {r['cuda']}), Python "
             f"{r['python']}; prepared clip {r['prepared']['clip']}, driving audio "
             f"{r['prepared']['audio']}. Whole check {r['total_s']:.0f} s.", "",
             "## Rasterizer parity", ""]
    g = r["gsplat"]
    if "first_call_s" in g:
        lines.append(f"gsplat's first call (its CUDA build on a fresh machine): {g['first_call_s']} s.")
    if "note" in g:
        lines.append(g["note"] + ".")
    lines += ["", "| comparison | image max / mean | alpha max | depth max | grad p99 (worst) | "
              "grad max (worst) | failures |", "|---|---|---|---|---|---|---|"]
    for name, p in g["parity"].items():
        fw, gr = p["forward"], p["grads"]
        worst99 = max(gr, key=lambda k: gr[k]["p99"])
        worstmax = max(gr, key=lambda k: gr[k]["max"])
        lines.append(f"| {name} | {fw['image']['max']:.2e} / {fw['image']['mean']:.2e} | "
                     f"{fw['alpha']['max']:.2e} | {fw['depth']['max']:.2e} | "
                     f"{gr[worst99]['p99']:.2e} ({worst99}) | {gr[worstmax]['max']:.2e} ({worstmax}) | "
                     f"{len(p['failures'])} |")
    t = r["transfers"]
    lines += ["", "## Host/device traffic in the training loop", "",
              f"{t['transfers_outside_rasterizer']} copies or synchronisations outside the "
              f"rasterizer in {t['steps_audited']} steady-state steps (face, mouth and fuse); "
              f"{t['rasterizer_internal']} inside the rasterizer, {t['library_internal']} inside "
              "libraries (the optimizer's host-side step counters)."]
    if t["by_site"]:
        lines += [""] + [f"- {k}: {v}" for k, v in sorted(t["by_site"].items())]
    lines += ["", "## Adaptation", "",
              f"{ad['preset']}, {ad['total_steps']} steps: **{ad['wall_s']:.1f} s** wall "
              f"({ad['setup_s']:.1f} s before and after the loop: clip, drive fit, saving)"
              + (f", peak GPU memory {ad['peak_gpu_mem_gib']:.2f} GiB" if "peak_gpu_mem_gib" in ad else "")
              + ".", "", "| stage | steps | seconds | ms per step |", "|---|---|---|---|"]
    for stage, s in ad["stages"].items():
        lines.append(f"| {stage} | {s['steps']} | {s['seconds']:.1f} | {1000 * s['s_per_step']:.1f} |")
    lines += ["", "## Rendering", "",
              f"{rd['audio_s']:.1f} s of audio; front end and drive {rd['front_end_s']:.2f} s once; "
              f"{rd['gaussians']['face']} face + {rd['gaussians']['mouth']} mouth Gaussians.", ""]
    for k, v in rd.items():
        if k.startswith("fps_"):
            lines.append(f"- {k[4:]}²: {v:.1f} frames/s (fields, rasterizer, compositing, frame "
                         "back on the CPU; no encoding)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--prepare", action="store_true", help="make the prepared folder (CPU machine)")
    p.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="the prepared folder")
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="clip to prepare")
    p.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help="driving audio to prepare")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="tiny settings (the suite's run)")
    p.add_argument("--prior", default="default", help="prior (default: the shipped one; none)")
    p.add_argument("--out", type=Path, default=None,
                   help="where gpu_check.json and gpu.md go (default docs/results; --quick: a "
                        "temporary folder)")
    a = p.parse_args(argv)
    from core.errors import InputError

    prior = None if a.prior.lower() == "none" else a.prior
    try:
        if a.prepare:
            prepare(a.folder, a.clip, a.audio, a.quick)
            print(f"prepared {a.folder}")
            return 0
        out = a.out or (Path(tempfile.mkdtemp(prefix="gpu_check_")) if a.quick
                        else ROOT / "docs" / "results")
        r = run_check(a.folder, out, a.device, a.quick, prior)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "gpu.md").read_text())
    bad = [f for p in r["gsplat"]["parity"].values() for f in p["failures"]]
    if bad:
        print("parity failures: " + "; ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
