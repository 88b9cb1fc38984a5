"""Adaptation: a new person's avatar from a few seconds of video and a pre-trained prior
(METHOD.md §5).

``python -m core.adapt CLIP --prior PRIOR --out AVATAR [--seconds 5] [--preset cpu|fast|gpu]
[--resume]``
(CLIP: a raw video, preprocessed first, or a processed-clip folder; ``--prior none`` trains
the same model from scratch: the TalkingGaussian baseline).

Stages: face (UMF fine-tuned, aligner on after ``aligner_start`` of the stage), mouth (the
face frozen, supplying the hook), fuse (colours and face opacity only). One frame per step.
Checkpoints go to a work folder beside the output every ``ckpt_every`` steps and at each
stage end; ``--resume`` continues from the last one; the avatar folder appears (atomically)
only when all stages are done.

Refining: ``--resume`` with a longer schedule on a finished avatar (``--preset fast``, then
``--resume --preset cpu``) continues that avatar: each stage goes on from the step the
avatar reached, under the longer schedule (:func:`refine_start`). The avatar stays as it was
until the refined one replaces it in one rename; a refine that stops or fails leaves it
intact (and can itself be resumed from its work folder).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from core.device import DEVICE_HELP, gpu_memory_error, host_side, resolve_device
from core.raster.render import RASTER_CHOICES, RASTER_HELP, raster_backend
from core.model import checkpoint
from core.data.audio import AudioFeatureSpec
from core.model.avatar import FullFrameFrames, ident_from_tensors, ident_tensors, save_avatar
from core.data.dataset import ProcessedClip
from core.errors import InputError
from core.data.mouth_code import MOUTH_CODE_DIM
from core.model.gaussians import FACE_DENSIFY, FACE_INIT, MOUTH_DENSIFY, MOUTH_INIT, Densifier
from core.model.head import Identity, UMF, mouth_dilation
from core.model.mouth_drive import HELDOUT_SPREAD, MouthDrive, ReadoutConfig
from core.progress import ProgressFn, format_seconds, run_cli_job
from core.weights import DEFAULT_PRIOR
from core.model.motion_field import sample_hook_k
from core.train.collapse import COLLAPSE_RATIO, COLLAPSE_SCALE, prune_collapsed
from core.train.unseen import UNSEEN_WEIGHT, prune_unseen
from core.train.person_mouth import PersonMouthConfig, fit_drive
from core.train.stages import (TrainFrames, face_step, field_optimizer, fuse_step, gaussian_optimizer,
                         mouth_step)

STAGES = ("face", "mouth", "fuse")


#: Where adaptation takes the recording's audio-video offset from (:attr:`AdaptConfig.av_offset`).
AV_OFFSET_SOURCES = ("recording", "training")


@dataclass
class AdaptConfig:
    """Adaptation settings (METHOD §5 at paper scale in the ``gpu`` preset).

    Attributes:
        res: training/rendering resolution in pixels (the clip is resized if it differs).
        seconds: use the first this many seconds of the clip (5 s = 125 frames).
        face_steps, mouth_steps, fuse_steps: steps per stage (paper 10k / 10k / 2k).
        umf_lr_grid, umf_lr_mlp: UMF AdamW rates for tri-plane grids / everything else.
        umf_warm_frac: with a prior, the UMF learns at 0.1x for this fraction of a stage
            (paper: 3k of 10k), then at ``umf_lr_end^(step / stage_steps)``.
        umf_lr_end: the UMF rate factor reached at the end of a stage (paper 0.5).
        gauss_lr_end: the Gaussians' rates in the face and mouth stages decay
            geometrically from 1x to this factor over the stage (1 = constant, as before).
        weight_decay: AdamW weight decay of the UMF (0.01).
        aligner_start_frac: the aligner switches on after this fraction of a stage (1k/10k).
        aligner_lr: aligner AdamW rate (5e-5).
        sh_degree: SH degree of the avatar's Gaussians (1).
        curriculum_frac: fraction of the face stage sampling closed -> open mouths, then
            the same again favouring blinks; uniform afterwards.
        min_mouth_px_512: mouth-stage frames need this many mouth pixels at 512² (scaled).
        densify_start_frac: densification starts at this fraction of a stage (500 / 10k
            is 5%; at least ``densify_min_start`` steps), every ``densify_interval`` steps,
            until 90% of the stage.
        densify_min_start, densify_interval: steps (100 and 100).
        face_densify_grad: the face stage densifies Gaussians whose mean screen-space
            gradient reaches this (5e-4, ``FACE_DENSIFY``; the mouth stage keeps 2e-4).
        ckpt_every: checkpoint every this many steps.
        seed: seeds initialisation, frame sampling, backgrounds and hooks.
        mouth_code: give the motion fields the mouth-code input (tracked codes while adapting,
            codes predicted from the audio when driving; :mod:`core.model.mouth_drive`). A
            prior trained without the input gets a new, initially silent code path.
        predicted_code_prob: fraction of training steps conditioned on the predicted code
            instead of the tracked one, so the fields accept what they get when driven (0.2).
        av_offset: where the recording's audio-video offset comes from: ``'recording'`` (the
            offset measured over the whole processed clip in preprocessing, manifest
            ``av_offset``; clips made without it fall back to the training frames) or
            ``'training'`` (measured on the training frames only; the benchmark's choice, so
            held-out frames never inform the avatar).
        drive_spread: the finished avatar draws its predicted mouth codes this much wider
            than fitted (:data:`core.model.mouth_drive.HELDOUT_SPREAD`, 1.4: a drive fitted
            on 5 s predicts new speech 0.71x as wide as the person's lips move); adaptation
            itself trains with the codes as fitted. 1 = as fitted.
        readout_mix, readout_penalty: the person-specific read-out of the audio-to-mouth
            drive (:class:`core.model.mouth_drive.ReadoutConfig`): its weight against the
            speaker-independent prior's last layer (0 = the prior alone) and the ridge
            penalty pulling it toward the prior's.
        person_weight, person_steps: the person's own audio-to-mouth model
            (:class:`core.train.person_mouth.PersonMouthConfig`), trained from scratch on
            the training frames and blended with the prior's prediction: its weight in the
            blend (0 = not trained; 1 = it alone, the drive of an avatar with nothing
            pre-trained) and its optimiser steps.
        edge_weight: weight of the L1 term over the head's edge band (4 px either side of
            the recorded boundary at 256 px) in the face and fuse stages, where halos and
            hair-edge errors show.
        collapse_scale, collapse_ratio: when the face stage ends, face Gaussians whose
            largest axis, as the face motion field deforms it, stays below
            ``collapse_scale`` metres (1 mm) and below ``collapse_ratio`` (0.1) of its own
            undeformed size in every training frame are removed (:mod:`core.train.collapse`):
            opaque point-like splats that show as stray dots on new speech
            (docs/results/speckle.md). ``collapse_scale`` 0 = keep them.
        unseen_weight: when the face stage ends (after the collapse prune), face Gaussians
            whose compositing weight summed over all pixels of all training frames is below
            this (1e-3 of a pixel) are removed (:mod:`core.train.unseen`): no training frame
            shows them, so nothing corrected them. 0 = keep them.
        unseen_views: the unseen test sums over at most this many training frames spread
            evenly over the span (:func:`core.train.unseen.spaced_views`), its threshold
            scaled by the fraction used: each frame costs about a training step. 0 = every
            training frame.
        mouth_points: mouth Gaussians at initialisation (METHOD §2: 5000).
        face_points: face Gaussians at initialisation (METHOD §2: 2000).
        mouth_interior_only: the mouth stage's photometric term counts the recorded mouth
            interior only (elsewhere in the lips box the face layer covers the mouth in the
            composite); False: the flat background is asked for there too, which pushes
            every mouth Gaussian to transparency (docs/results/mouth_interior.md).
        mouth_max_offset: the mouth field's Δxyz held within this many metres per axis
            (2 cm: :func:`core.model.motion_field.bound_offset`), saved with the avatar; None
            = unbounded. Unbounded, the shipped prior's mouth field moved the mouth Gaussians
            10-40 cm, out of the picture, where nothing could correct them.
        mouth_field_reset: zero the prior's mouth-field output layers before adapting
            (:func:`reset_mouth_offsets`): the mouth Gaussians start in the mouth.
    """

    res: int = 256
    seconds: float = 5.0
    face_steps: int = 1500
    mouth_steps: int = 900
    fuse_steps: int = 200
    umf_lr_grid: float = 5e-3
    umf_lr_mlp: float = 5e-4
    umf_warm_frac: float = 0.3
    umf_lr_end: float = 0.5
    gauss_lr_end: float = 1.0
    weight_decay: float = 0.01
    aligner_start_frac: float = 0.1
    aligner_lr: float = 5e-5
    sh_degree: int = 1
    curriculum_frac: float = 0.3
    min_mouth_px_512: int = 20
    densify_start_frac: float = 0.05
    densify_min_start: int = 100
    densify_interval: int = 100
    face_densify_grad: float = FACE_DENSIFY.grad_threshold
    ckpt_every: int = 250
    seed: int = 0
    mouth_code: bool = True
    predicted_code_prob: float = 0.2
    av_offset: str = "recording"
    drive_spread: float = HELDOUT_SPREAD
    readout_mix: float = 1.0
    readout_penalty: float = 300.0
    person_weight: float = 0.5
    person_steps: int = 300
    edge_weight: float = 0.0
    collapse_scale: float = COLLAPSE_SCALE
    collapse_ratio: float = COLLAPSE_RATIO
    unseen_weight: float = UNSEEN_WEIGHT
    unseen_views: int = 32
    mouth_points: int = MOUTH_INIT.n
    face_points: int = FACE_INIT.n
    mouth_interior_only: bool = True
    mouth_max_offset: float | None = 0.02
    mouth_field_reset: bool = True

    def __post_init__(self) -> None:
        if self.av_offset not in AV_OFFSET_SOURCES:
            raise ValueError(f"av_offset must be one of {AV_OFFSET_SOURCES}, got {self.av_offset!r}")
        if not self.drive_spread > 0:
            raise ValueError(f"drive_spread must be above 0, got {self.drive_spread}")
        if not self.face_densify_grad > 0:
            raise ValueError(f"face_densify_grad must be above 0, got {self.face_densify_grad}")
        if self.face_points < 1 or self.mouth_points < 1:
            raise ValueError("face_points and mouth_points must be at least 1, got "
                             f"{self.face_points} and {self.mouth_points}")
        self.readout  # validates the read-out settings
        self.person  # and the person model's

    @property
    def readout(self) -> ReadoutConfig:
        """The drive's person-specific read-out settings."""
        return ReadoutConfig(mix=self.readout_mix, penalty=self.readout_penalty)

    @property
    def person(self) -> PersonMouthConfig:
        """The drive's person-model settings."""
        return PersonMouthConfig(weight=self.person_weight, steps=self.person_steps)

    @property
    def total_steps(self) -> int:
        return self.face_steps + self.mouth_steps + self.fuse_steps


