"""Scores of one clip of held-out frames: the benchmark's scorer registry.

A :class:`Render` is what is scored: frames of the test span (a method's render, a control's
render, or the recording itself for ``shifted``), the audio its lip sync is judged against
(the recorded test audio; for ``shifted`` the late audio), FaceMesh landmarks of the frames,
and the recording to compare pixels and landmarks with.

Every scorer is a function ``scorer(render, cfg) -> dict`` of flat, JSON-ready values;
:data:`SCORERS` lists them and :func:`score_render` runs them all. A metric that cannot be
computed here is the string ``'unavailable: <reason>'`` (weights absent) or ``'n/a'`` (does
not apply), never a guessed number. Adding a metric = one scorer function + its entry in
:data:`SCORERS` and a column in :mod:`eval.bench.tables`; ``python -m eval.benchmark --rescore``
then recomputes every finished cell from its stored renders (no adaptation, no rendering).

Keys (see :mod:`eval.metrics.frames` and :mod:`eval.sync.syncnet` for the definitions):

``image_scores``      psnr, ssim (full frame: includes the recorded plate), psnr_face,
                      ssim_face, psnr_head, ssim_head (hair + face + mouth pixels),
                      psnr_band, ssim_band (pixels within 4 px at 256 px of the recorded
                      head boundary, either side: ``eval.metrics.frames.boundary_band``), lpips
``speckle_scores``    speckles (stray dots per frame: ``eval.metrics.speckle``)
``open_mouth_scores`` aperture_ratio_top (rendered / recorded lip gap at the recording's top
                      decile), psnr_head_open, psnr_mouth_open (top quartile:
                      ``eval.metrics.open_mouth``)
``landmark_scores``   aperture_r, aperture_r_pose (partialled on the head pose),
                      aperture_spread, lmd_mouth, lmd_face, aue_upper,
                      aue_lower, landmark_valid (fraction of frames with a face in both)
``av_sync_scores``    av_offset, av_corr (best offset and its correlation), av_corr_ref
                      (at the recording's own best offset), av_offset_err (frames)
``syncnet_scores``    lse_c, lse_d, syncnet_offset (SyncNet weights required)
``sync_expert_scores`` sync_expert_conf, sync_expert_dist, sync_expert_offset (the
                      offline landmark sync expert, ``eval.sync.expert``, when installed)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.bench.protocol import GroundTruth

NA = "n/a"


@dataclass(frozen=True)
class ScoreConfig:
    """What to score.

    Attributes:
        landmarks: run FaceMesh-based scores (aperture, LMD, AUE, sync); False = pixels only.
        syncnet: SyncNet weights (path / hub id / None = $INSTAG_SYNCNET_WEIGHTS or weights/).
        sync_expert: landmark sync expert weights (None = the shipped ones).
    """

    landmarks: bool = True
    syncnet: str | None = None
    sync_expert: str | None = None


@dataclass
class Render:
    """One clip of held-out frames to score.

    Attributes:
        frames: (n, H, W, 3) uint8 at 25 fps.
        audio: (n * 640,) float32 at 16 kHz: what its lip sync is judged against.
        points: (n, 478, 3) FaceMesh landmarks in pixels (NaN where no face), or None.
        valid: (n,) bool, a face was found.
        gt: the recording with its masks; None when ``frames`` are the recording itself
            (pixel and landmark comparisons do not apply).
        gt_points, gt_valid: FaceMesh of the recording (as ``points`` / ``valid``).
        ref_offset: the recording's own best weight-free sync offset (frames) or None.
        pose: (n, 6) head pose of the frames (``eval.metrics.frames.pose_covariates``), for the
            pose-partialled aperture r; None = not scored.
    """

    frames: np.ndarray
    audio: np.ndarray
    points: np.ndarray | None
    valid: np.ndarray | None
    gt: GroundTruth | None
    gt_points: np.ndarray | None = None
    gt_valid: np.ndarray | None = None
    ref_offset: int | None = None
    pose: np.ndarray | None = None


Scorer = Callable[[Render, ScoreConfig], dict]


def filled(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Landmarks with the missed frames filled by linear interpolation per coordinate."""
    p = points.copy()
    if not valid.any():
        return p
    t = np.arange(len(p))
    flat = p.reshape(len(p), -1)
    for c in range(flat.shape[1]):
        flat[~valid, c] = np.interp(t[~valid], t[valid], flat[valid, c])
    return flat.reshape(p.shape)


