"""Offline landmark lip-sync expert: does the mouth's shape move with the sound?

One concept: a small two-tower network, trained offline on real talking clips, that
embeds a short window of mouth landmarks and the matching window of audio so that true
pairs lie close and time-shifted pairs lie far; from it, LSE-style sync scores for any
video with audio (recordings, renders with their own driving audio, Talk renders with new
speech that have no ground truth). In the spirit of the landmark SyncNets of GeneFace and
MimicTalk; our own network, features and training (``eval.sync.train_expert``).

Inputs
    *Mouth*: :data:`SYNC_POINTS` = FaceMesh outer lip (20) + inner lip (20) + lower jaw line
    (15 points from cheek to cheek via the chin), ``K = 55`` points, in the **head-canonical
    frame** (``core`` conventions: metres, +x image right, +y down, +z into the head):
    the FaceMesh points lifted to camera space with the clip's focal
    (:func:`core.data.pose.lift_points`), moved into the head frame with the inverse of the
    fitted head pose (the processed clip's ``viewmats``), then any per-frame rigid residual
    removed by a similarity fit of the rigid landmarks (:func:`core.data.pose.procrustes_align`).
    Per clip, the mean shape is subtracted and the result divided by the clip's mean
    mouth width (outer corners 61-291): the features are shape *changes* in mouth widths,
    free of head pose, distance, face size and the person's resting mouth shape. (Eye
    distance would do as well; the canonical frame already fixes the face width to
    0.14 m, and the mouth width can be taken from the mouth points alone.)

    *Audio*: 16 kHz mono -> log-mel, 40 bins 0-8 kHz, 25 ms Hann window, 50 Hz steps
    (two per video frame, step ``s`` covers samples ``[320 s, 320 s + 320)``), level- and
    per-bin mean/variance-normalised over the clip (:func:`core.data.audio.log_mel_steps` with
    this module's own :func:`mel_config`). Independent of the talking-head model's learned
    audio encoder (only the filterbank code is shared).

Window: 5 video frames (200 ms at 25 fps, frames ``c-2 .. c+2`` around a centre frame
``c``) against the 10 audio steps of the same 200 ms, as SyncNet and Wav2Lip's expert use.
200 ms covers about one syllable: long enough that an opening-closing gesture and its
sound are both inside, short enough that a one-frame shift changes a fifth of the window
(the offset resolution the validation needs: +-1 frame).

Scores (:func:`score_landmarks`, defined as LSE-C / LSE-D of SyncNet): embeddings are unit
vectors; for every centre ``c`` whose audio windows at all offsets lie inside the clip,
``dist[c, d] = || v_c - a_{c+d} ||`` (0..2) for ``d = -15..15`` frames; ``distances[d]`` =
mean over ``c``; **distance** = ``min_d distances``; **confidence** = ``median_d distances
- min_d distances``; **best_offset** = the argmin.

Offset sign (the same as :mod:`eval.sync.syncnet`): ``offset = d`` means the audio at frame time
``t + d`` matches the video at ``t``, i.e. **positive = audio late** (lags the video).
An audio track delayed by ``k`` frames raises the best offset by ``k``.
The zero point is the alignment of the training recordings (each estimated and aligned
to the median of all, see ``weights/README.md``).

Reading the scores (shipped weights, ``docs/results/sync_expert.md``): recorded speech of
people the expert never saw scores LSE-C 0.16-0.23 over 20-60 s, one clip's mouth with
another clip's audio 0.02-0.04; below about 0.05 there is no evidence of sync (and the
best offset means nothing). Scores of clips shorter than a few seconds are noisier.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import InputError
from core.data.masks import INNER_LIPS, JAW_LINE, OUTER_LIPS
from core.data.preprocess import FPS, SAMPLES_PER_FRAME

if TYPE_CHECKING:
    from core.data.audio import AudioFeatureConfig

STEPS_PER_FRAME = 2                     # 50 Hz audio steps
MAX_OFFSET = 15                         # frames searched either side, as LSE
CHECKPOINT_KIND = "sync-expert"
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "sync_expert.safetensors"
MANIFEST_KEY = "sync_experts"

#: Mouth points: outer lip, inner lip, lower jaw line (cheek-to-cheek via the chin,
#: without the three near-rigid points at each cheek end).
SYNC_POINTS: tuple[int, ...] = tuple(OUTER_LIPS) + tuple(INNER_LIPS) + tuple(JAW_LINE[3:-3])
#: Outer mouth corners (subject's right 61, left 291): the per-clip scale.
MOUTH_CORNERS: tuple[int, int] = (61, 291)


@dataclass(frozen=True)
class SyncExpertConfig:
    """Shape of the sync expert (stored in its checkpoint).

    Attributes:
        window: video frames per window (5 = 200 ms); the audio window is
            ``2 * window`` 50 Hz steps of the same span.
        num_points: mouth points per frame (``len(SYNC_POINTS)`` = 55).
        n_mels: log-mel bins (40, 0-8 kHz, :data:`MEL`).
        hidden: channels of both towers' temporal convolutions (128).
        embed: embedding size (64); embeddings are unit vectors.
        dropout: dropout before each tower's projection (0.2, training only).
        input_scale: the mouth features (shape changes in mouth widths, std about
            0.03) are multiplied by this before the video tower (10).
        unit_variance: also divide each clip's mouth features by their RMS, so that
            only the timing and pattern of the motion count, not its amplitude (False).
    """

    window: int = 5
    num_points: int = len(SYNC_POINTS)
    n_mels: int = 40
    hidden: int = 128
    embed: int = 64
    dropout: float = 0.2
    input_scale: float = 10.0
    unit_variance: bool = False

    @property
    def audio_steps(self) -> int:
        return STEPS_PER_FRAME * self.window

    @property
    def half(self) -> int:
        """Frames before the centre frame (2 for a 5-frame window)."""
        return self.window // 2


def mel_config(n_mels: int = 40) -> AudioFeatureConfig:
    """The expert's own log-mel settings (:class:`core.data.audio.AudioFeatureConfig`)."""
    from core.data.audio import AudioFeatureConfig

    return AudioFeatureConfig(kind="mel", n_mels=n_mels, fmin=0.0, fmax=8000.0)