#: ``gpu``: paper scale. ``zerogpu``: the ``gpu`` preset (512²) cut to about an eighth of its
#: steps, so one adaptation fits one short ZeroGPU slot (step counts not yet set from a GPU
#: measurement: docs/results/gpu.md). ``cpu``: 256², about 5 min for a 5 s clip on two idle
#: cores (see docs/ARCHITECTURE.md for the measured step times). ``fast``: the ``cpu``
#: schedule's shape (warm-up, decay, densification window as fractions of each stage) in
#: 400 + 250 + 50 steps, densifying every 50 steps from step 50 (twice as often: it kept a
#: tenth of ``cpu``'s Gaussians otherwise), about a quarter of its time; a schedule that annealed every
#: Gaussian rate 10x over the short stages learned far slower and was dropped
#: (docs/results/fast_preset.md); ``--resume --preset cpu`` refines a ``fast`` avatar.
#: ``tiny``: tests (96², the first 3 s of a clip, 1000 face and 500 mouth Gaussians, the
#: unseen test on 8 frames).
PRESETS: dict[str, AdaptConfig] = {
    "gpu": AdaptConfig(res=512, face_steps=10000, mouth_steps=10000, fuse_steps=2000, ckpt_every=1000),
    "zerogpu": AdaptConfig(res=512, face_steps=1500, mouth_steps=1000, fuse_steps=200,
                           ckpt_every=500),
    "cpu": AdaptConfig(),
    "fast": AdaptConfig(face_steps=400, mouth_steps=250, fuse_steps=50, ckpt_every=100,
                        densify_min_start=50, densify_interval=50),
    "tiny": AdaptConfig(res=96, seconds=3.0, face_steps=40, mouth_steps=20, fuse_steps=10,
                        ckpt_every=20, person_steps=40, mouth_points=500, face_points=1000,
                        unseen_views=8),
}
#: ``tiny-fast``: the tests' counterpart of ``fast`` (refined to ``tiny``).
PRESETS["tiny-fast"] = replace(PRESETS["tiny"], face_steps=16, mouth_steps=8, fuse_steps=4)

