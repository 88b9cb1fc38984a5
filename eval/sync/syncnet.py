"""Audio-visual lip-sync scores: SyncNet LSE-C / LSE-D, and a weight-free offset score.

One concept: *do the lips move with the sound*.

SyncNet (LSE-C / LSE-D, METHOD.md section 8)
    The network is the one behind every published LSE number: ``syncnet_v2.model`` of
    the ``syncnet_python`` evaluation code (Chung & Zisserman 2016, "Out of time",
    as re-released; used by Wav2Lip's and later papers' LSE scripts). Not the paper's
    original 5-channel grayscale mouth model (Lua/Matlab weights, which nobody's LSE
    numbers use). Layout (:class:`SyncNet`, state-dict keys as in the release):

    * audio ``netcnnaud``: MFCC (1, 13, 20) -> conv3x3 64, BN, ReLU, maxpool 1 ->
      conv 192, BN, ReLU, maxpool 3 stride (1, 2) -> conv 384 -> conv 256 -> conv 256
      (each BN, ReLU), maxpool 3 stride 2 -> conv (5, 4) 512, BN, ReLU -> (512,);
      ``netfcaud``: 512 -> 512, BN, ReLU -> 1024.
    * video ``netcnnlip``: 5 RGB frames (3, 5, 224, 224), pixel values 0-255 in BGR
      order (the release reads frames with OpenCV) -> conv3d (5, 7, 7) stride (1, 2, 2)
      96, BN, ReLU, maxpool (1, 3, 3)/(1, 2, 2) -> conv3d (1, 5, 5)/(1, 2, 2) pad 1
      256, BN, ReLU, maxpool pad 1 -> 3x conv3d (1, 3, 3) 256 (BN, ReLU) -> maxpool ->
      conv3d (1, 6, 6) 512, BN, ReLU -> (512,); ``netfclip``: 512 -> 512 -> 1024.

    Inputs exactly as ``syncnet_python`` builds them:

    * video 25 fps; each frame cropped around the face as its ``crop_video`` does: box
      half-size ``bs = max(w, h) / 2`` and centre (median-filtered over 13 frames),
      crop rows ``[cy - bs, cy + 1.8 bs)``, columns ``[cx - 1.4 bs, cx + 1.4 bs)``
      (crop_scale 0.4; outside the frame filled with grey 110), resized to 224 x 224.
      The release takes the box from the S3FD face detector; here it is the FaceMesh
      landmark box (about the same box; the ``core.data.landmarks`` notes measured the
      MediaPipe detector box at 0.93-1.02 of the landmark box). The lip stream sees
      this whole lower-shifted face crop, not a mouth-only crop: feeding a mouth crop
      to the released weights would be out of distribution.
    * audio 16 kHz as int16 values; MFCC like ``python_speech_features.mfcc`` defaults
      (:func:`mfcc`): 25 ms rectangular window, 10 ms hop, pre-emphasis 0.97, 512-point
      FFT power spectrum / 512, 26 mel filters 0-8 kHz, log, DCT-II (ortho), 13
      coefficients, lifter 22, coefficient 0 replaced by the log frame energy.
    * window ``i`` (``0 <= i < min(T, floor(N / 640)) - 5``): frames ``i..i+4`` and
      MFCC columns ``4i .. 4i+20`` (0.2 s).

    Scores (:func:`lse_from_distances`, the release's ``calc_pdist`` + ``evaluate``):
    the audio embeddings are zero-padded by ``vshift = 15`` rows at both ends;
    ``dist[i, j] = ||v_i - a_{i + j - 15} + 1e-6||`` (torch ``pairwise_distance``) for
    ``j = 0..30``; ``mdist[j]`` = mean over ``i``; **LSE-D** = ``min_j mdist``,
    **LSE-C** = ``median_j mdist - min_j mdist``; the best offset is the argmin.

    Weights are never shipped: :func:`load_syncnet` takes a local file or a Hugging
    Face repo (``hf_hub_download``, offline unless ``allow_download``) and raises
    ``InputError('wrong_weights')`` naming what is missing.

Offline sync score (no weights, :func:`av_offset`)
    Cross-correlation of mouth opening (:func:`eval.metrics.frames.lip_aperture`) with the
    audio loudness per video frame, over offsets ``-15..15`` frames. What works
    (measured on 13 real 5-20 s segments of 11 shared clips, audio shifted by +-3 / +-6
    frames: the shift is recovered exactly on 12 of 13; the miss, woman_glasses_7s,
    has correlation 0.18): loudness = log RMS of the 1-4 kHz band (the F2/F3 region,
    where mouth shape shows most) in each frame's 40 ms; both signals high-passed
    (minus a Gaussian-smoothed copy, sigma 4 frames) so slow level drifts and a mouth
    that rests open (may_5s) do not dominate; Pearson correlation over the same
    central frames ``[K, T-K)`` for every offset (so edge offsets are not favoured by
    short overlaps). Without the high-pass, or with shrinking overlaps, the peak locks
    onto wrong offsets on several clips (lieu_60s, man_256_26s, aoc_8s); full-band
    loudness gives lower correlations than 1-4 kHz.
    (Those measurements normalised the gap by face width; the eye-corner distance of
    ``lip_aperture`` is a near-constant multiple of it per clip.)

Offset sign (both scores): ``offset = d`` means audio sample time ``t + d`` frames
matches the video at ``t``, i.e. **positive = audio lags (is late behind) the video**.
``syncnet_python`` prints the opposite sign (:attr:`SyncScores.syncnet_offset`).
Natural speech: the mouth opens slightly before the sound, so genuine clips give a
small positive offset (median +2 frames = 80 ms over those 13 segments, range -2..+3
except obama_20s at +6 on both of its 10 s halves and the unreliable woman_glasses_7s).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.data.preprocess import SAMPLE_RATE, SAMPLES_PER_FRAME
from core.errors import InputError
from eval.metrics.frames import lip_aperture

SYNCNET_FRAMES = 5        # video frames per window
SYNCNET_MFCC_STEPS = 20   # MFCC columns per window (100 Hz, 0.2 s)
MFCC_PER_FRAME = 4        # MFCC columns per video frame step
SYNCNET_SIZE = 224
VSHIFT = 15
SYNCNET_FILE = "syncnet_v2.model"
ENV_SYNCNET = "INSTAG_SYNCNET_WEIGHTS"
_ROOT = Path(__file__).resolve().parents[2]


# ============================================================================ MFCC
def _hz2mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel2hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank_psf(nfilt: int = 26, nfft: int = 512, sample_rate: int = SAMPLE_RATE,
                       low_hz: float = 0.0, high_hz: float | None = None) -> np.ndarray:
    """(nfilt, nfft//2 + 1) triangular filters on FFT-bin edges, python_speech_features style."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    mel = np.linspace(_hz2mel(low_hz), _hz2mel(high_hz), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(mel) / sample_rate).astype(int)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, c, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(lo, c):
            fb[j, i] = (i - lo) / (c - lo)
        for i in range(c, hi):
            fb[j, i] = (hi - i) / (hi - c)
    return fb


def mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, numcep: int = 13,
         int16_scale: bool = True) -> np.ndarray:
    """MFCC as ``python_speech_features.mfcc(audio, sample_rate)`` computes it (defaults).

    Args:
        audio: (N,) mono float in about [-1, 1] (as ``core.data.media.read_audio`` gives).
        int16_scale: first map to int16 values (x 32768, rounded, clipped), as the
            SyncNet evaluation reads 16-bit wav; the log energy (coefficient 0) depends
            on it.
    Returns:
        (numcep, F) float32, F = 1 + ceil((N - 400) / 160) frames at 100 Hz (column k
        covers samples ``[160k, 160k + 400)``; the tail is zero-padded).
    """
    x = np.asarray(audio, np.float64).reshape(-1)
    if int16_scale:
        x = np.clip(np.round(x * 32768.0), -32768, 32767)
    win, hop, nfft = round(0.025 * sample_rate), round(0.01 * sample_rate), 512
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    n = x.shape[0]
    nfr = 1 if n <= win else 1 + math.ceil((n - win) / hop)
    x = np.concatenate([x, np.zeros((nfr - 1) * hop + win - n)])
    idx = np.arange(win)[None, :] + hop * np.arange(nfr)[:, None]
    frames = x[idx]                                          # rectangular window
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    eps = np.finfo(np.float64).eps
    energy = pspec.sum(1)
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ mel_filterbank_psf(26, nfft, sample_rate).T
    feat = np.log(np.where(feat == 0, eps, feat))
    from scipy.fft import dct

    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :numcep]
    L = 22
    feat = feat * (1.0 + (L / 2.0) * np.sin(np.pi * np.arange(numcep) / L))
    feat[:, 0] = np.log(energy)
    return feat.T.astype(np.float32)