# ============================================================================ features
def canonical_landmarks(points3d: np.ndarray, viewmats: np.ndarray, focal: float,
                        res: int) -> np.ndarray:
    """FaceMesh points of every frame in the head-canonical frame.

    Args:
        points3d: (T, 478, 3) FaceMesh points in crop pixels at ``res`` (z like x),
            misses filled (a processed clip's ``points3d``).
        viewmats: (T, 4, 4) world-to-camera head poses (``core.data.pose.fit_head_pose``).
        focal: focal length in pixels at ``res``.
        res: crop side in pixels.
    Returns:
        (T, 478, 3) float32 metres: lifted to camera space, moved to the head frame by the
        inverse pose, per-frame rigid residual removed (similarity fit of the rigid points).
    """
    from core.data.pose import lift_points, procrustes_align

    V = np.asarray(viewmats, np.float64)
    cam = lift_points(points3d, focal, res)
    R, t = V[:, :3, :3], V[:, :3, 3]
    world = np.einsum("tji,tnj->tni", R, cam - t[:, None, :])
    return procrustes_align(world)[0].astype(np.float32)


def mouth_features(canon_mouth: np.ndarray, unit_variance: bool = False) -> np.ndarray:
    """(T, K*3) float32 per-clip normalised mouth features (module doc).

    ``canon_mouth``: (T, K, 3) :data:`SYNC_POINTS` in the head-canonical frame, or the
    full (T, 478, 3) canonical landmarks (the mouth points are picked).
    ``unit_variance``: divide by the features' RMS over the clip (one scalar), times
    0.03 (the typical RMS) so the network's input scale is unchanged.
    """
    P = np.asarray(canon_mouth, np.float64)
    if P.ndim != 3 or P.shape[2] != 3:
        raise ValueError(f"canon_mouth must be (T, K, 3), got {P.shape}")
    if P.shape[1] >= 468:
        P = P[:, list(SYNC_POINTS)]
    if P.shape[1] != len(SYNC_POINTS):
        raise ValueError(f"canon_mouth must hold the {len(SYNC_POINTS)} SYNC_POINTS or all "
                         f"478 FaceMesh points, got {P.shape[1]}")
    if not np.all(np.isfinite(P)):
        raise ValueError("canon_mouth contains NaN; fill missing frames first")
    mean = P.mean(0)
    a, b = SYNC_POINTS.index(MOUTH_CORNERS[0]), SYNC_POINTS.index(MOUTH_CORNERS[1])
    width = max(float(np.linalg.norm(mean[a] - mean[b])), 1e-9)
    f = ((P - mean) / width).reshape(len(P), -1)
    if unit_variance:
        f *= 0.03 / max(float(np.sqrt(np.mean(f ** 2))), 1e-6)
    return f.astype(np.float32)


