"""Speaker-independent audio front end: phone segments -> mouth-shape posteriors + loudness.

Log-mel features carry the speaker's voice and the recording channel; what moves the lips is
*which speech sound* is made and *how loud*. This module turns 16 kHz mono audio into per-step
features on the project's 50 Hz grid (step ``m`` covers samples ``[320 m, 320 (m + 1))``):

1. **Phones.** pocketsphinx (the CMU en-us acoustic model and phone language model shipped in its
   PyPI wheel) decodes the audio in *allphone* mode (no words, no dictionary), giving phone
   segments at 100 Hz. On other languages the English phone set acts as a phonetic
   approximation (a speech-sound quantiser); on music or noise it yields mostly silence/filler
   phones, which map to the rest shape.
2. **Mouth shapes.** Each phone maps to one of :data:`VISEMES`, the nine mouth-shape classes of
   Rhubarb Lip Sync's vocabulary (closed for M/B/P, clenched teeth for most consonants, open and
   wide-open vowels, rounded, puckered, lip-on-teeth F/V, tongue-up L, and rest). One-hot at
   100 Hz -> averaged to 50 Hz -> Gaussian-smoothed in time (``smooth_steps``) and renormalised:
   soft posteriors that change smoothly across phone boundaries (lips anticipate and lag).
3. **Loudness.** log power in :data:`BANDS_HZ` bands plus the overall level, per step, each
   normalised per utterance to ``[p_lo, p_hi] -> [0, 1]`` (speaker, microphone and gain removed;
   silence near 0, the loud part of speech near 1).

Output: ``(S, 14)`` float32, columns :data:`FEATURE_NAMES` (9 posteriors, 4 bands, loudness).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import InputError

#: Mouth-shape classes (Rhubarb Lip Sync's letters in brackets).
VISEMES: tuple[str, ...] = (
    "rest",        # [X] silence, pauses, non-speech
    "closed",      # [A] M B P: lips pressed together
    "clenched",    # [B] most consonants, EE: slightly open, teeth together
    "open",        # [C] EH AE AH EY: open mouth
    "wide",        # [D] AA AY AW: wide open
    "rounded",     # [E] AO ER R OY: slightly rounded
    "puckered",    # [F] UW OW W: puckered lips
    "lip_teeth",   # [G] F V: upper teeth on lower lip
    "tongue",      # [H] L: tongue raised, mouth slightly open
)

#: CMU (ARPAbet) phone -> viseme. Anything not listed (SIL, +NSN+, +SPN+, +BREATH+ ...) is rest.
PHONE_TO_VISEME: dict[str, str] = {
    **{p: "closed" for p in ("M", "B", "P")},
    **{p: "clenched" for p in ("K", "G", "T", "D", "N", "NG", "S", "Z", "SH", "ZH", "CH", "JH",
                               "TH", "DH", "Y", "HH", "IY", "IH")},
    **{p: "open" for p in ("EH", "AE", "AH", "EY", "UH")},
    **{p: "wide" for p in ("AA", "AY", "AW")},
    **{p: "rounded" for p in ("AO", "ER", "R", "OY")},
    **{p: "puckered" for p in ("UW", "OW", "W")},
    **{p: "lip_teeth" for p in ("F", "V")},
    "L": "tongue",
}

#: Loudness bands in Hz (low voicing, first formant, second formant, frication).
BANDS_HZ: tuple[tuple[float, float], ...] = ((0, 500), (500, 1500), (1500, 3000), (3000, 8000))

FEATURE_NAMES: tuple[str, ...] = tuple(f"p_{v}" for v in VISEMES) + tuple(
    f"band_{int(lo)}_{int(hi)}" for lo, hi in BANDS_HZ) + ("loudness",)
FEATURE_DIM = len(FEATURE_NAMES)   # 14


@dataclass(frozen=True)
class PhoneConfig:
    """Settings of :func:`phone_features`.

    Attributes:
        lw, pip, beam, pbeam: pocketsphinx allphone decoding (language weight 2.0, phone
            insertion penalty 0.3, beams 1e-200 / 1e-20: the settings of pocketsphinx's own
            allphone test).
        smooth_steps: Gaussian sigma of the posterior smoothing, in 50 Hz steps (1.5 = 30 ms).
        lo_percentile, hi_percentile: per-utterance loudness range mapped to [0, 1] (10, 95).
        min_range: floor of that range in natural-log units (1.5 ~ 6.5 dB), so near-constant
            audio (silence, a hum) is not blown up to full scale.
        gate_lo, gate_hi: speech gate on the normalised overall loudness: below ``gate_lo``
            a step is rest whatever the decoder said, above ``gate_hi`` the decoded shape is
            kept, linear in between (0.08, 0.25).
    """

    lw: float = 2.0
    pip: float = 0.3
    beam: float = 1e-200
    pbeam: float = 1e-20
    smooth_steps: float = 1.5
    lo_percentile: float = 10.0
    hi_percentile: float = 95.0
    min_range: float = 1.5
    gate_lo: float = 0.08
    gate_hi: float = 0.25


@dataclass(frozen=True)
class PhoneSegment:
    """One decoded phone: ``phone`` (ARPAbet or a filler such as 'SIL'), ``start`` / ``end``
    in 100 Hz frames (10 ms), end inclusive as pocketsphinx reports it."""

    phone: str
    start: int
    end: int


@functools.lru_cache(maxsize=1)
def _decoder_args(lw: float, pip: float, beam: float, pbeam: float) -> dict:
    try:
        import pocketsphinx
    except ImportError as e:  # pragma: no cover - pinned in requirements
        raise InputError("missing_dependency", "pocketsphinx is not installed.",
                         "pip install -r requirements.txt (it pins pocketsphinx).") from e
    mp = pocketsphinx.get_model_path()
    hmm, plm = os.path.join(mp, "en-us", "en-us"), os.path.join(mp, "en-us", "en-us-phone.lm.bin")
    if not (os.path.isdir(hmm) and os.path.isfile(plm)):
        raise InputError("missing_weights", f"pocketsphinx's bundled en-us model is missing under {mp}.",
                         "Reinstall pocketsphinx from PyPI (its wheel ships the model).")
    return dict(hmm=hmm, allphone=plm, lw=lw, pip=pip, beam=beam, pbeam=pbeam,
                samprate=16000, loglevel="FATAL", lm=None, dict=None)


#: environment variable naming a folder of cached decodes (one JSON file per audio and decoder
#: setting, keyed by their sha256): a machine without pocketsphinx (a GPU machine for the
#: device check) reads decodes made elsewhere; unset = no cache
PHONE_CACHE_ENV = "INSTAG_PHONE_CACHE"


def decode_phones(audio: np.ndarray, cfg: PhoneConfig = PhoneConfig()) -> list[PhoneSegment]:
    """Allphone decoding of 16 kHz mono float audio (values in [-1, 1]) -> phone segments.

    About 0.05 s of CPU per second of audio. Empty audio gives an empty list. With
    ``$INSTAG_PHONE_CACHE`` set, a decode of the same samples and settings is read from
    that folder, and a new one is written there.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if x.size < 160:
        return []
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
    cache = os.environ.get(PHONE_CACHE_ENV)
    if not cache:
        return _decode(pcm, cfg)
    import hashlib
    import json
    from pathlib import Path

    from core.atomic import write_text

    key = hashlib.sha256(pcm + repr((cfg.lw, cfg.pip, cfg.beam, cfg.pbeam)).encode()).hexdigest()
    f = Path(cache) / f"{key}.json"
    if f.is_file():
        return [PhoneSegment(p, int(s), int(e)) for p, s, e in json.loads(f.read_text())]
    segs = _decode(pcm, cfg)
    f.parent.mkdir(parents=True, exist_ok=True)
    write_text(f, json.dumps([[s.phone, s.start, s.end] for s in segs]))
    return segs