#: The preset that Refine continues an avatar of each preset to (:func:`refine_start`).
REFINE_TO: dict[str, str] = {"fast": "cpu", "tiny-fast": "tiny"}


def umf_lr_factor(step: int, stage_steps: int, cfg: AdaptConfig, has_prior: bool) -> float:
    """Fine-tuning schedule: with a prior 0.1x for the first ``umf_warm_frac`` of the stage,
    then ``umf_lr_end^(step / stage_steps)`` (paper: 0.5^(it/10k) over a 10k stage); from
    scratch the decay only."""
    if has_prior and step < cfg.umf_warm_frac * stage_steps:
        return 0.1
    return cfg.umf_lr_end ** (step / max(1, stage_steps))


def gauss_lr_factor(step: int, stage_steps: int, cfg: AdaptConfig) -> float:
    """The Gaussians' rate factor at ``step`` of a face or mouth stage:
    ``gauss_lr_end^(step / stage_steps)`` (1 throughout in the ``cpu`` preset)."""
    return cfg.gauss_lr_end ** (step / max(1, stage_steps))


#: Settings a refine may change (how long and how fast each stage trains); every other
#: setting of the refined avatar must match the one it continues.
SCHEDULE_FIELDS = ("face_steps", "mouth_steps", "fuse_steps", "umf_warm_frac", "umf_lr_end",
                   "gauss_lr_end", "densify_start_frac", "densify_min_start",
                   "densify_interval", "face_densify_grad", "ckpt_every", "curriculum_frac",
                   "aligner_start_frac")


def _prior_name(prior: str | os.PathLike | None) -> str | None:
    return None if prior is None else Path(str(prior)).stem