def audio_features(audio: np.ndarray, num_frames: int, n_mels: int = 40) -> np.ndarray:
    """(2 * num_frames, n_mels) float32 normalised log-mel steps of 16 kHz audio, cut or
    zero-padded to ``640 * num_frames`` samples first."""
    from core.data.audio import log_mel_steps
    from core.data.media import fit_length

    a = fit_length(np.asarray(audio, np.float32).reshape(-1), num_frames * SAMPLES_PER_FRAME)
    return log_mel_steps(a, mel_config(n_mels)).numpy()


# ============================================================================ network
class _Tower(nn.Module):
    """Temporal conv tower: (B, L, C_in) -> (B, embed) unit vectors."""

    def __init__(self, c_in: int, length: int, hidden: int, embed: int, dropout: float,
                 stride2: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(c_in, hidden, 3, padding=1), nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1, stride=2 if stride2 else 1), nn.GELU())
        out_len = (length + 1) // 2 if stride2 else length
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(hidden * out_len, hidden), nn.GELU(),
                                  nn.Linear(hidden, embed))

    def forward(self, x: Tensor) -> Tensor:
        z = self.head(self.conv(x.transpose(1, 2)))
        return nn.functional.normalize(z, dim=-1)


class SyncExpert(nn.Module):
    """Two towers: mouth window (B, window, K*3) and audio window (B, 2*window, n_mels)
    to unit embeddings (B, embed)."""

    def __init__(self, cfg: SyncExpertConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SyncExpertConfig()
        c = self.cfg
        self.video = _Tower(3 * c.num_points, c.window, c.hidden, c.embed, c.dropout, False)
        self.audio = _Tower(c.n_mels, c.audio_steps, c.hidden, c.embed, c.dropout, True)
        self.meta: dict[str, Any] = {}

    def embed_video(self, x: Tensor) -> Tensor:
        return self.video(x * self.cfg.input_scale)

    def embed_audio(self, x: Tensor) -> Tensor:
        return self.audio(x)


def video_windows(feats: Tensor, centres: Tensor, half: int, window: int) -> Tensor:
    """(N, window, D) mouth windows ``feats[c - half : c - half + window]``."""
    idx = centres[:, None] - half + torch.arange(window)
    return feats[idx]


def audio_windows(mel: Tensor, centres: Tensor, half: int, window: int) -> Tensor:
    """(N, 2*window, n_mels) audio windows of the frames ``c - half .. c - half + window``."""
    idx = STEPS_PER_FRAME * (centres[:, None] - half) + torch.arange(STEPS_PER_FRAME * window)
    return mel[idx]


# ============================================================================ load / save
def _manifest_entry(path: Path) -> dict[str, Any] | None:
    m = path.parent / "manifest.json"
    if not m.is_file():
        return None
    try:
        entries = json.loads(m.read_text()).get(MANIFEST_KEY, [])
    except (OSError, json.JSONDecodeError):
        return None
    return next((e for e in entries if e.get("file") == path.name), None)


def load_sync_expert(path: str | Path | None = None) -> SyncExpert:
    """Load a trained sync expert (eval mode, CPU).

    Args:
        path: a ``.safetensors`` file written by ``eval.sync.train_expert``; None = the
            shipped ``weights/sync_expert.safetensors`` (also checked against the sha256
            in ``weights/manifest.json``).
    Raises:
        InputError('wrong_weights'): missing file or a checkpoint of another kind.
        InputError('corrupt'): unreadable, truncated or modified file.
    """
    from core.model import checkpoint

    p = DEFAULT_WEIGHTS if path is None else Path(path)
    how = ("Restore it from the repository (git checkout weights/) or re-create it with "
           "`python -m eval.sync.train_expert train` (weights/README.md has the command).")
    if not p.is_file():
        raise InputError("wrong_weights", f"Sync expert weights not found: {p}.", how)
    if path is None:
        entry = _manifest_entry(p)
        if entry and entry.get("sha256"):
            from core.data.preprocess import sha256_file

            if sha256_file(p) != entry["sha256"]:
                raise InputError("corrupt", f"{p.name} does not match its checksum in "
                                 "weights/manifest.json.", how)
    tensors, meta = checkpoint.load(p, kind=CHECKPOINT_KIND)
    try:
        cfg = SyncExpertConfig(**meta["config"])
        net = SyncExpert(cfg)
        net.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, RuntimeError) as e:
        raise InputError("corrupt", f"{p.name} does not hold a sync expert of this code's "
                         f"shape ({e.__class__.__name__}).", how) from e
    net.meta = meta
    return net.eval()


