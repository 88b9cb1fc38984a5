"""App settings (:class:`AppConfig`), read from the environment with offline defaults, and
the adaptation presets the app offers (:func:`app_presets`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.train.adapt import AdaptConfig

ROOT = Path(__file__).resolve().parents[1]
from core.weights import DEFAULT_PRIOR  # the shipped prior: the offline default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


#: Preset for a Hugging Face ZeroGPU Space: the ``gpu`` preset (512 px) cut to about an
#: eighth of its steps, so one adaptation fits in one short GPU slot (``gpu_adapt_s``).
ZERO_GPU_PRESET = "zerogpu"
#: Longest GPU slot ZeroGPU grants per call (s); visitors' daily quotas are a few minutes.
ZERO_GPU_MAX_S = 300


def app_presets() -> dict[str, AdaptConfig]:
    """``core.adapt.PRESETS`` plus :data:`ZERO_GPU_PRESET`."""
    from core.train.adapt import PRESETS

    short = replace(PRESETS["gpu"], face_steps=1500, mouth_steps=1000, fuse_steps=200,
                    ckpt_every=500)
    return {**PRESETS, ZERO_GPU_PRESET: short}


def on_zero_gpu() -> bool:
    """True on a Hugging Face ZeroGPU Space (the ``spaces`` package and its flag)."""
    if not _env_bool("SPACES_ZERO_GPU"):
        return False
    try:
        import spaces  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def default_preset() -> str:
    """``zerogpu`` on ZeroGPU (where CUDA looks available even outside GPU calls), ``gpu``
    with CUDA, else ``fast`` (an avatar in about a quarter of the ``cpu`` schedule's time;
    Refine continues it to ``cpu``)."""
    if on_zero_gpu():
        return ZERO_GPU_PRESET
    import torch

    return "gpu" if torch.cuda.is_available() else "fast"


def refine_target(preset: str) -> str | None:
    """The preset Refine continues an avatar of ``preset`` to (``core.adapt.REFINE_TO``),
    None when it has nothing left to refine."""
    from core.train.adapt import REFINE_TO

    return REFINE_TO.get(preset)


@dataclass
class AppConfig:
    """Settings of the Gradio app.

    Attributes:
        data_root: private folder of the avatar store (env ``INSTAG_APP_DATA``).
        preset: adaptation preset, a key of :func:`app_presets` (env ``INSTAG_PRESET``).
        prior: prior checkpoint path or shipped prior name (``weights/manifest.json``), or
            ``"none"`` to adapt from scratch (env ``INSTAG_PRIOR``).
        prior_repo: Hugging Face model repo holding the prior, used when ``prior`` is not a
            local file (env ``INSTAG_PRIOR_REPO``); ``prior_filename`` / ``prior_revision``
            (a pinned commit) select the file.
        allow_download: let huggingface-hub download the prior (env ``INSTAG_ALLOW_DOWNLOAD``);
            off by default, so only an already cached copy is used.
        max_upload_mb: largest accepted upload (MB).
        min_clip_s, max_clip_s: accepted clip length for creating an avatar (s).
        max_audio_s: longest driving audio for Talk (s).
        preview_s: seconds of the clip's own audio rendered as the preview.
        expiry_hours: avatars, uploads and renders are deleted this long after creation.
        concurrency: long jobs (create, talk, benchmark) that run at the same time.
        max_queue: waiting jobs accepted before new ones are refused.
        max_waiting: waiting jobs one owner may have in the queue (env
            ``INSTAG_MAX_WAITING``); more are refused at once with a message.
        max_avatars: avatars one session may hold at once.
        sweep_minutes: how often expired data is removed.
        delete_wait_s: how long Delete waits for the avatar's running job to stop (s); also
            how long a finished refine waits for running renders before it is put in place.
        max_refines: refines running at once in the background (more are refused with a
            message; env ``INSTAG_MAX_REFINES``).
        gpu_adapt_s, gpu_render_s, gpu_bench_s: GPU seconds requested per call on ZeroGPU
            for adaptation, one render (preview or Talk) and a quick benchmark; the largest
            must stay within ZeroGPU's per-call maximum and a visitor's daily quota.
    """

    data_root: Path = field(default_factory=lambda: Path.home() / ".cache" / "instag-app")
    preset: str = field(default_factory=default_preset)
    prior: str = DEFAULT_PRIOR
    prior_repo: str | None = None
    prior_filename: str = f"{DEFAULT_PRIOR}.safetensors"
    prior_revision: str | None = None
    allow_download: bool = False
    max_upload_mb: int = 200
    min_clip_s: float = 4.0
    max_clip_s: float = 60.0
    max_audio_s: float = 120.0
    preview_s: float = 3.0
    expiry_hours: float = 24.0
    concurrency: int = 1
    max_queue: int = 20
    max_waiting: int = 2
    max_avatars: int = 5
    sweep_minutes: float = 10.0
    delete_wait_s: float = 60.0
    max_refines: int = 1
    gpu_adapt_s: int = 120
    gpu_render_s: int = 60
    gpu_bench_s: int = 120

    @classmethod
    def from_env(cls, **overrides) -> AppConfig:
        """Defaults, then ``INSTAG_*`` environment variables, then ``overrides``."""
        env = os.environ
        kw: dict = {}
        if env.get("INSTAG_APP_DATA"):
            kw["data_root"] = Path(env["INSTAG_APP_DATA"]).expanduser()
        if env.get("INSTAG_PRESET"):
            kw["preset"] = env["INSTAG_PRESET"]
        if env.get("INSTAG_PRIOR"):
            kw["prior"] = env["INSTAG_PRIOR"]
        if env.get("INSTAG_PRIOR_REPO"):
            kw["prior_repo"] = env["INSTAG_PRIOR_REPO"]
        if env.get("INSTAG_PRIOR_FILENAME"):
            kw["prior_filename"] = env["INSTAG_PRIOR_FILENAME"]
        if env.get("INSTAG_PRIOR_REVISION"):
            kw["prior_revision"] = env["INSTAG_PRIOR_REVISION"]
        kw["allow_download"] = _env_bool("INSTAG_ALLOW_DOWNLOAD", False)
        kw["max_upload_mb"] = int(_env_float("INSTAG_MAX_UPLOAD_MB", cls.max_upload_mb))
        kw["max_clip_s"] = _env_float("INSTAG_MAX_CLIP_S", cls.max_clip_s)
        kw["max_audio_s"] = _env_float("INSTAG_MAX_AUDIO_S", cls.max_audio_s)
        kw["expiry_hours"] = _env_float("INSTAG_EXPIRY_HOURS", cls.expiry_hours)
        kw["concurrency"] = int(_env_float("INSTAG_CONCURRENCY", cls.concurrency))
        kw["max_waiting"] = int(_env_float("INSTAG_MAX_WAITING", cls.max_waiting))
        kw["max_refines"] = int(_env_float("INSTAG_MAX_REFINES", cls.max_refines))
        kw.update(overrides)
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse impossible settings early (at start-up, not in the middle of a job)."""
        presets = app_presets()
        if self.preset not in presets:
            raise ValueError(f"unknown preset {self.preset!r}; one of {sorted(presets)}")
        if not 0 < self.min_clip_s < self.max_clip_s:
            raise ValueError("need 0 < min_clip_s < max_clip_s")
        if self.concurrency < 1 or self.expiry_hours <= 0 or self.max_waiting < 1:
            raise ValueError("concurrency and max_waiting must be >= 1 and expiry_hours > 0")
        if max(self.gpu_adapt_s, self.gpu_render_s, self.gpu_bench_s) > ZERO_GPU_MAX_S:
            raise ValueError(f"GPU durations above {ZERO_GPU_MAX_S} s are refused by ZeroGPU")

    @property
    def expiry_s(self) -> float:
        return self.expiry_hours * 3600.0