# ============================================================================ network
class SyncNet(nn.Module):
    """The ``syncnet_python`` SyncNet ('S', 1024-d embeddings); see the module doc."""

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()

        def c2(i, o, k=3, p=1):
            return [nn.Conv2d(i, o, k, padding=p), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        def c3(i, o, k, s=1, p=0):
            return [nn.Conv3d(i, o, k, stride=s, padding=p), nn.BatchNorm3d(o),
                    nn.ReLU(inplace=True)]

        self.netcnnaud = nn.Sequential(
            *c2(1, 64), nn.MaxPool2d(1, 1),
            *c2(64, 192), nn.MaxPool2d(3, (1, 2)),
            *c2(192, 384), *c2(384, 256), *c2(256, 256), nn.MaxPool2d(3, 2),
            *c2(256, 512, (5, 4), 0))
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *c3(3, 96, (5, 7, 7), (1, 2, 2)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), *c3(256, 256, (1, 3, 3), 1, (0, 1, 1)),
            *c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *c3(256, 512, (1, 6, 6)))
        self.eval()

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, embed_dim)."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR 0-255 face-crop windows -> (B, embed_dim)."""
        return self.netfclip(self.netcnnlip(x).flatten(1))


def _resolve_syncnet(path_or_hub_id: str | os.PathLike | None, revision: str | None,
                     allow_download: bool, filename: str) -> Path:
    how = (f"Get {SYNCNET_FILE} (the syncnet_python release, download_model.sh) and pass "
           f"its path, put it at weights/{SYNCNET_FILE}, set ${ENV_SYNCNET}, or pass a "
           "Hugging Face repo id holding it (with allow_download=True on a networked "
           "machine). LSE-C/LSE-D are reported unavailable without it; the offline "
           "score av_offset() needs no weights.")
    if path_or_hub_id is None:
        cands = ([Path(os.environ[ENV_SYNCNET]).expanduser()] if os.environ.get(ENV_SYNCNET)
                 else []) + [_ROOT / "weights" / SYNCNET_FILE]
        for p in cands:
            if p.is_file():
                return p
        raise InputError("wrong_weights", "SyncNet weights not found (looked at "
                         + ", ".join(str(p) for p in cands) + ").", how)
    p = Path(path_or_hub_id).expanduser()
    if p.is_dir():
        p = p / filename
    if p.is_file():
        return p
    sid = str(path_or_hub_id)
    looks_local = sid.startswith((".", "/", "~")) or sid.count("/") != 1 or p.suffix
    if looks_local:
        raise InputError("wrong_weights", f"SyncNet weights file not found: {p}.", how)
    try:
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(sid, filename, revision=revision,
                                    local_files_only=not allow_download))
    except Exception as exc:
        state = ("download failed" if allow_download
                 else "not in the local Hugging Face cache and downloads are off")
        rev = f"@{revision}" if revision else ""
        raise InputError("wrong_weights", f"SyncNet weights {sid}{rev}/{filename}: {state} "
                         f"[{exc.__class__.__name__}].", how) from exc