def _decode(pcm: bytes, cfg: PhoneConfig) -> list[PhoneSegment]:
    """pocketsphinx allphone decoding of 16 kHz int16 mono ``pcm`` (long audio in a child
    process: :func:`core.data.allphone.decode_pcm`)."""
    from core.data.allphone import decode_pcm

    args = _decoder_args(cfg.lw, cfg.pip, cfg.beam, cfg.pbeam)
    return [PhoneSegment(p, a, b) for p, a, b in decode_pcm(pcm, args)]


def viseme_of(phone: str) -> int:
    """Index into :data:`VISEMES` of an ARPAbet phone (stress digits ignored); fillers -> rest."""
    return VISEMES.index(PHONE_TO_VISEME.get(phone.rstrip("012").upper(), "rest"))


def viseme_posteriors(segments: list[PhoneSegment], num_steps: int,
                      smooth_steps: float = 1.5) -> np.ndarray:
    """Phone segments -> ``(num_steps, 9)`` smoothed viseme posteriors on the 50 Hz grid.

    Uncovered 10 ms frames count as rest. Rows sum to 1.
    """
    hi = np.zeros((2 * num_steps, len(VISEMES)), np.float32)
    hi[:, 0] = 1.0
    for s in segments:
        a, b = max(s.start, 0), min(s.end + 1, 2 * num_steps)
        if b > a:
            hi[a:b] = 0.0
            hi[a:b, viseme_of(s.phone)] = 1.0
    post = hi.reshape(num_steps, 2, -1).mean(1)
    if smooth_steps > 0 and num_steps > 1:
        r = int(np.ceil(3 * smooth_steps))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / smooth_steps) ** 2)
        k /= k.sum()
        padded = np.pad(post, ((r, r), (0, 0)), mode="edge")
        post = np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(post.shape[1])], 1)
    post /= np.maximum(post.sum(1, keepdims=True), 1e-8)
    return post.astype(np.float32)