def refine_start(avatar_meta: dict, cfg: AdaptConfig, prior: str | os.PathLike | None,
                 clip_sha256: str, n_train: int) -> dict[str, int]:
    """Where a refine of a finished avatar starts: ``{stage: steps already done}``.

    The avatar (its metadata ``avatar_meta``) must come from the same clip, training
    frames, prior and settings as ``cfg`` except :data:`SCHEDULE_FIELDS`, and have fewer
    steps than ``cfg`` in some stage and more in none.

    Raises:
        InputError('wrong_weights'): the avatar cannot be continued with these settings.
    """
    run = avatar_meta.get("run") or {}
    old = run.get("config") or {}
    fix = "Pass the clip, prior and settings the avatar was made with, or start again without --resume."
    if run.get("clip_sha256") != clip_sha256 or int(run.get("n_train", -1)) != n_train:
        raise InputError("wrong_weights", "The avatar to refine was made from another clip "
                         "or another number of training seconds.", fix)
    if _prior_name(run.get("prior")) != _prior_name(prior):
        raise InputError("wrong_weights", f"The avatar to refine was made with prior "
                         f"{run.get('prior')!r}, not {prior!r}.", fix)
    want = json.loads(json.dumps(asdict(cfg)))
    diff = sorted(k for k in want if k not in SCHEDULE_FIELDS and k in old and old[k] != want[k])
    if diff:
        raise InputError("wrong_weights", "The avatar to refine was made with other settings "
                         f"({', '.join(diff)}).", fix)
    done = {st: int(old.get(f"{st}_steps", 0)) for st in STAGES}
    target = {st: int(want[f"{st}_steps"]) for st in STAGES}
    if any(done[st] > target[st] for st in STAGES):
        raise InputError("wrong_weights", f"The avatar already has more steps ({done}) than "
                         f"this schedule ({target}) in some stage.",
                         "Refine with a longer preset (e.g. --preset cpu after fast).")
    if done == target:
        raise InputError("wrong_weights", f"The avatar has already finished this schedule "
                         f"({done}): there is nothing to resume or refine.",
                         "Refine with a longer preset, or start again without --resume.")
    return done


class Curriculum:
    """Frame sampling per stage (METHOD §5), reproducible from the generator."""

    def __init__(self, frames: TrainFrames, cfg: AdaptConfig, gen: torch.Generator) -> None:
        self.gen = gen
        self.cfg = cfg
        self.by_opening = torch.argsort(frames.lips_apart)
        self.blink_w = 0.5 + frames.blink.clamp(0, 1)
        min_px = max(1, round(cfg.min_mouth_px_512 * (frames.res / 512) ** 2))
        ok = frames.mouth_px >= min_px
        self.mouth_pool = torch.nonzero(ok).flatten()
        if self.mouth_pool.numel() == 0:
            raise InputError("no_face", "The mouth is never open in the training seconds "
                             "(no frame shows the inside of the mouth).",
                             "Use a clip where you speak clearly, or more seconds of it.")
        lips = frames.lips_apart[self.mouth_pool]
        self.mouth_w = (lips - lips.min()) + 0.1 * (lips.max() - lips.min() + 1e-6)
        self.n = frames.n

    @host_side
    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.gen))

    @host_side
    def face(self, step: int, total: int) -> int:
        """Warm-up: closed -> open mouths (growing pool); then blinks favoured; then uniform."""
        t = step / max(1, total)
        c = self.cfg.curriculum_frac
        if t < c:
            pool = max(1, math.ceil(self.n * (0.2 + 0.8 * t / c)))
            return int(self.by_opening[self._randint(pool)])
        if t < 2 * c:
            return int(torch.multinomial(self.blink_w, 1, generator=self.gen))
        return self._randint(self.n)

    @host_side
    def mouth(self) -> int:
        """Frames showing the mouth interior, favouring wider openings."""
        k = int(torch.multinomial(self.mouth_w, 1, generator=self.gen))
        return int(self.mouth_pool[k])

    def uniform(self) -> int:
        return self._randint(self.n)


@dataclass
class AdaptState:
    """Everything that changes during adaptation (what a checkpoint holds)."""

    umf: UMF
    ident: Identity
    stage: str = "face"
    step: int = 0
    losses: dict[str, float] = field(default_factory=dict)


def _densifier(stage: str, stage_steps: int, cfg: AdaptConfig, n: int,
               device: torch.device | None = None) -> Densifier:
    """The densifier of the ``'face'`` or ``'mouth'`` stage: its branch's thresholds
    (``FACE_DENSIFY`` with ``cfg.face_densify_grad``, ``MOUTH_DENSIFY``) on ``cfg``'s schedule."""
    base = (replace(FACE_DENSIFY, grad_threshold=cfg.face_densify_grad) if stage == "face"
            else MOUTH_DENSIFY)
    start = max(cfg.densify_min_start, int(cfg.densify_start_frac * stage_steps))
    return Densifier(replace(base, start_step=start, interval=cfg.densify_interval), n, device)


@host_side
def coin(gen: torch.Generator, p: float) -> bool:
    """True with probability ``1 - p`` (a draw from the host generator ``gen``)."""
    return float(torch.rand(1, generator=gen)) >= p


def device_generator(gen: torch.Generator, device: torch.device, seed: int) -> torch.Generator:
    """The generator of draws made on the training device (random backgrounds): ``gen``
    itself on the CPU (so CPU runs keep one random stream), else a generator on ``device``
    seeded with ``seed``."""
    if device.type == "cpu":
        return gen
    return torch.Generator(device).manual_seed(seed)


def preset_name(cfg: AdaptConfig) -> str:
    """The name of the preset ``cfg`` is (with its resolution), or 'custom settings'."""
    for name, p in PRESETS.items():
        if p == cfg:
            return f"the {name} preset at {cfg.res}x{cfg.res}"
    return f"custom settings at {cfg.res}x{cfg.res} ({cfg.total_steps} steps)"