def load_syncnet(path_or_hub_id: str | os.PathLike | None = None, revision: str | None = None,
                 allow_download: bool = False, filename: str = SYNCNET_FILE,
                 device: str = "cpu") -> SyncNet:
    """SyncNet with the released weights, in eval mode.

    Args:
        path_or_hub_id: a ``syncnet_v2.model`` file, a folder holding ``filename``, a
            Hugging Face repo id (``owner/name``), or None ($INSTAG_SYNCNET_WEIGHTS, then
            ``weights/syncnet_v2.model``).
        revision: pinned hub revision. allow_download: let huggingface_hub fetch it.
    Raises:
        InputError('wrong_weights'): not found, unreadable, or keys/shapes do not fit.
    """
    path = _resolve_syncnet(path_or_hub_id, revision, allow_download, filename)
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError("wrong_weights", f"Cannot read SyncNet weights {path} "
                         f"({exc.__class__.__name__}: {exc}).",
                         f"Use the original {SYNCNET_FILE} state dict.") from exc
    if isinstance(sd, nn.Module):
        sd = sd.state_dict()
    if not isinstance(sd, dict):
        raise InputError("wrong_weights", f"{path} is not a SyncNet state dict.",
                         f"Use the original {SYNCNET_FILE}.")
    sd = {k.removeprefix("module.").removeprefix("__S__."): v for k, v in sd.items()}
    net = SyncNet()
    own = net.state_dict()
    absent = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if absent or bad:
        raise InputError("wrong_weights", f"{path} does not fit SyncNet (missing {absent[:3]}, "
                         f"wrong shape {bad[:3]}).", f"Use the original {SYNCNET_FILE}.")
    net.load_state_dict({k: sd.get(k, v) for k, v in own.items()})
    return net.to(device).eval()