# ----------------------------------------------------------------------------- scorers
def image_scores(r: Render, cfg: ScoreConfig) -> dict:
    """Full-frame, face, head and head-boundary-band PSNR / SSIM, LPIPS (or its
    unavailability). The band comes from the recorded head mask (``r.gt.head``)."""
    keys = ("psnr", "ssim", "psnr_face", "ssim_face", "psnr_head", "ssim_head", "psnr_band",
            "ssim_band", "lpips")
    if r.gt is None:
        return dict.fromkeys(keys, NA)
    from eval.metrics.frames import boundary_band, image_metrics

    im = image_metrics(r.frames, r.gt.frames, face_masks=r.gt.face, head_masks=r.gt.head,
                       band_masks=boundary_band(r.gt.head))
    out = {k: (NA if getattr(im, k) is None else getattr(im, k)) for k in keys}
    out["lpips"] = im.lpips if isinstance(im.lpips, float) else str(im.lpips)
    return out


def speckle_scores(r: Render, cfg: ScoreConfig) -> dict:
    """Stray dots per frame (``eval.metrics.speckle``): isolated off-colour pixels the render
    adds that the recording does not have."""
    if r.gt is None:
        return {"speckles": NA}
    from eval.metrics.speckle import speckles_per_frame

    return {"speckles": speckles_per_frame(r.frames, r.gt.frames)}


def open_mouth_scores(r: Render, cfg: ScoreConfig) -> dict:
    """The mouth when the recorded one is widest open (``eval.metrics.open_mouth``): the
    rendered/recorded gap ratio at the top decile, head and mouth-box PSNR at the top
    quartile."""
    keys = ("aperture_ratio_top", "psnr_head_open", "psnr_mouth_open")
    if r.gt is None or not cfg.landmarks or r.gt_points is None:
        return dict.fromkeys(keys, NA)
    from eval.metrics.open_mouth import open_mouth_scores as score

    pts = None
    if r.points is not None:
        pts = np.where((r.valid & r.gt_valid)[:, None, None], r.points, np.nan)
    gt_pts = np.where(r.gt_valid[:, None, None], r.gt_points, np.nan)
    s = score(r.frames, r.gt.frames, r.gt.head, pts, gt_pts)
    return {k: (NA if not math.isfinite(getattr(s, k)) else getattr(s, k)) for k in keys}


def landmark_scores(r: Render, cfg: ScoreConfig) -> dict:
    """Lip aperture r / spread, LMD and AUE against the recording's landmarks."""
    keys = ("aperture_r", "aperture_r_pose", "aperture_spread", "lmd_mouth", "lmd_face",
            "aue_upper", "aue_lower")
    if r.gt is None or not cfg.landmarks or r.points is None or r.gt_points is None:
        return dict.fromkeys(keys, NA)
    from eval.metrics.frames import aperture_scores, landmark_metrics

    ok = r.valid & r.gt_valid
    if ok.sum() < 3:
        out = dict.fromkeys(keys, NA)
        out["landmark_note"] = f"face found in {r.valid.mean():.0%} of the rendered frames"
        return out
    ap = aperture_scores(r.points, r.gt_points, ok, r.pose)
    lm = landmark_metrics(r.points, r.gt_points, ok)
    return {"aperture_r": ap.r, "aperture_r_pose": NA if r.pose is None else ap.r_pose,
            "aperture_spread": ap.spread, "lmd_mouth": lm.lmd_mouth,
            "lmd_face": lm.lmd_face, "aue_upper": lm.aue_upper, "aue_lower": lm.aue_lower,
            "landmark_valid": lm.valid_fraction}


