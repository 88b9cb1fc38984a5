"""Per-frame audio features (log-mel, phonetic, or HuBERT) on the project's 50 Hz step grid.

Grid (core conventions): audio is 16 kHz mono; feature step ``m`` covers samples
``[320*m, 320*(m+1))`` (20 ms), so a clip of ``N`` samples has ``S = ceil(N / 320)``
steps and video frame ``i`` (25 fps) spans steps ``2i, 2i+1``. The per-frame window is
the 16 steps ``[2i-7, 2i+9)``, indices clamped to ``[0, S-1]`` (edge padding).

``mel`` (default, no weights): 80-bin log-mel, Slaney mel scale with Slaney area
normalisation (the librosa / Whisper filterbank; its 0-1 kHz linear part keeps the low
filters wider than the 31.25 Hz FFT bin spacing, so none is empty), 25 ms Hann window,
10 ms hop, n_fft 512. The waveform is first scaled to a fixed RMS level (-26 dBFS) so
the absolute ``1e-6`` log floor sits at the same depth below the speech for loud and
quiet recordings (otherwise a 20 dB quieter take pushes its soft bins into the floor and
the features change). STFT frames are centred at ``160*k + 80`` so that 100 Hz frames
``2m, 2m+1`` sit inside step ``m``; they are averaged (power domain) to 50 Hz, then
``log(mel + 1e-6)``, then per-utterance per-bin mean/variance normalisation: the
avatar is trained on one recording and driven by others (other microphones, rooms,
gain), so removing each bin's recording-level offset and scale makes the features
describe *what* is said rather than *how it was recorded*.

``phones`` / ``mel+phones``: the phonetic front end (:mod:`core.data.phones`), alone or
beside log-mel; :mod:`core.data.features` turns any kind into features.

``hubert``: transformers ``HubertModel`` last hidden layer (1024-d for
``facebook/hubert-large-ls960-ft``), 320-sample stride = 50 Hz. Weights come from a
local directory or the Hugging Face cache; nothing is downloaded unless
``allow_download=True``. Long audio runs in overlapping chunks to bound memory.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import InputError

SAMPLES_PER_STEP = 320  # 20 ms at 16 kHz
STEPS_PER_FRAME = 2     # 25 fps video
#: Feature kinds: the three offline ones need no weights; HuBERT needs its model.
KINDS: tuple[str, ...] = ("mel", "phones", "mel+phones", "hubert")


@dataclass(frozen=True)
class AudioFeatureConfig:
    """How to turn 16 kHz mono audio into 50 Hz feature steps.

    Attributes:
        kind: ``'mel'`` (log-mel, no weights), ``'phones'`` (phonetic front end, no weights),
            ``'mel+phones'`` (both) or ``'hubert'``.
        sample_rate: input rate in Hz (16000; the grid assumes it).
        n_mels: mel bins (80). ``fmin`` / ``fmax``: filterbank range in Hz (0, 8000).
        win_length: STFT window in samples (400 = 25 ms). ``hop``: 160 (10 ms).
        n_fft: FFT size (512).
        target_rms: the waveform is scaled to this RMS before the STFT (0.05 =
            -26 dBFS; None = keep the recorded level). Digital silence stays silent.
        log_floor: added before the log, ``log(mel + log_floor)`` (1e-6).
        normalize: per-utterance per-bin mean/variance normalisation of log-mel (True).
        hubert_model: local directory or Hugging Face hub id.
        hubert_revision: pinned hub revision (commit hash / tag) or None (main).
        allow_download: let huggingface_hub download missing weights (False).
        cache_dir: Hugging Face cache directory (None = the default HF_HUB_CACHE).
        hubert_normalize: zero-mean/unit-variance input (None = from the model's
            preprocessor_config.json, True if it has none).
        chunk_s: HuBERT chunk length in seconds (20); ``context_s``: extra context on
            each side of a chunk (2 s), discarded after the model.
        device: torch device for HuBERT ('cpu').
        window: steps per video frame window (16).
    """

    kind: str = "mel"
    sample_rate: int = 16000
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    win_length: int = 400
    hop: int = 160
    n_fft: int = 512
    target_rms: float | None = 0.05
    log_floor: float = 1e-6
    normalize: bool = True
    hubert_model: str = "facebook/hubert-large-ls960-ft"
    hubert_revision: str | None = None
    allow_download: bool = False
    cache_dir: str | None = None
    hubert_normalize: bool | None = None
    chunk_s: float = 20.0
    context_s: float = 2.0
    device: str = "cpu"
    window: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.sample_rate != 16000:
            raise ValueError("audio features assume 16 kHz audio (core conventions)")
        if "mel" in self.kind and 2 * self.hop != SAMPLES_PER_STEP:
            raise ValueError(f"mel hop must be {SAMPLES_PER_STEP // 2} samples (10 ms)")


@dataclass(frozen=True)
class AudioFeatureSpec:
    """What a checkpoint's audio features were: refuse to mix different kinds.

    Attributes:
        kind: one of :data:`KINDS`; dim: feature size D; model: hub id or local folder
        name (None for mel); revision: hub revision or None; window: steps per frame.
    """

    kind: str
    dim: int
    model: str | None = None
    revision: str | None = None
    window: int = 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioFeatureSpec:
        return cls(**{k: d[k] for k in ("kind", "dim", "model", "revision", "window") if k in d})

    def check_matches(self, other: AudioFeatureSpec) -> None:
        """Raise InputError('wrong_weights') unless ``other`` gives the same features."""
        if (self.kind, self.dim, self.window, self.model) != (
                other.kind, other.dim, other.window, other.model):
            raise InputError(
                "wrong_weights",
                f"Audio features differ: the checkpoint uses {self.describe()}, "
                f"but {other.describe()} was requested.",
                f"Use audio features of kind '{self.kind}'"
                + (f" with model {self.model}" if self.model else "")
                + ", or retrain with the new feature type.")

    def describe(self) -> str:
        m = f" ({self.model}{'@' + self.revision if self.revision else ''})" if self.model else ""
        return f"{self.kind}{m}, {self.dim}-d, {self.window}-step windows"


def num_steps(num_samples: int) -> int:
    """50 Hz steps for ``num_samples`` at 16 kHz: ``ceil(N / 320)``."""
    return math.ceil(num_samples / SAMPLES_PER_STEP)


# ----------------------------------------------------------------------------- mel
def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear (3 mel per 200 Hz) below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3.0
    logstep = math.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, mel)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3.0
    logstep = math.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), f_sp * m)


def mel_centers(cfg: AudioFeatureConfig) -> np.ndarray:
    """``(n_mels,)`` centre frequency of each mel filter in Hz."""
    pts = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    return pts[1:-1]


def mel_filterbank(cfg: AudioFeatureConfig) -> torch.Tensor:
    """``(n_fft//2 + 1, n_mels)`` triangular filters, Slaney area-normalised."""
    freqs = np.linspace(0.0, cfg.sample_rate / 2.0, cfg.n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(up, down))            # (n_mels, n_freq)
    tri *= (2.0 / (hi - lo))                               # equal area per filter
    if np.any(tri.sum(axis=1) == 0):
        raise ValueError("mel filterbank has empty filters: lower n_mels or raise n_fft")
    return torch.from_numpy(tri.T.astype(np.float32))


_FB_CACHE: dict[tuple, torch.Tensor] = {}


def log_mel_steps(audio: np.ndarray | torch.Tensor, cfg: AudioFeatureConfig) -> torch.Tensor:
    """``(S, n_mels)`` float32 log-mel at 50 Hz, ``S = ceil(N / 320)``: level-scaled
    waveform -> power STFT -> Slaney mel -> pair-average to 50 Hz -> ``log(mel + 1e-6)``
    -> per-bin mean/variance normalisation over the utterance (``cfg.normalize``)."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1)
    S = num_steps(x.shape[0])
    if S == 0:
        return torch.zeros(0, cfg.n_mels)
    if cfg.target_rms is not None:
        rms = float(torch.sqrt(torch.mean(x.double() ** 2)))
        if rms > 1e-8:
            x = x * (cfg.target_rms / rms)
    K = 2 * S                                   # 100 Hz frames, centred at 160k + 80
    left = cfg.n_fft // 2 - cfg.hop // 2
    right = cfg.hop * (K - 1) + cfg.n_fft - left - x.shape[0]
    mode = "reflect" if max(left, right) < x.shape[0] else "constant"
    xp = torch.nn.functional.pad(x[None, None], (left, max(right, 0)), mode=mode)[0, 0]
    key = (cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.fmin, cfg.fmax, cfg.win_length)
    if key not in _FB_CACHE:
        _FB_CACHE[key] = mel_filterbank(cfg)
    fb = _FB_CACHE[key]
    win = torch.hann_window(cfg.win_length, periodic=True)
    spec = torch.stft(xp, n_fft=cfg.n_fft, hop_length=cfg.hop, win_length=cfg.win_length,
                      window=win, center=False, return_complex=True)  # (F, >=K)
    power = spec[:, :K].abs().pow(2).T                                  # (K, F)
    mel = power @ fb                                                    # (K, n_mels)
    mel = mel.reshape(S, 2, cfg.n_mels).mean(dim=1)                     # 50 Hz
    feat = torch.log(mel + cfg.log_floor)
    if cfg.normalize:
        mu = feat.mean(dim=0, keepdim=True)
        sd = feat.std(dim=0, unbiased=False, keepdim=True)
        feat = (feat - mu) / (sd + 1e-5)
    return feat.float().contiguous()


# ----------------------------------------------------------------------------- hubert
def hubert_model_name(cfg: AudioFeatureConfig) -> str:
    """Hub id for the spec: the id itself, the id of an HF-cache snapshot folder
    (``.../models--org--name/snapshots/<rev>``), else the local folder's name."""
    p = Path(cfg.hubert_model).expanduser()
    if not p.is_dir():
        return cfg.hubert_model
    p = p.resolve()
    for part in (p, *p.parents):
        if part.name.startswith("models--"):
            return part.name[len("models--"):].replace("--", "/")
    return p.name


def resolve_hubert_dir(cfg: AudioFeatureConfig) -> Path:
    """Local folder holding the HuBERT config + weights (a path, or the HF cache).

    Raises:
        InputError('wrong_weights'): not found locally and downloads not allowed (or
            the download failed); the message names the hub id, the cache folder and
            how to provide the weights.
    """
    p = Path(cfg.hubert_model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError("wrong_weights", f"{p} has no config.json: not a HuBERT model folder.",
                             "Pass a folder saved with save_pretrained() or a hub id.")
        return p
    from huggingface_hub import constants, snapshot_download
    cache = cfg.cache_dir or constants.HF_HUB_CACHE
    try:
        return Path(snapshot_download(
            repo_id=cfg.hubert_model, revision=cfg.hubert_revision, cache_dir=cfg.cache_dir,
            local_files_only=not cfg.allow_download,
            allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))
    except Exception as exc:
        rev = f" (revision {cfg.hubert_revision})" if cfg.hubert_revision else ""
        how = ("downloading was allowed but failed: check the network and the id"
               if cfg.allow_download else "downloads are off (allow_download=False)")
        raise InputError(
            "wrong_weights",
            f"HuBERT weights '{cfg.hubert_model}'{rev} are not in the local cache {cache}; "
            f"{how} [{exc.__class__.__name__}].",
            f"On a networked machine run `huggingface-cli download {cfg.hubert_model}` "
            "(and copy the cache folder here), or pass a local folder as hubert_model, "
            "or set allow_download=True; or use kind='mel', which needs no weights.") from exc


_MODEL_CACHE: dict[tuple, tuple[Any, bool]] = {}


def load_hubert(cfg: AudioFeatureConfig) -> tuple[Any, bool]:
    """(HubertModel in eval mode on cfg.device, input-normalisation flag); cached."""
    folder = resolve_hubert_dir(cfg)
    key = (str(folder), cfg.device, cfg.hubert_normalize)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    from transformers import HubertModel
    try:
        model = HubertModel.from_pretrained(str(folder)).to(cfg.device).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise InputError("wrong_weights", f"Cannot load HuBERT weights from {folder}: {exc}",
                         "Provide a complete HuBERT model folder (config.json + weights).") from exc
    norm = cfg.hubert_normalize
    if norm is None:
        pre = folder / "preprocessor_config.json"
        norm = bool(json.loads(pre.read_text()).get("do_normalize", True)) if pre.is_file() \
            else True
    _MODEL_CACHE[key] = (model, norm)
    return model, norm


@torch.no_grad()
def hubert_steps(audio: np.ndarray | torch.Tensor, cfg: AudioFeatureConfig) -> torch.Tensor:
    """``(S, D)`` float32 HuBERT last hidden layer at 50 Hz, ``S = ceil(N / 320)``.

    The signal is zero-padded so step ``m`` is the model frame whose receptive field
    starts at sample ``320*m`` (400 samples). Audio longer than ``chunk_s`` is cut into
    step-aligned chunks with ``context_s`` of extra audio each side; only the chunk's
    own steps are kept.
    """
    model, norm = load_hubert(cfg)
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1)
    S = num_steps(x.shape[0])
    if S == 0:
        return torch.zeros(0, model.config.hidden_size)
    if norm:
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    total = SAMPLES_PER_STEP * (S - 1) + 400
    x = torch.nn.functional.pad(x, (0, max(0, total - x.shape[0])))
    chunk = max(1, round(cfg.chunk_s * 50))
    ctx = max(0, round(cfg.context_s * 50))
    out = []
    for m0 in range(0, S, chunk):
        m1 = min(S, m0 + chunk)
        a0, a1 = max(0, m0 - ctx), min(S, m1 + ctx)       # steps given to the model
        seg = x[SAMPLES_PER_STEP * a0: SAMPLES_PER_STEP * (a1 - 1) + 400]
        h = model(seg[None].to(cfg.device)).last_hidden_state[0]  # (a1 - a0, D)
        if h.shape[0] < a1 - a0:  # should not happen; keep the grid regardless
            h = torch.cat([h, h[-1:].expand(a1 - a0 - h.shape[0], -1)])
        out.append(h[m0 - a0: m1 - a0].float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- public
def frame_windows(steps: torch.Tensor, num_frames: int, window: int = 16) -> torch.Tensor:
    """``(S, D)`` steps -> ``(num_frames, window, D)``: frame ``i`` gets steps
    ``[2i - 7, 2i + 9)`` (for window 16; generally ``[2i - (window//2 - 1), ...)``),
    clamped to ``[0, S-1]`` (edge padding; also pads audio shorter than the video)."""
    if steps.shape[0] == 0:
        raise InputError("too_short", "The audio is empty.", "Use audio with speech in it.")
    start = torch.arange(num_frames) * STEPS_PER_FRAME - (window // 2 - 1)
    idx = (start[:, None] + torch.arange(window)[None, :]).clamp(0, steps.shape[0] - 1)
    return steps[idx]


__all__ = [
    "AudioFeatureConfig",
    "AudioFeatureSpec",
    "KINDS",
    "frame_windows",
    "hubert_model_name",
    "hubert_steps",
    "hz_to_mel",
    "load_hubert",
    "log_mel_steps",
    "mel_centers",
    "mel_filterbank",
    "mel_to_hz",
    "num_steps",
    "resolve_hubert_dir",
]