# ============================================================================ inputs
def face_boxes_from_points(points: np.ndarray) -> np.ndarray:
    """(T, 4) ``x0, y0, x1, y1`` landmark boxes (mesh points 0-467) from (T, 478, 2+)."""
    p = np.asarray(points, np.float64)[:, :468, :2]
    return np.concatenate([p.min(1), p.max(1)], 1)


def syncnet_crops(frames: Sequence[np.ndarray] | np.ndarray, boxes: np.ndarray,
                  crop_scale: float = 0.4, size: int = SYNCNET_SIZE) -> np.ndarray:
    """Face crops as ``syncnet_python``'s ``crop_video`` makes them.

    Args:
        frames: T (H, W, 3) uint8 RGB frames.
        boxes: (T, 4) face boxes ``x0, y0, x1, y1`` in pixels (no NaN).
    Returns:
        (T, size, size, 3) uint8 RGB crops.
    """
    import cv2
    from scipy.signal import medfilt

    b = np.asarray(boxes, np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or len(b) != len(frames) or len(b) == 0:
        raise ValueError(f"need one (x0, y0, x1, y1) box per frame, got {b.shape} for "
                         f"{len(frames)} frames")
    if not np.isfinite(b).all():
        raise ValueError("face boxes contain NaN; fill missing frames first")
    s = medfilt(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 2, 13)
    cx = medfilt((b[:, 0] + b[:, 2]) / 2, 13)
    cy = medfilt((b[:, 1] + b[:, 3]) / 2, 13)
    out = np.empty((len(b), size, size, 3), np.uint8)
    for i, img in enumerate(frames):
        bs = s[i]
        pad = int(bs * (1 + 2 * crop_scale))
        im = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        my, mx = cy[i] + pad, cx[i] + pad
        face = im[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                  int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        out[i] = cv2.resize(face, (size, size))  # bilinear, as cv2 in the release
    return out


# ============================================================================ scores
def offset_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor,
                     vshift: int = VSHIFT) -> torch.Tensor:
    """(N, 2*vshift+1) distances ``||v_i - a_{i+j-vshift}||`` (audio zero-padded at the
    ends, torch ``pairwise_distance`` with its 1e-6), as ``syncnet_python``'s calc_pdist."""
    n = video_emb.shape[0]
    ap = nn.functional.pad(audio_emb, (0, 0, vshift, vshift))
    win = 2 * vshift + 1
    rows = [nn.functional.pairwise_distance(video_emb[i:i + 1].expand(win, -1), ap[i:i + win])
            for i in range(n)]
    return torch.stack(rows)


def lse_from_distances(dists: np.ndarray | torch.Tensor, vshift: int | None = None
                       ) -> tuple[int, float, float, np.ndarray]:
    """LSE from an (N windows, 2*vshift+1 offsets) distance matrix.

    Returns:
        ``(offset, lse_d, lse_c, mean_dists)``: mean over windows per offset; LSE-D its
        minimum; LSE-C = median - minimum (torch.median: the lower middle value for an
        even count); offset = argmin - vshift in frames, positive = audio lags video.
    """
    d = torch.as_tensor(np.asarray(dists, np.float64))
    if d.ndim != 2 or d.shape[1] % 2 != 1:
        raise ValueError(f"distances must be (N, 2*vshift+1), got {tuple(d.shape)}")
    vshift = (d.shape[1] - 1) // 2 if vshift is None else vshift
    m = d.mean(0)
    lo, j = torch.min(m, 0)
    return int(j) - vshift, float(lo), float(torch.median(m) - lo), m.numpy()


@dataclass
class SyncScores:
    """SyncNet scores of one clip.

    Attributes:
        lse_d: min over offsets of the mean embedding distance (lower = better).
        lse_c: median - min of the mean distances (higher = better).
        offset: best offset in frames, positive = audio lags video.
        mean_dists: (2*vshift+1,) mean distance per offset ``-vshift..vshift``.
        num_windows: 5-frame windows scored. seconds: wall time.
    """

    lse_d: float
    lse_c: float
    offset: int
    mean_dists: np.ndarray = field(repr=False)
    num_windows: int = 0
    seconds: float = 0.0

    @property
    def syncnet_offset(self) -> int:
        """The offset with ``syncnet_python``'s sign (what its logs print)."""
        return -self.offset


@torch.no_grad()
def sync_scores(frames: Sequence[np.ndarray] | np.ndarray, audio: np.ndarray, net: SyncNet,
                points: np.ndarray | None = None, boxes: np.ndarray | None = None,
                vshift: int = VSHIFT, batch: int = 20) -> SyncScores:
    """LSE-C / LSE-D of a 25 fps clip with its 16 kHz audio.

    Args:
        frames: T (H, W, 3) uint8 RGB frames at 25 fps.
        audio: (N,) float mono at 16 kHz, sample ``640 i`` at frame ``i``.
        net: :func:`load_syncnet` (or any :class:`SyncNet`, e.g. random for tests).
        points / boxes: (T, 478, 2+) landmarks or (T, 4) face boxes; None = run FaceMesh.
    Raises:
        ValueError: fewer than 6 frames of overlap.
    """
    t0 = time.perf_counter()
    frames = np.asarray(frames)
    if boxes is None:
        if points is None:
            from core.data.landmarks import DetectConfig, detect_landmarks

            track = detect_landmarks(frames, DetectConfig(detector_boxes=False))
            if not track.valid.any():
                raise InputError("no_face", "No face found in the clip to score lip sync.",
                                 "Check that the rendered frames show the face.")
            points = track.filled()
        boxes = face_boxes_from_points(points)
    T = min(len(frames), len(audio) // SAMPLES_PER_FRAME)
    n = T - SYNCNET_FRAMES  # as the release: windows i = 0 .. T-6
    if n < 1:
        raise ValueError(f"need at least {SYNCNET_FRAMES + 1} frames with audio, got {T}")
    crops = syncnet_crops(frames[:T], np.asarray(boxes)[:T])
    vid = torch.from_numpy(crops[..., ::-1].copy()).float().permute(3, 0, 1, 2)  # BGR (3,T,H,W)
    cc = torch.from_numpy(mfcc(audio))
    dev = next(net.parameters()).device
    v_emb, a_emb = [], []
    for s in range(0, n, batch):
        idx = range(s, min(n, s + batch))
        v = torch.stack([vid[:, i:i + SYNCNET_FRAMES] for i in idx])
        a = torch.stack([cc[:, MFCC_PER_FRAME * i:MFCC_PER_FRAME * i + SYNCNET_MFCC_STEPS]
                         for i in idx])[:, None]
        v_emb.append(net.forward_lip(v.to(dev)).cpu())
        a_emb.append(net.forward_aud(a.to(dev)).cpu())
    d = offset_distances(torch.cat(v_emb), torch.cat(a_emb), vshift)
    off, lse_d, lse_c, m = lse_from_distances(d, vshift)
    return SyncScores(lse_d=lse_d, lse_c=lse_c, offset=off, mean_dists=m, num_windows=n,
                      seconds=time.perf_counter() - t0)


# ============================================================================ offline
@dataclass(frozen=True)
class AVSyncConfig:
    """Settings of the weight-free sync score (:func:`av_offset`).

    Attributes:
        max_offset: offsets searched, ``-max_offset..max_offset`` frames (15).
        band_hz: band of the loudness envelope (1-4 kHz); None = full band.
        highpass_sigma: both signals minus their Gaussian-smoothed copy (sigma in
            frames, 4 = 160 ms); 0 = off.
        floor_rel: log-RMS floor relative to the clip's 95th-percentile frame RMS
            (1e-3 = -60 dB), so digital silence does not dominate.
    """

    max_offset: int = VSHIFT
    band_hz: tuple[float, float] | None = (1000.0, 4000.0)
    highpass_sigma: float = 4.0
    floor_rel: float = 1e-3


def audio_envelope(audio: np.ndarray, num_frames: int, cfg: AVSyncConfig | None = None
                   ) -> np.ndarray:
    """(T,) log RMS (dB) of the (band-passed) audio in each frame's 640 samples."""
    from scipy.signal import butter, sosfiltfilt

    cfg = cfg or AVSyncConfig()
    a = np.asarray(audio, np.float64).reshape(-1)
    need = num_frames * SAMPLES_PER_FRAME
    a = np.concatenate([a[:need], np.zeros(max(0, need - a.size))])
    if cfg.band_hz is not None:
        sos = butter(4, cfg.band_hz, btype="band", fs=SAMPLE_RATE, output="sos")
        a = sosfiltfilt(sos, a)  # zero phase: no delay
    rms = np.sqrt((a.reshape(num_frames, SAMPLES_PER_FRAME) ** 2).mean(1))
    floor = max(np.percentile(rms, 95) * cfg.floor_rel, 1e-9)
    return 20.0 * np.log10(rms + floor)


def _highpass(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return x - gaussian_filter1d(x, sigma, mode="nearest") if sigma > 0 else x


def av_sync_curve(mouth: np.ndarray, audio: np.ndarray, cfg: AVSyncConfig | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, correlations): Pearson correlation of the opening at ``t`` with the
    envelope at ``t + d`` over the central frames ``[K, T-K)``, for ``d = -K..K``.

    ``mouth``: a (T,) mouth opening, (T, 478, 2+) landmarks, or (T, H, W, 3) uint8
    frames (FaceMesh is run).
    """
    cfg = cfg or AVSyncConfig()
    m = np.asarray(mouth)
    if m.ndim == 4:
        from core.data.landmarks import DetectConfig, detect_landmarks

        track = detect_landmarks(m, DetectConfig(detector_boxes=False))
        if not track.valid.any():
            raise InputError("no_face", "No face found to measure the mouth opening.",
                             "Check that the frames show the face.")
        m = lip_aperture(track.filled())
    elif m.ndim == 3:
        m = lip_aperture(m)
    elif m.ndim != 1:
        raise ValueError(f"expected opening (T,), landmarks (T, 478, 2+) or frames, got {m.shape}")
    T, K = m.shape[0], cfg.max_offset
    if T < 2 * K + 10:
        raise ValueError(f"need at least {2 * K + 10} frames for offsets +-{K}, got {T}")
    x = _highpass(m.astype(np.float64), cfg.highpass_sigma)
    y = _highpass(audio_envelope(audio, T, cfg), cfg.highpass_sigma)
    xs = x[K:T - K] - x[K:T - K].mean()
    offs = np.arange(-K, K + 1)
    corr = np.empty(offs.size)
    for j, d in enumerate(offs):
        ys = y[K + d:T - K + d]
        ys = ys - ys.mean()
        den = math.sqrt(float((xs * xs).sum() * (ys * ys).sum()))
        corr[j] = float((xs * ys).sum()) / den if den > 0 else 0.0
    return offs, corr


def av_offset(mouth: np.ndarray, audio: np.ndarray, cfg: AVSyncConfig | None = None
              ) -> tuple[int, float]:
    """Weight-free audio-visual offset: ``(best_offset_frames, correlation)``.

    Positive offset = audio lags video. ``mouth`` as in :func:`av_sync_curve`; ``audio``
    (N,) float at 16 kHz aligned so sample ``640 t`` is at frame ``t``.
    Typical genuine clips: offset +0..+3, correlation 0.25-0.6; below ~0.2 the
    offset is unreliable.
    """
    offs, corr = av_sync_curve(mouth, audio, cfg)
    j = int(np.argmax(corr))
    return int(offs[j]), float(corr[j])
