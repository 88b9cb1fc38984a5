"""Audio features of every kind, on the project's 50 Hz step grid (:mod:`core.data.audio`).

Kinds (:data:`core.data.audio.KINDS`): ``mel`` (log-mel, :func:`core.data.audio.log_mel_steps`),
``phones`` (the speaker-independent phonetic front end of :mod:`core.data.phones`:
pocketsphinx allphone decoding -> 9 mouth-shape posteriors, 4 band loudnesses and the overall
loudness, 14-d), ``mel+phones`` (both side by side, 80 + 14) and ``hubert``
(:func:`core.data.audio.hubert_steps`). The first three need no weights.

:func:`feature_spec` / :func:`feature_config` turn a config into the spec stored with clips and
checkpoints and back; :func:`feature_steps` gives the (S, D) step sequence and
:func:`audio_features` the per-frame windows.
"""
from __future__ import annotations

import numpy as np
import torch

from core.data.audio import (AudioFeatureConfig, AudioFeatureSpec, hubert_model_name, frame_windows,
                             hubert_steps, log_mel_steps, resolve_hubert_dir)
from core.data.phones import FEATURE_DIM, phone_features


def feature_spec(cfg: AudioFeatureConfig) -> AudioFeatureSpec:
    """The spec of ``cfg`` (loads the HuBERT config, not its weights, for the dim)."""
    if cfg.kind != "hubert":
        dim = {"mel": cfg.n_mels, "phones": FEATURE_DIM, "mel+phones": cfg.n_mels + FEATURE_DIM}
        return AudioFeatureSpec(cfg.kind, dim[cfg.kind], None, None, cfg.window)
    from transformers import HubertConfig
    folder = resolve_hubert_dir(cfg)
    dim = HubertConfig.from_pretrained(folder).hidden_size
    return AudioFeatureSpec("hubert", int(dim), hubert_model_name(cfg), cfg.hubert_revision, cfg.window)


def feature_config(spec: AudioFeatureSpec, allow_download: bool = False) -> AudioFeatureConfig:
    """The feature config that reproduces features of ``spec`` (an avatar's, a processed clip's)."""
    if spec.kind != "hubert":
        n_mels = {"mel": spec.dim, "phones": AudioFeatureConfig.n_mels,
                  "mel+phones": spec.dim - FEATURE_DIM}[spec.kind]
        return AudioFeatureConfig(kind=spec.kind, n_mels=n_mels, window=spec.window)
    return AudioFeatureConfig(kind="hubert", hubert_model=spec.model or AudioFeatureConfig.hubert_model,
                              hubert_revision=spec.revision, allow_download=allow_download,
                              window=spec.window)


def feature_steps(audio: np.ndarray | torch.Tensor, cfg: AudioFeatureConfig) -> torch.Tensor:
    """Raw 50 Hz feature sequence ``(S, D)`` float32 for 16 kHz mono ``audio``."""
    if cfg.kind == "hubert":
        return hubert_steps(audio, cfg)
    parts = []
    if "mel" in cfg.kind:
        parts.append(log_mel_steps(audio, cfg))
    if "phones" in cfg.kind:
        parts.append(phone_features(audio))
    if len(parts) == 1:
        return parts[0]
    n = min(p.shape[0] for p in parts)   # both use S = ceil(N / 320); guard anyway
    return torch.cat([p[:n] for p in parts], 1)


def audio_features(audio: np.ndarray | torch.Tensor, num_frames: int,
                   cfg: AudioFeatureConfig | None = None) -> torch.Tensor:
    """Per-video-frame feature windows ``(num_frames, cfg.window, D)`` float32.

    Args:
        audio: ``(N,)`` float32 mono at 16 kHz (normally ``N = 640 * num_frames``).
        num_frames: video frames T at 25 fps.
        cfg: feature config (default: log-mel).
    """
    cfg = cfg or AudioFeatureConfig()
    return frame_windows(feature_steps(audio, cfg), num_frames, cfg.window)


__all__ = ["audio_features", "feature_config", "feature_spec", "feature_steps"]
