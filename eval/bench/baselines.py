"""Baselines of the benchmark, all on the held-out protocol of :mod:`eval.bench.protocol` (train on
the first N seconds, test on the clip's last seconds).

Every baseline returns ``(n_test, res, res, 3) uint8`` frames aligned with the test frames,
so the same scorer applies to all methods (names and labels: :mod:`eval.bench.methods`):

``retrieval`` (:func:`retrieval_frames`)
    For each test frame, the training frame whose audio window is nearest: the per-frame
    audio windows (16 steps x D) of the training part and of the test span, each
    featurised as its own utterance like an avatar's inputs (``TrainFrames``), each
    feature standardised with the training frames' mean / std, flattened, cosine
    similarity.
``loop`` (:func:`loop_frames`)
    The training frames looped ping-pong (``core.synthesize.pingpong``) to the test
    length: real pixels, no lip motion related to the test audio (an image and sync floor).

Both move the source frame's *recorded head* (labels hair + face + mouth) onto the test
frame (:func:`paste_head`): the similarity transform (rotation, uniform scale,
translation) between the two frames' FaceMesh landmarks on rigid points (eye corners,
nose, forehead, cheeks; no lips or jaw, so the test frame's mouth shape does not leak),
composited, edge feathered by 1 px, onto the test frame's own torso/background plate --
the plate and pose the avatars render with. Where the moved head does not cover the
plate's head hole the background plate shows (an honest artefact of copy-paste).

``shifted`` (:func:`shifted_audio`): the real test frames with the test audio delayed by
0.4 s (10 frames; the samples before the test span come from the clip itself, zeros only
if the clip starts there): a floor for the audio-based sync scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.data.dataset import ProcessedClip
from core.data.landmarks import SKULL_LANDMARKS
from core.data.masks import Label
from core.data.pose import similarity_fit
from core.data.preprocess import SAMPLES_PER_FRAME
from core.train.stages import TrainFrames
from core.synthesize import pingpong

#: The sync floor: audio delayed by 0.4 s = 10 frames at 25 fps.
SHIFT_FRAMES = 10


@dataclass(frozen=True)
class RetrievalConfig:
    """Settings of the baselines that paste recorded heads (retrieval, loop).

    Attributes:
        feather_px: Gaussian feathering (sigma, pixels) of the pasted head's edge.
        paste: paste the head onto the test plate (True) or return the source training
            frames as they are (False: the training frame's own camera and plate).
    """

    feather_px: float = 1.0
    paste: bool = True


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [0, 1] tensor -> uint8 array (the rounding of :func:`eval.bench.protocol.ground_truth`)."""
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def training_frames(clip: ProcessedClip, n_train: int, res: int) -> TrainFrames:
    """The first ``n_train`` frames at ``res`` as an avatar trains on them (training audio
    and training-frame statistics only)."""
    return TrainFrames.from_clip(clip, torch.arange(n_train), res, fit_frames=n_train)


# ----------------------------------------------------------------------------- retrieval
def audio_keys(frames: TrainFrames) -> np.ndarray:
    """(n, 16 * D) float64 flattened audio windows of ``frames`` (their own utterance)."""
    return frames.audio[frames.index.long()].flatten(1).double().numpy()


def retrieve_indices(train_keys: np.ndarray, test_keys: np.ndarray) -> np.ndarray:
    """(n_test,) index of the nearest training key for each test key: features standardised
    with the training mean / std, cosine similarity."""
    mu = train_keys.mean(0, keepdims=True)
    sd = train_keys.std(0, keepdims=True) + 1e-6
    a = (train_keys - mu) / sd
    b = (test_keys - mu) / sd
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    return np.argmax(b @ a.T, axis=1).astype(np.int64)


def paste_head(src_img: np.ndarray, src_labels: np.ndarray, src_pts: np.ndarray,
               plate: np.ndarray, dst_pts: np.ndarray, feather_px: float = 1.0) -> np.ndarray:
    """Move the recorded head of ``src_img`` (labels >= hair) onto ``plate`` by the similarity
    transform between the skull landmarks (``core.data.landmarks.SKULL_LANDMARKS``: no lips, jaw
    or brows) of ``src_pts`` -> ``dst_pts`` ((478, 2) pixels)."""
    import cv2

    h, w = plate.shape[:2]
    idx = list(SKULL_LANDMARKS)
    sc, R, t = similarity_fit(src_pts[idx, :2].astype(np.float64), dst_pts[idx, :2].astype(np.float64))
    M = np.concatenate([sc * R, t[:, None]], 1)  # (2, 3)
    # pixel centres at +0.5 (core conventions): shift into cv2's integer-centre frame
    C = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    A = np.linalg.inv(C) @ np.vstack([M, [0, 0, 1]]) @ C
    head = (src_labels >= Label.HAIR).astype(np.float32)
    warped = cv2.warpAffine(src_img, A[:2], (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(head, A[:2], (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    if feather_px > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather_px)
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    out = a * warped.astype(np.float32) + (1.0 - a) * plate.astype(np.float32)
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def pasted_frames(clip: ProcessedClip, train: TrainFrames, test_idx: torch.Tensor,
                  test: TrainFrames, src_idx: np.ndarray, cfg: RetrievalConfig | None = None
                  ) -> np.ndarray:
    """(n_test, res, res, 3) uint8: training frame ``src_idx[j]``'s head moved onto test
    frame ``j``'s plate and pose (``cfg.paste``; else the training frames as they are).
    ``train`` / ``test``: :func:`training_frames` / held-out frames at the same res."""
    cfg = cfg or RetrievalConfig()
    res = test.res
    src_imgs = to_uint8(train.images)
    if not cfg.paste:
        return src_imgs[src_idx]
    pts = clip.arrays["points2d"].double().numpy() * (res / clip.res)
    plates = to_uint8(test.plates)
    src_lab = train.labels.numpy()
    out = np.empty((len(src_idx), res, res, 3), np.uint8)
    for j, (i, k) in enumerate(zip(test_idx.tolist(), np.asarray(src_idx).tolist())):
        out[j] = paste_head(src_imgs[k], src_lab[k], pts[k], plates[j], pts[i], cfg.feather_px)
    return out


def retrieval_frames(clip: ProcessedClip, n_train: int, test_idx: torch.Tensor,
                     test: TrainFrames, cfg: RetrievalConfig | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Audio-nearest-frame retrieval: ``(frames (n_test, res, res, 3) uint8, retrieved
    training indices (n_test,))``. ``test``: the held-out frames at the evaluation res
    (:func:`eval.bench.protocol.heldout_frames`)."""
    train = training_frames(clip, n_train, test.res)
    nn_idx = retrieve_indices(audio_keys(train), audio_keys(test))
    return pasted_frames(clip, train, test_idx, test, nn_idx, cfg), nn_idx


# ----------------------------------------------------------------------------- loop
def loop_indices(n_train: int, n_test: int) -> np.ndarray:
    """Training frame index of each output frame, looped ping-pong."""
    return np.array([pingpong(t, n_train) for t in range(n_test)], np.int64)


def loop_frames(clip: ProcessedClip, n_train: int, test_idx: torch.Tensor, test: TrainFrames,
                cfg: RetrievalConfig | None = None) -> np.ndarray:
    """The training frames looped ping-pong, each head moved onto the test frame's plate
    and pose (``cfg.paste=False``: the looped frames as recorded)."""
    return pasted_frames(clip, training_frames(clip, n_train, test.res), test_idx, test,
                         loop_indices(n_train, int(test_idx.numel())), cfg)


# ----------------------------------------------------------------------------- audio
def test_audio(clip: ProcessedClip, test_idx: torch.Tensor, shift_frames: int = 0) -> np.ndarray:
    """(n_test * 640,) float32 audio of the test span; ``shift_frames > 0`` delays it (sample
    ``640 t`` then holds what was said at frame ``t - shift_frames``; the clip's own earlier
    audio fills the start, zeros before the clip's first sample)."""
    a = clip.arrays["audio"].numpy().astype(np.float32)
    i0, n = int(test_idx[0]), int(test_idx.numel())
    spf = SAMPLES_PER_FRAME
    start = (i0 - shift_frames) * spf
    stop = start + n * spf
    pad_lo = max(0, -start)
    seg = a[max(0, start):max(0, min(stop, a.size))]
    seg = np.concatenate([np.zeros(pad_lo, np.float32), seg])
    return np.concatenate([seg, np.zeros(n * spf - seg.size, np.float32)])


def shifted_audio(clip: ProcessedClip, test_idx: torch.Tensor,
                  shift_frames: int = SHIFT_FRAMES) -> np.ndarray:
    """The sync floor's audio: the test audio delayed by ``shift_frames`` (0.4 s)."""
    return test_audio(clip, test_idx, shift_frames)
