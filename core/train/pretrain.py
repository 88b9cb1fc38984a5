"""Identity-free pre-training of the Universal Motion Field (METHOD.md §4).

``python -m core.pretrain CLIP_DIRS... --out PRIOR [--preset cpu|gpu] [--resume]``
(CLIP_DIRS: processed-clip folders or raw videos, preprocessed into the work folder).

One shared UMF (face and mouth branches, trained in two passes); per identity its own
Gaussians and personalised residual fields. Each step draws an identity and a frame, renders
with UMF + that identity's residual, and adds the negative contrast loss against every other
identity's residual at the same Gaussians and inputs. The saved prior holds the **EMA** of the
UMF weights (decay 0.995) -- really the average, not the raw weights.

Resumable: a checkpoint (everything: identities, UMF, EMA, optimizers, densification
statistics, RNG) is written to the work folder every ``ckpt_every`` steps; ``--resume``
continues from it, so a long run can span several sittings.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from core.device import DEVICE_HELP, gpu_memory_error, host_side, resolve_device
from core.raster.render import RASTER_CHOICES, RASTER_HELP, raster_backend
from core.model import checkpoint
from core.train.adapt import AdaptConfig, Curriculum, coin, device_generator
from core.data.audio import AudioFeatureSpec
from core.model.avatar import ident_from_tensors, ident_tensors
from core.data.dataset import ProcessedClip
from core.errors import InputError
from core.data.mouth_code import MOUTH_CODE_DIM
from core.model.gaussians import FACE_DENSIFY, MOUTH_DENSIFY, Densifier
from core.model.head import Identity, UMF
from core.model.motion_field import EMA, sample_hook_k
from core.model.mouth_drive import MouthDrive
from core.progress import ProgressFn, format_seconds, run_cli_job
from core.train.stages import TrainFrames, face_step, field_optimizer, gaussian_optimizer, mouth_step

PASSES = ("face", "mouth")


@dataclass
class PretrainConfig:
    """Pre-training settings (paper scale in the ``gpu`` preset).

    Attributes:
        res: rendering resolution (clips are resized); 256 so the lips move several pixels.
        max_seconds: use at most the first this many seconds of each clip (paper: 200 s).
        face_steps, mouth_steps: steps of the two passes (paper 150k + 150k).
        face_warmup, mouth_warmup: static steps (no motion) at the start of each pass
            (paper 5k / 15k of 150k).
        umf_lr_grid, umf_lr_mlp: AdamW rates of grids / MLPs (5e-3 / 5e-4), also used for the
            personalised fields; decay ``0.5^(step / decay_steps)``.
        decay_steps: the learning-rate half-life in steps (paper 100k of 150k).
        ema_decay: EMA of the UMF weights (0.995), one average per branch, each updated
            only during its own pass (the face average must not drift during the mouth pass).
        contrast_weight: weight of the (scale-free, values in [0, 1]) negative contrast loss;
            0.1 makes it a tenth to a half of the image loss at CPU scale.
        contrast_negatives: the contrast loss compares against this many other identities,
            drawn at random each step (an unbiased estimate of the mean over all of them;
            with 25 identities, evaluating all 24 fields costs about a third of a CPU step);
            0 = every other identity (METHOD §4).
        sh_degree: SH degree of the identities' Gaussians (2).
        densify_start: first densification step of each identity (per-identity steps).
        ckpt_every: checkpoint interval in steps.
        seed: seeds everything.
        mouth_code: give the UMF the mouth-code input (:mod:`core.model.mouth_drive`): each
            identity's tracked code (per-person statistics), or with ``predicted_code_prob``
            the code predicted from its audio by the shipped audio-to-mouth prior.
    """

    res: int = 256
    max_seconds: float = 60.0
    face_steps: int = 4000
    mouth_steps: int = 2000
    face_warmup: int = 200
    mouth_warmup: int = 150
    umf_lr_grid: float = 5e-3
    umf_lr_mlp: float = 5e-4
    decay_steps: int = 4000
    ema_decay: float = 0.995
    contrast_weight: float = 0.1
    contrast_negatives: int = 4
    sh_degree: int = 2
    densify_start: int = 100
    ckpt_every: int = 250
    seed: int = 0
    mouth_code: bool = True
    predicted_code_prob: float = 0.2


PRESETS: dict[str, PretrainConfig] = {
    "gpu": PretrainConfig(res=512, max_seconds=200.0, face_steps=150_000, mouth_steps=150_000,
                          face_warmup=5000, mouth_warmup=15000, decay_steps=100_000,
                          densify_start=500, ckpt_every=2000),
    "cpu": PretrainConfig(),
    "tiny": PretrainConfig(res=64, max_seconds=4.0, face_steps=30, mouth_steps=20, face_warmup=5,
                           mouth_warmup=5, decay_steps=50, densify_start=10, ckpt_every=10),
}


def _load_clips(clips: list[str | os.PathLike], work: Path, report: ProgressFn) -> list[ProcessedClip]:
    from core.data.preprocess import PreprocessConfig
    from core.preprocess import preprocess_clip

    out = []
    for n, c in enumerate(clips):
        c = Path(c)
        if not c.is_dir():
            d = work / "clips" / c.stem
            if not (d / "manifest.json").is_file():
                report(f"preprocessing {c.name}", 0.0)
                preprocess_clip(c, d, PreprocessConfig(res=256), overwrite=True)
            c = d
        out.append(ProcessedClip.load(c))
    return out


@host_side
def _draw_identity_and_frame(gen: torch.Generator, n_id: int, frames: list[TrainFrames],
                             curricula: list[Curriculum], branch: str) -> tuple[int, int]:
    """The step's identity and frame, drawn on the host: any frame in the face pass, frames
    showing the mouth interior (wider openings favoured) in the mouth pass."""
    i = int(torch.randint(n_id, (1,), generator=gen))
    j = curricula[i].mouth() if branch == "mouth" else int(torch.randint(frames[i].n, (1,), generator=gen))
    return i, j


@host_side
def _draw_negatives(gen: torch.Generator, n_id: int, i: int, k: int) -> list[int]:
    """The other identities whose residual fields the contrast loss compares against: ``k``
    of them drawn on the host (0 or at least all: every other identity)."""
    pool = [m for m in range(n_id) if m != i]
    if 0 < k < len(pool):
        pick = torch.randperm(len(pool), generator=gen)[:k]
        pool = [pool[int(m)] for m in pick]
    return pool


def pretrain(clips: list[str | os.PathLike], out: str | os.PathLike,
             cfg: PretrainConfig | None = None, progress: ProgressFn | None = None,
             resume: bool = False, work: str | os.PathLike | None = None,
             log: Callable[[str], None] | None = None,
             device: str | torch.device | None = "auto") -> Path:
    """Pre-train a prior on several identities and write it to ``out`` (a .safetensors file).

    ``device``: where training runs (:func:`core.device.resolve_device`); the clips'
    frames, every identity, the UMF, its EMA, the optimizers and densification statistics
    live there; checkpoints and the prior on disk are device-free (a run resumes on another
    device).

    Raises:
        InputError: fewer than two identities, or clips with different audio features.
    """
    cfg = cfg or PRESETS["cpu"]
    dev = resolve_device(device)
    out = Path(out)
    work = Path(work) if work else out.with_name(f".{out.stem}.work")
    work.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda text, frac: None)
    say = log or (lambda line: None)
    if len(clips) < 2:
        raise InputError("too_short", "Pre-training needs at least two different people.",
                         "Pass several clips of different people.")
    pclips = _load_clips(clips, work, report)
    specs = {json.dumps(c.manifest["audio"], sort_keys=True) for c in pclips}
    if len(specs) != 1:
        raise InputError("wrong_weights", "The clips were preprocessed with different audio "
                         "features.", "Preprocess them all with the same --audio.")
    spec = AudioFeatureSpec.from_dict(pclips[0].manifest["audio"])
    frames = []
    for c in pclips:
        n = min(c.num_frames, int(cfg.max_seconds * 25))
        drive = None
        if cfg.mouth_code:
            a = c.arrays
            drive = MouthDrive.fit(a["points3d"].numpy(), a["audio"].numpy(), n,
                                   a["valid"].numpy(), av_offset=c.av_offset)
            say(f"{c.root.name}: audio-video offset {drive.av_offset:+d} frames")
        frames.append(TrainFrames.from_clip(c, torch.arange(n), cfg.res, fit_frames=n,
                                            drive=drive).to(dev))
    n_id = len(pclips)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    umf = UMF(spec.dim, MOUTH_CODE_DIM if cfg.mouth_code else 0)
    field_audio = umf.face.field.config.audio_dim
    idents = [Identity(sh_degree=cfg.sh_degree, personalised=True, field_audio_dim=field_audio
                       ).init_gaussians(c.arrays["canonical"], gen) for c in pclips]
    umf.to(dev)
    for ident in idents:
        ident.to(dev)
    dgen = device_generator(gen, dev, cfg.seed)
    emas = {"face": EMA(umf.face, cfg.ema_decay), "mouth": EMA(umf.mouth, cfg.ema_decay)}
    run_meta = {"config": asdict(cfg), "identities": [
        {"name": c.manifest["source"]["name"], "sha256": c.manifest["source"]["sha256"],
         "frames": f.n} for c, f in zip(pclips, frames)], "audio": spec.to_dict()}
    stage, step = "face", 0
    counters = [0] * n_id
    losses: dict[str, float] = {}
    ckpt = work / "pretrain.safetensors"
    saved: dict[str, torch.Tensor] = {}
    if resume and ckpt.is_file():
        t, meta = checkpoint.load(ckpt, kind="pretrain-state")
        if meta["run"] != json.loads(json.dumps(run_meta)):
            raise InputError("wrong_weights", f"{ckpt} belongs to a different pre-training run.",
                             "Pass the same clips and settings, or start without --resume.")
        idents = [ident_from_tensors(checkpoint.prefixed(t, f"id{i}.")).to(dev) for i in range(n_id)]
        umf.load_state_dict(checkpoint.prefixed(t, "umf."))
        for b, e in emas.items():
            e.load_state_dict(checkpoint.prefixed(t, f"ema.{b}."))
        checkpoint.load_rng_tensors(gen, t)
        if dgen is not gen and "rng.device_gen" in t:
            dgen.set_state(t["rng.device_gen"])
        stage, step, counters, losses = meta["stage"], meta["step"], meta["counters"], meta["losses"]
        saved = t
        say(f"resumed at {stage} step {step}")

    # mouth pass: frames showing the mouth interior, favouring wider openings (as adaptation)
    curricula = [Curriculum(f, AdaptConfig(), gen) for f in frames]
    total = cfg.face_steps + cfg.mouth_steps
    t_start = time.perf_counter()
    done_before = step + (cfg.face_steps if stage == "mouth" else 0)

    for pass_name, steps, warm in (("face", cfg.face_steps, cfg.face_warmup),
                                   ("mouth", cfg.mouth_steps, cfg.mouth_warmup)):
        if PASSES.index(pass_name) < PASSES.index(stage):
            continue
        if stage != pass_name:
            stage, step, counters = pass_name, 0, [0] * n_id
        branch = "face" if pass_name == "face" else "mouth"
        for ident in idents:
            for p in ident.face.parameters():
                p.requires_grad_(branch == "face")
        for p in umf.face.parameters():
            p.requires_grad_(branch == "face")
        for p in umf.mouth.parameters():
            p.requires_grad_(branch == "mouth")
        personal = [getattr(i, f"{branch}_personal") for i in idents]
        gauss_opts = [gaussian_optimizer(getattr(i, branch)) for i in idents]
        pers_opts = [field_optimizer(p, cfg.umf_lr_grid, cfg.umf_lr_mlp) for p in personal]
        umf_opt = field_optimizer(getattr(umf, branch), cfg.umf_lr_grid, cfg.umf_lr_mlp)
        per_id = max(1, steps // n_id)
        dens = [Densifier(replace(FACE_DENSIFY if branch == "face" else MOUTH_DENSIFY,
                                  start_step=cfg.densify_start), getattr(i, branch).num, dev)
                for i in idents]
        if saved and step > 0:
            for i in range(n_id):
                checkpoint.load_optimizer_tensors(gauss_opts[i], saved, f"opt.g{i}.")
                checkpoint.load_optimizer_tensors(pers_opts[i], saved, f"opt.p{i}.")
                d = dens[i]
                d.grad_accum, d.denom, d.max_radii = (saved[f"dens{i}.grad_accum"].to(dev).clone(),
                                                      saved[f"dens{i}.denom"].to(dev).clone(),
                                                      saved[f"dens{i}.max_radii"].to(dev).clone())
            checkpoint.load_optimizer_tensors(umf_opt, saved, "opt.umf.")
        saved = {}

        def save_ckpt() -> None:
            tensors = {**checkpoint.module_tensors(umf, "umf."), **checkpoint.rng_tensors(gen),
                       **({"rng.device_gen": dgen.get_state()} if dgen is not gen else {}),
                       **{f"ema.{b}.{k}": v for b, e in emas.items()
                          for k, v in e.state_dict().items()},
                       **checkpoint.optimizer_tensors(umf_opt, "opt.umf.")}
            for i in range(n_id):
                tensors.update({f"id{i}.{k}": v for k, v in ident_tensors(idents[i]).items()})
                tensors.update(checkpoint.optimizer_tensors(gauss_opts[i], f"opt.g{i}."))
                tensors.update(checkpoint.optimizer_tensors(pers_opts[i], f"opt.p{i}."))
                tensors.update({f"dens{i}.grad_accum": dens[i].grad_accum,
                                f"dens{i}.denom": dens[i].denom,
                                f"dens{i}.max_radii": dens[i].max_radii})
            checkpoint.save(ckpt, tensors, {"kind": "pretrain-state", "run": run_meta,
                                            "stage": stage, "step": step,
                                            "counters": counters, "losses": losses})

        running: dict[int, torch.Tensor] = {}   # smoothed losses on the device

        def read_losses() -> None:
            """The one read-back of the losses (when a line is logged or a checkpoint due)."""
            losses[pass_name] = float(sum(running.values()) / len(running))
            if not math.isfinite(losses[pass_name]):
                raise FloatingPointError(f"non-finite loss by {pass_name} step {step}")

        while step < steps:
            i, j = _draw_identity_and_frame(gen, n_id, frames, curricula, branch)
            ident, fr = idents[i], frames[i]
            ls = counters[i]
            gs = getattr(ident, branch)
            gs.update_sh_degree(ls)
            static = step < warm
            f = 0.5 ** (step / cfg.decay_steps)
            for o in [umf_opt, pers_opts[i]]:
                for g in o.param_groups:
                    g["lr"] = g["base_lr"] * f
            bg = torch.rand(3, generator=dgen, device=dev)
            others = [personal[k] for k in _draw_negatives(gen, n_id, i, cfg.contrast_negatives)]
            tracked = coin(gen, cfg.predicted_code_prob)
            try:
                if branch == "face":
                    r = face_step(umf, ident, fr, j, bg, static=static, use_aligner=False,
                                  contrast_fields=others, contrast_weight=cfg.contrast_weight,
                                  tracked=tracked)
                else:
                    k = sample_hook_k(True, gen)
                    r = mouth_step(umf, ident, fr, j, bg, k, static=static, use_aligner=False,
                                   contrast_fields=others, contrast_weight=cfg.contrast_weight,
                                   tracked=tracked)
                r.loss.backward()
            except torch.OutOfMemoryError as e:
                raise gpu_memory_error(
                    f"pre-training ({pass_name} step {step})", f"{n_id} identities at "
                    f"{cfg.res}x{cfg.res}", f"The last checkpoint is kept in {work}: continue "
                    "with --resume on a GPU with more free memory, or use --preset cpu.") from e
            if r.render.means2d.grad is not None:
                dens[i].accumulate(r.render.means2d.grad, r.render.visible, r.render.radii,
                                   fr.res, fr.res)
            gauss_opts[i].step()
            if not static:
                pers_opts[i].step()
                umf_opt.step()
                emas[branch].update(getattr(umf, branch))
            for o in (gauss_opts[i], pers_opts[i], umf_opt):
                o.zero_grad(set_to_none=True)
            dens[i].step(ls, per_id, gs, gauss_opts[i], generator=gen)
            counters[i] += 1
            loss = r.logs["loss"]
            running[i] = 0.95 * running.get(i, loss) + 0.05 * loss
            step += 1
            done = step + (cfg.face_steps if pass_name == "mouth" else 0)
            el = time.perf_counter() - t_start
            rate = (done - done_before) / max(el, 1e-6)
            report(f"{pass_name} {step}/{steps}, {format_seconds((total - done) / max(rate, 1e-6))} left",
                   done / total)
            due_ckpt = step % cfg.ckpt_every == 0 or step == steps
            if step % 100 == 0 or step == steps or due_ckpt:
                read_losses()
            if step % 100 == 0 or step == steps:
                contrast = float(r.logs["contrast"]) if "contrast" in r.logs else 0.0
                say(f"{pass_name} {step}/{steps} loss {losses[pass_name]:.4f} "
                    f"contrast {contrast:.2e} {rate:.2f} steps/s "
                    f"gaussians {[getattr(x, branch).num for x in idents]}")
            if due_ckpt:
                save_ckpt()

    wall = time.perf_counter() - t_start
    prior_t = {f"umf.{b}.{k}": v for b, e in emas.items()
               for k, v in e.averaged_state_dict(getattr(umf, b)).items()}
    meta = {"kind": "prior", "audio": spec.to_dict(), "res": cfg.res, "code_dim": umf.code_dim,
            "steps": {"face": cfg.face_steps, "mouth": cfg.mouth_steps},
            "identities": run_meta["identities"], "config": asdict(cfg),
            "final_losses": losses, "ema_updates": {b: e.num_updates for b, e in emas.items()},
            "wall_s_last_sitting": round(wall, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {"torch": torch.__version__, "python": sys.version.split()[0]}}
    checkpoint.save(out, prior_t, meta)
    report("done", 1.0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("clips", nargs="+", help="processed-clip folders or videos, one per person")
    p.add_argument("--out", required=True, help="prior file to write (.safetensors)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--steps", type=int, nargs=2, metavar=("FACE", "MOUTH"), default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--work", default=None, help="work folder for checkpoints")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--raster", choices=RASTER_CHOICES, default="auto", help=RASTER_HELP)
    a = p.parse_args(argv)
    cfg = PRESETS[a.preset]
    if a.steps:
        cfg = replace(cfg, face_steps=a.steps[0], mouth_steps=a.steps[1])
    if a.seed is not None:
        cfg = replace(cfg, seed=a.seed)
    with raster_backend(a.raster):
        out, code = run_cli_job(lambda bar: pretrain(a.clips, a.out, cfg, bar, resume=a.resume,
                                                     work=a.work, log=bar.write, device=a.device))
    if code:
        return code
    print(f"prior written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
