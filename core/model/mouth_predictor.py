"""Audio -> mouth code: the audio-to-mouth prior.

A small temporal convolution network maps the 50 Hz audio front-end features (log-mel with
per-utterance normalisation, and/or the phonetic features of :mod:`core.data.phones`) to the
per-person normalised mouth code of :mod:`core.data.mouth_code` (aperture, width, protrusion,
jaw), one row per video frame. It is trained on landmarks, not renders, so it sees every
pre-training clip for many epochs on a CPU (:mod:`core.train.mouth_prior`); it plays the role
of the paper's audio-visual encoder option: the deformation fields learn *how this person's
lips move for a given code* from a few seconds of video, while *which code goes with which
sound* comes from many speakers.

Network (``hidden`` = 32, about 25k parameters with mel + phones):
``Conv1d(D, h, 5)`` -> LeakyReLU -> ``Conv1d(h, h, 5, dilation 2)`` -> LeakyReLU ->
``Conv1d(h, h, 5, dilation 4)`` -> LeakyReLU -> ``Conv1d(h, 4, 1)``, lengths kept (edge
padding), receptive field +-14 steps (+-280 ms: lips anticipate and follow the sound). The
50 Hz output is averaged over each frame's two steps (``2i, 2i+1``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from core.data.mouth_code import MOUTH_CODE_DIM

INPUT_KINDS = ("mel", "phones", "mel+phones")
MEL_DIM = 80
PHONE_DIM = 14
CHECKPOINT_KIND = "mouth-prior"


@dataclass(frozen=True)
class MouthPredictorConfig:
    """Architecture of :class:`MouthPredictor`.

    Attributes:
        inputs: ``'mel'`` (80-d log-mel), ``'phones'`` (14-d phonetic features) or
            ``'mel+phones'`` (94-d, the default).
        hidden: channels of the three temporal convolutions (32).
        kernel: kernel size of the convolutions (5); dilations 1, 2, 4.
        leaky_slope: LeakyReLU negative slope (0.1).
    """

    inputs: str = "mel+phones"
    hidden: int = 32
    kernel: int = 5
    leaky_slope: float = 0.1

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {self.inputs!r}")

    @property
    def in_dim(self) -> int:
        return {"mel": MEL_DIM, "phones": PHONE_DIM, "mel+phones": MEL_DIM + PHONE_DIM}[self.inputs]


def audio_front_end(audio: np.ndarray | Tensor, inputs: str = "mel+phones",
                    decode_samples: int | None = None) -> Tensor:
    """``(S, D)`` float32 predictor input for 16 kHz mono audio, ``S = ceil(N / 320)``.

    ``decode_samples``: only the steps of the first this many samples, their phones decoded
    from those samples alone (:func:`core.data.phones.phone_features`); the log-mel and
    loudness are those of the whole audio (cheap, normalised over all of it)."""
    from core.data.audio import AudioFeatureConfig, log_mel_steps
    from core.data.phones import phone_features

    parts = []
    if "mel" in inputs:
        parts.append(log_mel_steps(audio, AudioFeatureConfig(kind="mel")))
    if "phones" in inputs:
        parts.append(phone_features(audio, decode_samples=decode_samples))
    if decode_samples is not None:
        S = -(-max(0, decode_samples) // 320)
        parts = [p[:S] for p in parts]
    return torch.cat(parts, 1).float()


class MouthPredictor(nn.Module):
    """forward(steps (B, S, D)) -> (B, S, 4) mouth code at 50 Hz;
    :meth:`frames` gives (T, 4) per video frame."""

    def __init__(self, config: MouthPredictorConfig = MouthPredictorConfig()) -> None:
        super().__init__()
        self.config = c = config
        self.convs = nn.ModuleList([
            nn.Conv1d(c.in_dim, c.hidden, c.kernel),
            nn.Conv1d(c.hidden, c.hidden, c.kernel, dilation=2),
            nn.Conv1d(c.hidden, c.hidden, c.kernel, dilation=4),
        ])
        self.out = nn.Conv1d(c.hidden, MOUTH_CODE_DIM, 1)

    def hidden(self, steps: Tensor) -> Tensor:
        """(B, S, D) steps -> (B, S, hidden) activations the last layer reads."""
        h = steps.transpose(1, 2)                                  # (B, D, S)
        for conv, d in zip(self.convs, (1, 2, 4)):
            p = d * (self.config.kernel - 1) // 2
            h = F.leaky_relu(conv(F.pad(h, (p, p), mode="replicate")), self.config.leaky_slope)
        return h.transpose(1, 2)

    def forward(self, steps: Tensor) -> Tensor:
        return self.out(self.hidden(steps).transpose(1, 2)).transpose(1, 2)  # (B, S, 4)

    def readout_weights(self) -> Tensor:
        """(4, hidden + 1) the last layer as one matrix: weights, then the bias column."""
        return torch.cat([self.out.weight[:, :, 0], self.out.bias[:, None]], 1).detach()

    @torch.no_grad()
    def frames(self, steps: Tensor, num_frames: int) -> Tensor:
        """(S, D) steps of one utterance -> (num_frames, 4) code per video frame (steps
        ``2i, 2i+1`` averaged; audio shorter than the video repeats its last step)."""
        return to_frames(self(steps[None].float())[0], num_frames)


def to_frames(step_codes: Tensor, num_frames: int) -> Tensor:
    """(S, C) 50 Hz rows -> (num_frames, C): mean of steps ``2i`` and ``2i+1`` (clamped)."""
    idx = (torch.arange(num_frames)[:, None] * 2 + torch.arange(2)[None]).clamp(max=step_codes.shape[0] - 1)
    return step_codes[idx].mean(1)


def save_predictor(path: str | Path, model: MouthPredictor, meta: dict) -> Path:
    """Write the predictor with the project's checkpoint format (kind ``mouth-prior``)."""
    from core.model.checkpoint import module_tensors, save

    return save(path, module_tensors(model, "predictor."),
                {"kind": CHECKPOINT_KIND, "config": asdict(model.config), **meta})


def load_predictor(path: str | Path | None = None) -> tuple[MouthPredictor, dict]:
    """Load a mouth prior: a .safetensors path, a ``weights/manifest.json`` name, or None for
    the shipped one (``mouth_prior``, sha256-checked by :func:`core.weights.resolve_prior`).

    Raises InputError ('corrupt' / 'wrong_weights') naming the problem and the fix.
    """
    from core.model.checkpoint import load
    from core.weights import DEFAULT_MOUTH_PRIOR, resolve_prior

    p = resolve_prior(DEFAULT_MOUTH_PRIOR if path is None else path, section="mouth_priors")
    tensors, meta = load(p, kind=CHECKPOINT_KIND)
    model = MouthPredictor(MouthPredictorConfig(**meta["config"]))
    model.load_state_dict({k[len("predictor."):]: v for k, v in tensors.items()
                           if k.startswith("predictor.")})
    model.eval()
    return model, meta


__all__ = ["CHECKPOINT_KIND", "INPUT_KINDS", "MouthPredictor", "MouthPredictorConfig",
           "audio_front_end", "load_predictor", "save_predictor", "to_frames"]