def loudness_bands(audio: np.ndarray, num_steps: int, cfg: PhoneConfig = PhoneConfig()) -> np.ndarray:
    """``(num_steps, 5)`` per-utterance normalised log power in :data:`BANDS_HZ` and overall.

    Uses the project's mel filterbank (no level scaling, no per-bin normalisation), groups mel
    bins by centre frequency, then maps each column's ``[p_lo, p_hi]`` to ``[0, 1]``.
    """
    from core.data.audio import AudioFeatureConfig, log_mel_steps, mel_centers

    mcfg = AudioFeatureConfig(kind="mel", normalize=False, target_rms=None, log_floor=1e-10)
    logmel = log_mel_steps(np.asarray(audio, np.float32), mcfg).numpy().astype(np.float64)
    logmel = _fit_steps(logmel, num_steps)
    power = np.exp(logmel)
    centres = mel_centers(mcfg)
    cols = []
    for lo, hi in BANDS_HZ:
        sel = (centres >= lo) & (centres < hi)
        cols.append(np.log(power[:, sel].sum(1) + 1e-10))
    cols.append(np.log(power.sum(1) + 1e-10))
    out = np.stack(cols, 1)
    lo = np.percentile(out, cfg.lo_percentile, axis=0)
    hi = np.percentile(out, cfg.hi_percentile, axis=0)
    return np.clip((out - lo) / np.maximum(hi - lo, cfg.min_range), 0.0, 1.0).astype(np.float32)


def _fit_steps(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[0] >= n:
        return x[:n]
    pad = np.repeat(x[-1:], n - x.shape[0], 0) if x.shape[0] else np.zeros((n, x.shape[1]))
    return np.concatenate([x, pad], 0)


def phone_features(audio: np.ndarray | torch.Tensor, cfg: PhoneConfig = PhoneConfig(),
                   decode_samples: int | None = None) -> torch.Tensor:
    """``(S, 14)`` float32 front-end features for 16 kHz mono audio, ``S = ceil(N / 320)``:
    9 viseme posteriors, 4 band loudnesses, overall loudness (:data:`FEATURE_NAMES`).

    ``decode_samples``: decode the phones of only the first this many samples (the costly
    part, about 0.05 s of CPU per second of audio) and return only their steps; the loudness
    is still normalised over the whole audio, so those rows differ from the whole file's
    only where the phone decoder sees the cut."""
    x = np.asarray(audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else audio,
                   dtype=np.float32).reshape(-1)
    S = -(-x.shape[0] // 320)
    if S == 0:
        return torch.zeros(0, FEATURE_DIM)
    loud = loudness_bands(x, S, cfg)
    if decode_samples is not None:
        x = x[:max(0, decode_samples)]
        S = -(-x.shape[0] // 320)
        loud = loud[:S]
    post = viseme_posteriors(decode_phones(x, cfg), S, cfg.smooth_steps)
    # the decoder labels near-silence (even digital zeros) with consonants: quiet steps are rest
    gate = np.clip((loud[:, -1:] - cfg.gate_lo) / (cfg.gate_hi - cfg.gate_lo), 0.0, 1.0)
    post = post * gate
    post[:, 0] += 1.0 - gate[:, 0]
    return torch.from_numpy(np.concatenate([post, loud], 1).astype(np.float32))


__all__ = [
    "BANDS_HZ", "FEATURE_DIM", "FEATURE_NAMES", "PHONE_TO_VISEME", "PhoneConfig", "PhoneSegment",
    "VISEMES", "decode_phones", "loudness_bands", "phone_features", "viseme_of", "viseme_posteriors",
]