def load_prior(path: str | os.PathLike, spec: AudioFeatureSpec | None = None,
               code_dim: int | None = None) -> tuple[UMF, dict]:
    """The prior's UMF (EMA weights) and metadata; refuses a mismatched audio feature type.

    ``path``: a .safetensors file or a name from ``weights/manifest.json``
    (:func:`core.weights.resolve_prior`). ``code_dim``: the mouth-code input wanted (None:
    as the prior has it). A prior trained without the input is given one by
    :meth:`UMF.load_without_code`: its fields behave exactly as before until adaptation
    teaches the new code path."""
    from core.weights import resolve_prior

    t, meta = checkpoint.load(resolve_prior(path), kind="prior")
    prior_spec = AudioFeatureSpec.from_dict(meta["audio"])
    if spec is not None:
        prior_spec.check_matches(spec)
    has = int(meta.get("code_dim", 0))
    want = has if code_dim is None else code_dim
    umf = UMF(prior_spec.dim, want)
    state = checkpoint.prefixed(t, "umf.")
    if want and not has:
        umf.load_without_code(state)
    elif has and not want:
        raise InputError("wrong_weights", "This prior's motion fields take a mouth code.",
                         "Adapt with the mouth code (the default), or use a prior without it.")
    else:
        umf.load_state_dict(state)
    return umf, meta


def reset_mouth_offsets(umf: UMF) -> None:
    """Zero the mouth field's output layers (the Δxyz MLP's last layer and the code basis's):
    every mouth Gaussian starts where it is, and the field learns its motion from there."""
    f = umf.mouth.field
    with torch.no_grad():
        f.mlp[-1].weight.zero_()
        if f.code_basis is not None:
            f.code_basis.mlp[-1].weight.zero_()
            f.code_basis.mlp[-1].bias.zero_()