def av_sync_scores(r: Render, cfg: ScoreConfig) -> dict:
    """Weight-free sync (``eval.sync.syncnet.av_sync_curve``: mouth opening vs 1-4 kHz loudness)."""
    out: dict[str, Any] = dict.fromkeys(("av_offset", "av_corr", "av_corr_ref",
                                         "av_offset_err"), NA)
    if not cfg.landmarks or r.points is None:
        return out
    if r.valid.mean() < 0.5:
        out["av_note"] = f"face found in {r.valid.mean():.0%} of the frames"
        return out
    from eval.sync.syncnet import av_sync_curve

    try:
        offs, corr = av_sync_curve(filled(r.points, r.valid), r.audio)
    except ValueError as e:
        out["av_note"] = str(e)
        return out
    j = int(np.argmax(corr))
    out.update(av_offset=int(offs[j]), av_corr=float(corr[j]))
    if r.ref_offset is not None:
        out.update(av_corr_ref=float(corr[list(offs).index(r.ref_offset)]),
                   av_offset_err=abs(int(offs[j]) - int(r.ref_offset)))
    return out


_NETS: dict[tuple[str, str], tuple[Any, str | None]] = {}


def _cached(kind: str, spec: str | None, load: Callable[[], Any]) -> tuple[Any, str | None]:
    """(model, None) or (None, 'unavailable: reason'), loaded once per process."""
    key = (kind, str(spec))
    if key not in _NETS:
        try:
            _NETS[key] = (load(), None)
        except Exception as e:  # absent offline: reported, never guessed
            _NETS[key] = (None, f"unavailable: {str(e).splitlines()[0][:120]}")
    return _NETS[key]


def syncnet_scores(r: Render, cfg: ScoreConfig) -> dict:
    """SyncNet LSE-C / LSE-D when its weights load."""
    from eval.sync.syncnet import load_syncnet, sync_scores

    net, reason = _cached("syncnet", cfg.syncnet, lambda: load_syncnet(cfg.syncnet))
    if net is None:
        return {"lse_c": reason, "lse_d": reason, "syncnet_offset": reason}
    if r.points is None or not r.valid.any():
        return {"lse_c": NA, "lse_d": NA, "syncnet_offset": NA}
    s = sync_scores(r.frames, r.audio, net, points=filled(r.points, r.valid))
    return {"lse_c": s.lse_c, "lse_d": s.lse_d, "syncnet_offset": s.offset}


def sync_expert_scores(r: Render, cfg: ScoreConfig) -> dict:
    """The offline landmark sync expert (``eval.sync.expert``): LSE-style confidence
    (median - min distance over offsets +-15), min distance and best offset; 'unavailable'
    for a render in which FaceMesh finds no face (it scores mouths, and there is none)."""
    def load():
        from eval.sync.expert import load_sync_expert

        return load_sync_expert(cfg.sync_expert)

    expert, reason = _cached("sync_expert", cfg.sync_expert, load)
    if expert is None:
        return {"sync_expert_conf": reason, "sync_expert_dist": reason,
                "sync_expert_offset": reason}
    from core.errors import InputError
    from eval.sync.expert import score_video

    try:
        s = score_video(expert, r.frames, r.audio)
    except InputError as e:  # a render in which FaceMesh finds no face has no lip-sync score
        if e.code not in ("no_face", "too_short"):
            raise
        why = f"unavailable: {e.problem}"
        return {"sync_expert_conf": why, "sync_expert_dist": why, "sync_expert_offset": why}
    return {"sync_expert_conf": float(s.confidence), "sync_expert_dist": float(s.distance),
            "sync_expert_offset": int(s.best_offset)}


#: Every scorer, in order; each render of a cell is scored by all of them.
SCORERS: tuple[Scorer, ...] = (image_scores, speckle_scores, landmark_scores, open_mouth_scores,
                               av_sync_scores, syncnet_scores, sync_expert_scores)


def score_render(r: Render, cfg: ScoreConfig,
                 scorers: tuple[Scorer, ...] = SCORERS) -> dict:
    """All scores of one render, merged into one flat dict (floats, ints or strings)."""
    out: dict[str, Any] = {}
    for f in scorers:
        out.update(f(r, cfg))
    return {k: (float(v) if isinstance(v, (float, np.floating)) and math.isfinite(v)
                else (str(v) if isinstance(v, (float, np.floating)) else v))
            for k, v in out.items()}