def save_sync_expert(net: SyncExpert, path: str | Path, info: dict[str, Any]) -> Path:
    """Write the expert's weights (checkpoint kind ``sync-expert``, atomic) with its
    config and ``info`` (training data, steps, losses) in the metadata."""
    from core.model import checkpoint

    return checkpoint.save(path, dict(net.state_dict()),
                           {"kind": CHECKPOINT_KIND, "config": asdict(net.cfg), **info})


# ============================================================================ scoring
@dataclass(frozen=True)
class SyncScore:
    """LSE-style scores of one clip (module doc).

    Attributes:
        confidence: LSE-C, ``median - min`` of :attr:`distances` (higher = clearer sync).
        distance: LSE-D, ``min`` of :attr:`distances` (lower = closer).
        best_offset: frames at the minimum; positive = audio late.
        distances: (2 * max_offset + 1,) mean embedding distance for offsets
            ``-max_offset .. max_offset`` frames.
        num_windows: centre frames averaged.
    """

    confidence: float
    distance: float
    best_offset: int
    distances: np.ndarray = field(repr=False)
    num_windows: int = 0

    @property
    def max_offset(self) -> int:
        return (len(self.distances) - 1) // 2

    def distance_at(self, offset: int) -> float:
        """Mean distance at ``offset`` frames (0 = the audio as given)."""
        return float(self.distances[self.max_offset + offset])

    def confidence_at(self, offset: int) -> float:
        """``median - distance_at(offset)``: how much better than a typical offset the
        given one scores (equals :attr:`confidence` at the best offset; negative when the
        offset is worse than the median)."""
        return float(np.median(self.distances)) - self.distance_at(offset)