def adapt(clip: str | os.PathLike, out: str | os.PathLike, prior: str | os.PathLike | None,
          cfg: AdaptConfig | None = None, progress: ProgressFn | None = None,
          resume: bool = False, work: str | os.PathLike | None = None,
          log: Callable[[str], None] | None = None,
          observe: Callable[[int, UMF, Identity], None] | None = None,
          observe_every: int = 250, device: str | torch.device | None = "auto",
          drive: MouthDrive | None = None) -> Path:
    """Create an avatar folder from a clip.

    Args:
        clip: raw video (preprocessed into the work folder at ``cfg.res``) or processed folder.
        out: avatar folder to write.
        prior: prior checkpoint (``weights/...``) or None to train from scratch.
        cfg: :class:`AdaptConfig` (default: the ``cpu`` preset).
        progress: ``progress(text, fraction)`` callback.
        resume: continue from the work folder's checkpoint; when ``out`` already holds a
            finished avatar with a shorter schedule than ``cfg``, refine it (each stage goes
            on from the step it reached; :func:`refine_start`), replacing it only at the end.
        work: work folder (default: ``.<out name>.work`` beside ``out``); removed on success.
        log: receives one line per logged step (default: silent).
        observe: called as ``observe(steps_done, umf, ident)`` every ``observe_every``
            steps over all stages (and after the last step), e.g. to score held-out frames
            along training (the benchmark's PSNR-vs-steps curve). It must not change them.
            The models it gets live on ``device``.
        device: where training runs (:func:`core.device.resolve_device`: ``auto``, ``cpu``,
            ``cuda``, ``cuda:N``). Preprocessing and the mouth drive's fit stay on the CPU;
            the frames, plates, Gaussians, fields, optimizers and densification statistics
            move to the device once, before the loop. The avatar on disk is device-free.
        drive: the clip's mouth drive fitted beforehand with these settings
            (:func:`core.train.person_mouth.fit_drive`, e.g. on a machine with the audio
            front end, for a GPU machine without it); None: fitted here.

    Returns:
        The avatar folder.

    Raises:
        InputError('missing_dependency'): ``device`` names a GPU this machine lacks
            (nothing is written).
        InputError('too_large'): the GPU ran out of memory; the work folder's last
            checkpoint is kept for ``resume``.
    """
    cfg = cfg or PRESETS["cpu"]
    dev = resolve_device(device)
    out = Path(out)
    work = Path(work) if work else out.with_name(f".{out.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda text, frac: None)
    say = log or (lambda line: None)

    clip = Path(clip)
    n_want = int(round(cfg.seconds * 25))  # only the training seconds are loaded
    if clip.is_dir():
        pclip = ProcessedClip.load(clip, max_frames=n_want)
    else:
        from core.data.preprocess import PreprocessConfig
        from core.preprocess import preprocess_clip

        pdir = work / "clip"
        outer = report

        def report(text: str, frac: float) -> None:  # preprocessing is the first 10% of the job
            outer(text, 0.1 + 0.9 * frac)

        if not (pdir / "manifest.json").is_file():
            outer("preprocessing the clip", 0.0)
            preprocess_clip(clip, pdir, PreprocessConfig(res=max(cfg.res, 256)),
                       progress=lambda s, f: outer(f"preprocessing: {s}", 0.1 * f), overwrite=True)
        pclip = ProcessedClip.load(pdir, max_frames=n_want)
    spec = AudioFeatureSpec.from_dict(pclip.manifest["audio"])
    n_train = min(pclip.num_frames, int(round(cfg.seconds * 25)))

    base = None  # refining a finished avatar: it, and the steps each stage has done
    start_at = {st: 0 for st in STAGES}
    if resume and (out / "model.safetensors").is_file():
        from core.model.avatar import load_avatar

        base = load_avatar(out)
        start_at = refine_start(base.meta, cfg, prior, pclip.manifest["source"]["sha256"],
                                n_train)
        say(f"refining the avatar from {start_at} steps")

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    has_prior = prior is not None
    if base is not None:  # the avatar's own fields and drive, not the prior's
        umf, prior_meta = base.umf, base.meta.get("prior_meta")
        gen.manual_seed(cfg.seed + sum(start_at.values()))
    elif has_prior:
        umf, prior_meta = load_prior(prior, spec, MOUTH_CODE_DIM if cfg.mouth_code else 0)
    else:
        umf, prior_meta = UMF(spec.dim, MOUTH_CODE_DIM if cfg.mouth_code else 0), None
    if base is None:  # a refine keeps the avatar's own mouth field and bound
        umf.mouth.field.max_offset = cfg.mouth_max_offset
        if cfg.mouth_field_reset:
            reset_mouth_offsets(umf)
    if not umf.code_dim:
        drive = None
    elif base is not None:
        drive = base.drive
    elif drive is not None:
        say(f"mouth code: the drive given (audio-video offset {drive.av_offset:+d} frames)")
    else:
        say("mouth code: fitting the audio-to-mouth drive")
        a = pclip.arrays
        known = pclip.av_offset if cfg.av_offset == "recording" else None
        drive = fit_drive(a["points3d"].numpy(), a["audio"].numpy(), n_train, a["valid"].numpy(),
                          av_offset=known, readout=cfg.readout, person=cfg.person, seed=cfg.seed)
        where = "measured in preprocessing" if known is not None else "from the training frames"
        say(f"audio-video offset of the clip: {drive.av_offset:+d} frames ({where})")
    if drive is not None and drive.spread != 1.0:   # a refined avatar's: learn as fitted
        drive = replace(drive, spread=1.0)
    frames = TrainFrames.from_clip(pclip, torch.arange(n_train), cfg.res, fit_frames=n_train,
                                   drive=drive).to(dev)
    if base is not None:
        ident = base.ident
        for prm in (*ident.parameters(), *umf.parameters()):
            prm.requires_grad_(True)
    else:
        ident = Identity(sh_degree=cfg.sh_degree, aligners=has_prior)
        ident.init_gaussians(pclip.arrays["canonical"], gen, cfg.mouth_points, cfg.face_points)
    umf.to(dev)
    ident.to(dev)
    dgen = device_generator(gen, dev, cfg.seed)
    state = AdaptState(umf=umf, ident=ident, step=start_at["face"],
                       losses=dict(base.meta.get("losses", {})) if base is not None else {})

    ckpt = work / "adapt.safetensors"
    run_meta = {"config": asdict(cfg), "prior": str(prior) if prior else None,
                "clip_sha256": pclip.manifest["source"]["sha256"], "n_train": n_train}
    if base is not None:
        run_meta["refined_from"] = start_at
    opt_state: dict[str, Tensor] = {}
    if resume and ckpt.is_file():
        t, meta = checkpoint.load(ckpt, kind="adapt-state")
        if meta["run"] != json.loads(json.dumps(run_meta)):
            raise InputError("wrong_weights", f"{ckpt} belongs to a different run "
                             "(other clip, prior or settings).",
                             "Start again without --resume, or pass the same arguments.")
        state.ident = ident = ident_from_tensors(t).to(dev)
        umf.load_state_dict(checkpoint.prefixed(t, "umf."))
        state.stage, state.step, state.losses = meta["stage"], meta["step"], meta["losses"]
        checkpoint.load_rng_tensors(gen, t)
        if dgen is not gen and "rng.device_gen" in t:
            dgen.set_state(t["rng.device_gen"])
        opt_state = t
        say(f"resumed at {state.stage} step {state.step}")

    curriculum = Curriculum(frames, cfg, gen)
    t_start = time.perf_counter()
    done_before = _steps_done(state, cfg)

    def save_ckpt(opts: dict[str, torch.optim.Optimizer], d: Densifier | None) -> None:
        tensors = {**ident_tensors(ident), **checkpoint.module_tensors(umf, "umf."),
                   **checkpoint.rng_tensors(gen)}
        if dgen is not gen:
            tensors["rng.device_gen"] = dgen.get_state()
        for name, o in opts.items():
            tensors.update(checkpoint.optimizer_tensors(o, f"opt.{name}."))
        if d is not None:
            tensors.update({"dens.grad_accum": d.grad_accum, "dens.denom": d.denom,
                            "dens.max_radii": d.max_radii})
        checkpoint.save(ckpt, tensors, {"kind": "adapt-state", "run": run_meta,
                                        "stage": state.stage, "step": state.step,
                                        "losses": state.losses})

    for stage, steps in zip(STAGES, (cfg.face_steps, cfg.mouth_steps, cfg.fuse_steps)):
        if STAGES.index(stage) < STAGES.index(state.stage):
            continue
        if state.stage != stage:
            state.stage, state.step = stage, start_at[stage]
        gs = ident.face if stage == "face" else ident.mouth
        opts: dict[str, torch.optim.Optimizer] = {}
        if stage in ("face", "mouth"):
            opts["gauss"] = gaussian_optimizer(gs)
            for g in opts["gauss"].param_groups:
                g["base_lr"] = g["lr"]
            opts["umf"] = field_optimizer(umf, cfg.umf_lr_grid, cfg.umf_lr_mlp, cfg.weight_decay)
            aligner = ident.face_aligner if stage == "face" else ident.mouth_aligner
            if aligner is not None:
                opts["aligner"] = torch.optim.AdamW(aligner.parameters(), lr=cfg.aligner_lr,
                                                    weight_decay=cfg.weight_decay)
            d = _densifier(stage, steps, cfg, gs.num, dev)
        else:
            opts["face"] = gaussian_optimizer(ident.face, colours_and_opacity_only=True)
            opts["mouth"] = gaussian_optimizer(ident.mouth, colours_and_opacity_only=True)
            d = None
        if opt_state and state.step > 0:
            for name, o in opts.items():
                checkpoint.load_optimizer_tensors(o, opt_state, f"opt.{name}.")
            if d is not None and "dens.grad_accum" in opt_state:
                d.grad_accum, d.denom, d.max_radii = (opt_state["dens.grad_accum"].to(dev).clone(),
                                                      opt_state["dens.denom"].to(dev).clone(),
                                                      opt_state["dens.max_radii"].to(dev).clone())
        opt_state = {}
        # the face branch is fixed after its stage
        for p in ident.face.parameters():
            p.requires_grad_(stage in ("face", "fuse"))
        for p in umf.face.parameters():
            p.requires_grad_(stage == "face")
        for p in umf.mouth.parameters():
            p.requires_grad_(stage == "mouth")
        running: Tensor | None = None   # smoothed loss, on the device (read when logged)
        while state.step < steps:
            s = state.step
            if stage != "fuse":
                gs.update_sh_degree(s)
            aligner_on = has_prior and s >= cfg.aligner_start_frac * steps
            if "umf" in opts:
                f = umf_lr_factor(s, steps, cfg, has_prior)
                for g in opts["umf"].param_groups:
                    g["lr"] = g["base_lr"] * f
            if "gauss" in opts and cfg.gauss_lr_end != 1.0:
                f = gauss_lr_factor(s, steps, cfg)
                for g in opts["gauss"].param_groups:
                    g["lr"] = g["base_lr"] * f
            bg = torch.rand(3, generator=dgen, device=dev)
            tracked = drive is None or coin(gen, cfg.predicted_code_prob)
            try:
                if stage == "face":
                    j = curriculum.face(s, steps)
                    r = face_step(umf, ident, frames, j, bg, use_aligner=aligner_on,
                                  tracked=tracked, edge_weight=cfg.edge_weight)
                elif stage == "mouth":
                    j = curriculum.mouth()
                    k = sample_hook_k(True, gen)
                    r = mouth_step(umf, ident, frames, j, bg, k, use_aligner=aligner_on,
                                   tracked=tracked, interior_only=cfg.mouth_interior_only)
                else:
                    j = curriculum.uniform()
                    r = fuse_step(umf, ident, frames, j, dilate=mouth_dilation(frames.res),
                                  tracked=tracked, edge_weight=cfg.edge_weight)
                r.loss.backward()
            except torch.OutOfMemoryError as e:
                raise gpu_memory_error(
                    f"adapting ({stage} step {s})", preset_name(cfg),
                    f"The last checkpoint is kept in {work}: continue with --resume on a GPU with "
                    "more free memory, or use --res 256 / --preset cpu.") from e
            if d is not None and r.render.means2d.grad is not None:
                d.accumulate(r.render.means2d.grad, r.render.visible, r.render.radii,
                             frames.res, frames.res)
            for name, o in opts.items():
                if name == "aligner" and not aligner_on:
                    o.zero_grad(set_to_none=True)
                    continue
                o.step()
                o.zero_grad(set_to_none=True)
            if d is not None:
                d.step(s, steps, gs, opts["gauss"], generator=gen)
            loss = r.logs["loss"]
            running = loss if running is None else 0.9 * running + 0.1 * loss
            state.step += 1
            done = _steps_done(state, cfg)
            el = time.perf_counter() - t_start
            rate = (done - done_before) / max(el, 1e-6)
            left = (cfg.total_steps - done) / max(rate, 1e-6)
            report(f"{stage} {state.step}/{steps}, {format_seconds(left)} left", done / cfg.total_steps)
            due_ckpt = state.step % cfg.ckpt_every == 0 and state.step < steps
            if state.step % 50 == 0 or state.step == steps or due_ckpt:
                # the one read-back of the loss: every 50 steps and before a checkpoint
                state.losses[stage] = float(running)
                if not math.isfinite(state.losses[stage]):
                    raise FloatingPointError(f"non-finite loss by {stage} step {state.step}")
                say(f"{stage} {state.step}/{steps} loss {state.losses[stage]:.4f} "
                    f"gaussians {ident.face.num}+{ident.mouth.num} {rate:.2f} steps/s")
            if observe is not None and (done % observe_every == 0 or done == cfg.total_steps):
                with torch.no_grad():
                    observe(done, umf, ident)
            if due_ckpt:
                save_ckpt(opts, d)
        if stage == "face" and cfg.collapse_scale > 0:
            gone = prune_collapsed(umf, ident, (frames.cond(j, tracked=True) for j in range(frames.n)),
                                   cfg.collapse_scale, cfg.collapse_ratio, opts["gauss"],
                                   FACE_DENSIFY.min_keep)
            say(f"removed {gone} collapsed face Gaussians (below {cfg.collapse_scale * 1e3:g} mm "
                f"and {cfg.collapse_ratio:g} of their size in every training frame); {ident.face.num} left")
        if stage == "face" and cfg.unseen_weight > 0:
            gone = prune_unseen(umf, ident, [frames.cond(j, tracked=True) for j in range(frames.n)],
                                cfg.unseen_weight, opts["gauss"], FACE_DENSIFY.min_keep,
                                most_views=cfg.unseen_views)
            say(f"removed {gone} face Gaussians no training frame shows; {ident.face.num} left")
        save_ckpt(opts, None)

    for p in ident.parameters():
        p.requires_grad_(False)
    plates = (frames.plates * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    meta = {"res": frames.res, "fps": 25.0, "audio": spec.to_dict(), "run": run_meta,
            "source": pclip.manifest["source"], "losses": state.losses,
            "prior_meta": {k: prior_meta[k] for k in ("created", "identities", "steps")
                           if k in prior_meta} if prior_meta else None,
            "train_seconds": n_train / 25.0, "wall_s": round(time.perf_counter() - t_start, 1),
            "refined_from": ({"steps": start_at, "wall_s": base.meta.get("wall_s")}
                             if base is not None else None),
            "steps": {"face": cfg.face_steps, "mouth": cfg.mouth_steps, "fuse": cfg.fuse_steps},
            "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    full = full_frame_frames(pclip, n_train)
    if full is None:
        say("note: the processed clip keeps no recorded frames (made before full-frame "
            "output): the avatar renders the crop only; preprocess the clip again for "
            "full-frame output")
    if drive is not None:
        drive = replace(drive, spread=float(cfg.drive_spread))
    save_avatar(out, umf, ident, frames.viewmats, frames.K, frames.expr, plates, meta, drive=drive,
                full=full)
    shutil.rmtree(work, ignore_errors=True)
    report("done", 1.0)
    return out


def full_frame_frames(pclip: ProcessedClip, n: int) -> FullFrameFrames | None:
    """The first ``n`` recorded frames of a processed clip and their landmarks, for the
    avatar's full-frame output; None (crop mode only) for a clip that did not keep them."""
    from core.data.media import iter_frames

    full, path = pclip.full_frame, pclip.source_path
    if full is None or path is None:
        return None
    landmarks = pclip.arrays["points2d"][:n].float() / float(pclip.res)
    return FullFrameFrames(full=full, frames=iter_frames(path, fps=25.0, max_frames=n),
                           landmarks=landmarks)


def _steps_done(state: AdaptState, cfg: AdaptConfig) -> int:
    before = {"face": 0, "mouth": cfg.face_steps, "fuse": cfg.face_steps + cfg.mouth_steps}
    return before[state.stage] + state.step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.adapt", description=__doc__.split("\n")[0])
    p.add_argument("clip", help="video file or processed-clip folder")
    p.add_argument("--prior", default=DEFAULT_PRIOR,
                   help="prior file or weights/manifest.json name (default: the shipped "
                        f"{DEFAULT_PRIOR}), or 'none' to train from scratch")
    p.add_argument("--out", required=True, help="avatar folder to write")
    p.add_argument("--seconds", type=float, default=None, help="training seconds (default 5)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="gpu (paper scale; the default on a CUDA device), cpu (the default on "
                        "the CPU) or fast (about a quarter of cpu's steps; refine it later with "
                        "--resume --preset cpu)")
    p.add_argument("--steps", type=int, nargs=3, metavar=("FACE", "MOUTH", "FUSE"), default=None)
    p.add_argument("--res", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its work folder; on a finished "
                        "avatar with a shorter schedule, refine it to this preset's")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--raster", choices=RASTER_CHOICES, default="auto", help=RASTER_HELP)
    a = p.parse_args(argv)
    try:
        dev = resolve_device(a.device)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    preset = a.preset or ("gpu" if dev.type == "cuda" else "cpu")
    cfg = PRESETS[preset]
    if a.seconds is not None:
        cfg = replace(cfg, seconds=a.seconds)
    if a.steps:
        cfg = replace(cfg, face_steps=a.steps[0], mouth_steps=a.steps[1], fuse_steps=a.steps[2])
    if a.res:
        cfg = replace(cfg, res=a.res)
    if a.seed is not None:
        cfg = replace(cfg, seed=a.seed)
    prior = None if a.prior.lower() == "none" else a.prior
    with raster_backend(a.raster):
        out, code = run_cli_job(
            lambda bar: adapt(a.clip, a.out, prior, cfg, bar, resume=a.resume, log=bar.write,
                              device=dev))
    if code:
        return code
    print(f"avatar written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
