"""App settings (:class:`AppConfig`), read from the environment with offline defaults, and
the adaptation presets the app offers (:func:`app_presets`)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
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
#: What the device check (``python -m bench.gpu_check`` on a GPU) measured; the app's GPU
#: call durations are computed from it when it holds a CUDA run.
GPU_CHECK = ROOT / "docs" / "results" / "gpu_check.json"
#: Durations used while no GPU measurement exists (s): estimates, not measured.
GPU_ESTIMATES = {"adapt": 120, "render": 60, "bench": 120}
#: Margin on a measured duration: ``factor x measured + seconds``.
GPU_MARGIN = (1.3, 15.0)


def gpu_durations(check: Path = GPU_CHECK, max_audio_s: float = 120.0,
                  preview_s: float = 3.0) -> tuple[dict[str, int], str]:
    """GPU seconds to ask per call for adaptation (the ``zerogpu`` preset plus the preview),
    one Talk render of ``max_audio_s`` and a quick benchmark, and where they come from.

    From a CUDA run of the device check: adaptation = its measured ``zerogpu`` wall time
    (setup, every step, saving) plus the preview's frames at its 512² frame rate; a render =
    ``max_audio_s`` of frames at that rate plus the front end; the quick benchmark = one
    tiny adaptation and renders, bounded by the adaptation's; each times
    :data:`GPU_MARGIN`, capped at :data:`ZERO_GPU_MAX_S`. Without one:
    :data:`GPU_ESTIMATES` and the source ``'estimate'``.
    """
    import json

    try:
        r = json.loads(Path(check).read_text())
        if r.get("quick") or not str(r.get("device", "")).startswith("cuda"):
            raise ValueError("not a GPU run")
        fps = float(r["render"]["fps_512"])
        adapt_s = float(r["adapt"]["wall_s"]) + preview_s * 25 / fps
        render_s = max_audio_s * 25 / fps + float(r["render"]["front_end_s"]) * max_audio_s / 8
    except (OSError, ValueError, KeyError, TypeError):
        return dict(GPU_ESTIMATES), "estimate"
    a, b = GPU_MARGIN

    def margin(x: float) -> int:
        return int(min(ZERO_GPU_MAX_S, math.ceil(a * x + b)))

    return ({"adapt": margin(adapt_s), "render": margin(render_s), "bench": margin(adapt_s)},
            f"measured on {r['devices'][-1]} ({r['created'][:10]})")


def app_presets() -> dict[str, AdaptConfig]:
    """The adaptation presets the app offers: ``core.adapt.PRESETS`` (which holds
    :data:`ZERO_GPU_PRESET`)."""
    from core.train.adapt import PRESETS

    return dict(PRESETS)


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
            for adaptation, one render (preview or Talk) and a quick benchmark, computed by
            :func:`gpu_durations` (from the device check's measurements where they exist);
            the largest must stay within ZeroGPU's per-call maximum and a visitor's daily
            quota.
        device: where adaptation, rendering and the benchmark run (env ``INSTAG_DEVICE``:
            ``auto``, ``cpu``, ``cuda``, ``cuda:N``); inside a ZeroGPU call ``auto`` is the
            GPU the call was given, and results come back to the CPU.
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
    gpu_adapt_s: int = field(default_factory=lambda: gpu_durations()[0]["adapt"])
    gpu_render_s: int = field(default_factory=lambda: gpu_durations()[0]["render"])
    gpu_bench_s: int = field(default_factory=lambda: gpu_durations()[0]["bench"])
    device: str = "auto"

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
        if env.get("INSTAG_DEVICE"):
            kw["device"] = env["INSTAG_DEVICE"]
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
        if self.device != "auto" and not on_zero_gpu():
            from core.device import resolve_device

            resolve_device(self.device)   # a GPU named here must exist (InputError otherwise)

    @property
    def expiry_s(self) -> float:
        return self.expiry_hours * 3600.0