@torch.no_grad()
def score_features(expert: SyncExpert, feats: np.ndarray, mel: np.ndarray,
                   max_offset: int = MAX_OFFSET) -> SyncScore:
    """Scores from precomputed :func:`mouth_features` (T, K*3) and
    :func:`audio_features` (2T, n_mels) of the same clip."""
    c = expert.cfg
    T = min(len(feats), len(mel) // STEPS_PER_FRAME)
    lo, hi = c.half + max_offset, T - (c.window - c.half) - max_offset  # centres [lo, hi]
    if hi < lo:
        need = c.window + 2 * max_offset
        raise InputError("too_short", f"Only {T} frames with audio; lip-sync scoring with "
                         f"offsets +-{max_offset} needs at least {need} "
                         f"({need / FPS:.1f} s at {FPS:g} fps).", "Score a longer clip.")
    expert.eval()
    f = torch.from_numpy(np.ascontiguousarray(feats[:T], np.float32))
    m = torch.from_numpy(np.ascontiguousarray(mel[:STEPS_PER_FRAME * T], np.float32))
    centres = torch.arange(lo, hi + 1)
    v = expert.embed_video(video_windows(f, centres, c.half, c.window))             # (N, E)
    a_centres = torch.arange(c.half, T - (c.window - c.half) + 1)                   # all audio
    a = expert.embed_audio(audio_windows(m, a_centres, c.half, c.window))           # (M, E)
    offs = torch.arange(-max_offset, max_offset + 1)
    ai = centres[:, None] + offs[None, :] - c.half                                  # (N, O)
    d = (v[:, None, :] - a[ai]).norm(dim=-1).mean(0).numpy().astype(np.float64)
    j = int(np.argmin(d))
    return SyncScore(confidence=float(np.median(d) - d[j]), distance=float(d[j]),
                     best_offset=int(offs[j]), distances=d, num_windows=len(centres))


def score_landmarks(expert: SyncExpert, canon_mouth: np.ndarray, audio: np.ndarray,
                    max_offset: int = MAX_OFFSET) -> SyncScore:
    """Lip-sync scores of mouth landmarks against audio.

    Args:
        expert: :func:`load_sync_expert`.
        canon_mouth: (T, K, 3) :data:`SYNC_POINTS` (or all 478 points) in the
            head-canonical frame at 25 fps (:func:`canonical_landmarks`).
        audio: (N,) float32 mono 16 kHz; sample ``640 t`` is at frame ``t``. Scoring uses
            ``min(T, N // 640)`` frames.
        max_offset: offsets searched, ``-max_offset..max_offset`` frames (15).
    Raises:
        InputError('too_short'): fewer than ``window + 2 max_offset`` frames (1.4 s).
    """
    feats = mouth_features(canon_mouth, expert.cfg.unit_variance)
    T = min(len(feats), len(np.asarray(audio).reshape(-1)) // SAMPLES_PER_FRAME)
    return score_features(expert, feats[:T], audio_features(audio, T, expert.cfg.n_mels),
                          max_offset)


def video_landmarks(frames: np.ndarray) -> np.ndarray:
    """(T, 478, 3) head-canonical landmarks of (T, H, W, 3) uint8 frames: FaceMesh
    (``core.data.landmarks.detect_landmarks``, misses interpolated) and the project's head-pose
    fit (``core.data.pose.fit_head_pose``); a non-square frame is treated as centred in a
    square of its longer side.

    Raises:
        InputError('no_face'): FaceMesh finds the face in no frame.
    """
    from core.data.landmarks import DetectConfig, detect_landmarks
    from core.data.pose import fit_head_pose

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    track = detect_landmarks(frames, DetectConfig(detector_boxes=False))
    if not track.valid.any():
        raise InputError("no_face", "No face found in the frames to score lip sync.",
                         "Check that the frames show the face.")
    H, W = frames.shape[1:3]
    res = max(H, W)
    p = track.filled().astype(np.float64)
    p[..., 0] += (res - W) / 2.0
    p[..., 1] += (res - H) / 2.0
    pose = fit_head_pose(p[..., :2], p, res)
    return canonical_landmarks(p, pose.viewmats(), pose.focal, res)


def score_video(expert: SyncExpert, frames: np.ndarray, audio: np.ndarray,
                max_offset: int = MAX_OFFSET) -> SyncScore:
    """Lip-sync scores of a video: (T, H, W, 3) uint8 RGB frames at 25 fps showing one
    face, and its (N,) float32 16 kHz audio (:func:`video_landmarks`, then
    :func:`score_landmarks`)."""
    return score_landmarks(expert, video_landmarks(frames), audio, max_offset)


@dataclass(frozen=True)
class AVOffset:
    """Measured audio-video offset of a clip.

    Attributes:
        offset: frames, positive = audio late; shift the audio *earlier* by this many
            frames (drop ``640 * offset`` samples at its start) to align it.
        confidence: the sync score's LSE-C at that offset.
        reliable: ``confidence >= min_confidence``; otherwise keep the clip as recorded.
    """

    offset: int
    confidence: float
    reliable: bool


def estimate_av_offset(expert: SyncExpert, canon_mouth: np.ndarray, audio: np.ndarray,
                       max_offset: int = MAX_OFFSET, min_confidence: float = 0.05) -> AVOffset:
    """A clip's audio-video offset (e.g. for preprocessing): the best offset of
    :func:`score_landmarks` over the whole clip. ``min_confidence`` (LSE-C, 0.05): below
    it the curve has no clear minimum (silence, off-screen speech, a still mouth) and
    the estimate is flagged unreliable."""
    s = score_landmarks(expert, canon_mouth, audio, max_offset)
    return AVOffset(offset=s.best_offset, confidence=s.confidence,
                    reliable=s.confidence >= min_confidence)


def shift_audio(audio: np.ndarray, frames: int) -> np.ndarray:
    """Delay (``frames > 0``) or advance (``< 0``) 16 kHz audio by whole video frames,
    zero-padded, same length. Delaying by ``k`` raises the measured offset by ``k``."""
    a = np.asarray(audio, np.float32).reshape(-1)
    s = min(abs(int(frames)) * SAMPLES_PER_FRAME, a.size)
    if frames > 0:
        return np.concatenate([np.zeros(s, np.float32), a[:a.size - s]])
    if frames < 0:
        return np.concatenate([a[s:], np.zeros(s, np.float32)])
    return a.copy()
