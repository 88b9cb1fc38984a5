"""The clip's square crop: located in a first landmark pass, re-detected inside it.

One concept: *which square of the recorded frames is the clip*.

Flow used by preprocessing (:func:`track_video` does both passes on a file)::

    pass 1 (frames downscaled, max side ~640)
        track = detect_landmarks(frames)              # FaceMesh + full-range detector boxes
        check_faces(track, check_lost=False)          # no_face / multiple_faces only
        crop = choose_crop(track, w, h)               # (x0, y0, x1, y1) in pass-1 pixels
        crop = scale_crop(crop, W / w, W, H)          # in original pixels
    pass 2 (the same frames cropped to ``crop`` and resized to res x res)
        track2 = detect_landmarks(crops, DetectConfig(detector_boxes=False))  # re-detect
        check_faces(track2)                           # + face_lost if too many misses
        pts = track2.filled()                         # misses interpolated
        pose = fit_head_pose(pts[..., :2], pts, res)  # core.data.pose
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.data.landmarks import DetectConfig, FaceCheckConfig, LandmarkTrack, check_faces, detect_landmarks


@dataclass
class CropConfig:
    """How :func:`choose_crop` frames the head.

    Attributes:
        size_factor: crop side = ``size_factor`` x the face extent, where the
            face extent is the 90th percentile over frames of the landmark
            bounding box's larger side (forehead to chin, roughly). 2.2 keeps
            the hair, the neck and the top of the shoulders in.
        down_shift: the crop centre sits ``down_shift`` x the face extent below
            the median landmark-box centre (more neck/shoulders than sky).
        percentile: percentile of per-frame face extent used (robust max).
        motion_factor: for a head that moves a lot, the side is at least the
            5-95 percentile range of the face-box centres (larger axis) plus
            ``motion_factor`` x the face extent, so the face stays inside.
    """

    size_factor: float = 2.2
    down_shift: float = 0.1
    percentile: float = 90.0
    motion_factor: float = 1.5


def choose_crop(track: LandmarkTrack, frame_w: int, frame_h: int, cfg: CropConfig | None = None) -> tuple[int, int, int, int]:
    """One stable square crop ``(x0, y0, x1, y1)`` (pixels, end-exclusive) for the clip.

    Face box per frame: FaceMesh's landmark box, or the full-range detector's
    box where FaceMesh missed (:meth:`LandmarkTrack.face_boxes`).
    Centre: the median over those frames of the face-box centre,
    moved down by ``cfg.down_shift`` x face extent. Side: ``cfg.size_factor`` x
    the robust face extent.

    Pad policy: there is no padding. If the wanted side exceeds the frame's
    shorter side it is reduced to that side; then the square is shifted (not
    shrunk) to lie inside the frame. So the head may sit off-centre, or
    fill more of the crop than asked, when it is near a frame edge.

    Args:
        track: landmarks in pixels of a ``frame_w x frame_h`` frame.
    Raises:
        ValueError: no valid frame in ``track``.
    """
    cfg = cfg or CropConfig()
    located = track.located
    if not located.any():
        raise ValueError("choose_crop needs at least one frame with a face")
    b = track.face_boxes()[located]
    ext = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    extent = float(np.percentile(ext, cfg.percentile))
    cx = float(np.median((b[:, 0] + b[:, 2]) / 2))
    cy = float(np.median((b[:, 1] + b[:, 3]) / 2)) + cfg.down_shift * extent
    c_all = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    spread = float(np.max(np.percentile(c_all, 95, 0) - np.percentile(c_all, 5, 0)))
    want = max(cfg.size_factor * extent, spread + cfg.motion_factor * extent)
    side = round(min(want, frame_w, frame_h))
    side = max(side, 1)
    x0 = round(cx - side / 2)
    y0 = round(cy - side / 2)
    x0 = min(max(x0, 0), frame_w - side)
    y0 = min(max(y0, 0), frame_h - side)
    return (int(x0), int(y0), int(x0 + side), int(y0 + side))


def crop_intrinsics(K, res_from: int, res_to: int):
    """(3, 3) pinhole intrinsics (a torch tensor, copied) of a square crop drawn at
    ``res_to`` px instead of ``res_from``: focal lengths scaled by ``res_to / res_from``,
    principal point at the crop's centre, ``res_to / 2`` (pixel centres at ``j + 0.5``)."""
    K = K.clone()
    K[:2] *= res_to / res_from
    K[0, 2] = K[1, 2] = res_to / 2.0
    return K


def resize_crops(crops, res: int):
    """(n, H, W, 3) square crops (a torch tensor, uint8 or float) resized to (n, res, res, 3)
    of the same dtype: bilinear, antialiased when shrinking, 16 crops at a time (bounded float
    memory); uint8 is rounded back."""
    import torch
    import torch.nn.functional as F

    out = torch.empty((crops.shape[0], res, res, crops.shape[-1]), dtype=crops.dtype,
                      device=crops.device)
    for s in range(0, crops.shape[0], 16):
        x = F.interpolate(crops[s:s + 16].permute(0, 3, 1, 2).float(), size=(res, res),
                          mode="bilinear", align_corners=False, antialias=res < crops.shape[1])
        if crops.dtype == torch.uint8:
            x = x.round().clamp(0, 255)
        out[s:s + 16] = x.to(crops.dtype).permute(0, 2, 3, 1)
    return out


def scale_crop(crop: Sequence[int], scale: float, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
    """Scale a square crop found on downscaled frames to the original frames.

    Args:
        crop: ``(x0, y0, x1, y1)`` on the downscaled frames.
        scale: original size / downscaled size (e.g. 1920/640 = 3).
        frame_w, frame_h: original frame size; the result is square and inside it.
    """
    x0, y0, x1, y1 = crop
    side = round(min((x1 - x0) * scale, frame_w, frame_h))
    cx = (x0 + x1) / 2 * scale
    cy = (y0 + y1) / 2 * scale
    nx = min(max(round(cx - side / 2), 0), frame_w - side)
    ny = min(max(round(cy - side / 2), 0), frame_h - side)
    return (int(nx), int(ny), int(nx + side), int(ny + side))


# ---------------------------------------------------------------------------
# The two detection passes of a video file (convenience for preprocessing/tests)
# ---------------------------------------------------------------------------
@dataclass
class TrackConfig:
    """All settings of :func:`track_video`.

    Attributes:
        pass1_max_side: pass-1 frames are downscaled so their longer side is at
            most this many pixels.
        detect: FaceMesh settings (pass 2 runs them with ``detector_boxes=False``).
        check: face-count thresholds.
        crop: crop framing.
    """

    pass1_max_side: int = 640
    detect: DetectConfig = field(default_factory=DetectConfig)
    check: FaceCheckConfig = field(default_factory=FaceCheckConfig)
    crop: CropConfig = field(default_factory=CropConfig)


@dataclass
class VideoTrack:
    """Result of :func:`track_video`.

    Attributes:
        crop: ``(x0, y0, x1, y1)`` square crop in the video's displayed pixels.
        res: side of the cropped frames.
        track: pass-2 :class:`LandmarkTrack` in crop pixels at ``res``.
        pass1: pass-1 :class:`LandmarkTrack` on the downscaled full frames.
        pass1_scale: original pixels per pass-1 pixel.
    """

    crop: tuple[int, int, int, int]
    res: int
    track: LandmarkTrack
    pass1: LandmarkTrack
    pass1_scale: float


def track_video(path, res: int = 256, fps: float = 25.0, max_frames: int | None = None,
                cfg: TrackConfig | None = None) -> VideoTrack:
    """Both detection passes of a video ("crop, re-detect").

    Pass 1: full frames downscaled to ``cfg.pass1_max_side``; FaceMesh + the
    full-range face detector; ``check_faces(check_lost=False)`` (no_face,
    multiple_faces); :func:`choose_crop` from the frames where a face was
    located. Pass 2: the frames cropped and resized to ``res x res``; FaceMesh
    again; ``check_faces`` (face_lost if the face is missing in more than
    ``cfg.check.max_lost_fraction`` of the frames).

    Frames come from ``core.data.media.iter_frames`` (25 fps timeline). The cropped
    frames are not kept; read them again with
    ``iter_frames(path, fps, size=res, crop=result.crop)``.

    Raises:
        InputError: 'no_face', 'multiple_faces', 'face_lost' (and media errors).
    """
    from core.data.media import iter_frames, probe

    cfg = cfg or TrackConfig()
    info = probe(path)
    W, H = info.width, info.height
    s = min(1.0, cfg.pass1_max_side / max(W, H))
    w1, h1 = max(1, round(W * s)), max(1, round(H * s))
    size1 = None if s == 1.0 else (w1, h1)
    pass1 = detect_landmarks(iter_frames(path, fps=fps, size=size1, max_frames=max_frames), cfg.detect)
    check_faces(pass1, cfg.check, check_lost=False)
    c1 = choose_crop(pass1, w1, h1, cfg.crop)
    scale = W / w1
    crop = scale_crop(c1, scale, W, H)
    det2 = DetectConfig(**{**cfg.detect.__dict__, "detector_boxes": False})
    track = detect_landmarks(iter_frames(path, fps=fps, size=res, crop=crop, max_frames=max_frames), det2)
    check_faces(track, cfg.check, check_lost=True)
    return VideoTrack(crop=crop, res=int(res), track=track, pass1=pass1, pass1_scale=float(scale))
