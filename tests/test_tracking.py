"""Tracking on real clips: landmarks, crop, input checks, head pose (core/tracking.py).

Shared, cached helpers (``tracked``, ``clip_frames``) are also used by
test_masks.py and test_expression.py so every clip is decoded and tracked once
per session.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from core.data.media import iter_frames, probe
from core.data.landmarks import (
    RIGID_IDX,
    DetectConfig,
    FaceCheckConfig,
    HeadPose,
    LandmarkTrack,
    check_faces,
    choose_crop,
    detect_landmarks,
    fit_head_pose,
    reprojection_error,
    rotation_angles_deg,
    track_video,
)

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
RES = 256

#: clip -> frames used (25 fps timeline): few seconds each to keep the suite fast.
CLIPS = {
    "may_5s.mp4": 125,
    "woman_20s_512x480_30fps.mp4": 75,  # 30 fps, non-square
    "woman_1080p_7s_30fps.mp4": 75,  # 1920x1080, face needs a crop
    "vox_input_00002_224.mp4": 75,  # vox crop, head motion
}


def clip_path(name: str) -> Path:
    p = DATA / "clips" / name
    if not p.exists():
        p = DATA / "short" / name
    if not p.exists():
        pytest.fail(f"missing shared clip {p}")
    return p


@functools.cache
def tracked(name: str, max_frames: int | None = None, res: int = RES):
    """(VideoTrack, frames (T,res,res,3) uint8, filled points (T,478,3), HeadPose), cached."""
    path = clip_path(name)
    n = CLIPS.get(name) if max_frames is None else max_frames
    vt = track_video(path, res=res, max_frames=n)
    frames = np.stack(list(iter_frames(path, size=res, crop=vt.crop, max_frames=n)))
    pts = vt.track.filled()
    pose = fit_head_pose(pts[..., :2], pts, res)
    return vt, frames, pts, pose


@functools.cache
def clip_frames(name: str, max_frames: int, size=None) -> np.ndarray:
    return np.stack(list(iter_frames(clip_path(name), size=size, max_frames=max_frames)))


# --------------------------------------------------------------------------- detection
def test_detect_shapes_and_units():
    vt, frames, _pts, _ = tracked("may_5s.mp4")
    tr = vt.track
    T = len(frames)
    assert tr.points.shape == (T, 478, 3) and tr.points.dtype == np.float32
    assert tr.valid.shape == (T,) and tr.valid.all()
    assert tr.num_faces.shape == (T,) and (tr.num_faces == 1).all()
    assert (tr.width, tr.height) == (RES, RES)
    # pixel units of the frames: the face is inside the frame, a sizeable part of it
    xy = tr.points[..., :2]
    assert xy.min() > -5 and xy.max() < RES + 5
    w = np.linalg.norm(xy[:, 454] - xy[:, 234], axis=1)
    assert 0.2 * RES < np.median(w) < 0.9 * RES
    # z is scaled like x: the face's depth range is a fraction of its width
    zr = np.ptp(tr.points[..., 2], axis=1)
    assert 0.2 < np.median(zr / w) < 1.5


def test_filled_interpolates_missing_frames():
    pts = np.zeros((5, 478, 3), np.float32)
    for t in range(5):
        pts[t] = t
    pts[1] = pts[3] = np.nan
    pts[0] = np.nan
    tr = LandmarkTrack(pts, ~np.isnan(pts[:, 0, 0]), np.ones(5, int), 10, 10)
    f = tr.filled()
    assert np.allclose(f[:, 0, 0], [2, 2, 2, 3, 4])


# --------------------------------------------------------------------------- crop
@pytest.mark.parametrize("name", ["woman_1080p_7s_30fps.mp4", "woman_20s_512x480_30fps.mp4"])
def test_crop_square_inside_frame_and_frames_the_head(name):
    vt, _frames, _pts, _ = tracked(name)
    info = probe(clip_path(name))
    x0, y0, x1, y1 = vt.crop
    assert x1 - x0 == y1 - y0 > 0
    assert 0 <= x0 and 0 <= y0 and x1 <= info.width and y1 <= info.height
    # the face sits in the crop with room for hair and shoulders
    b = vt.track.boxes()
    ext = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    assert 0.25 * RES < np.median(ext) < 0.75 * RES
    assert b[:, 0].min() > 0 and b[:, 2].max() < RES and b[:, 1].min() > 0 and b[:, 3].max() < RES


def test_crop_small_face_in_big_frame():
    vt, *_ = tracked("woman_1080p_7s_30fps.mp4")
    x0, _y0, x1, _y1 = vt.crop
    assert (x1 - x0) < 1080  # a real crop, not the whole frame height
    assert vt.pass1_scale == pytest.approx(3.0)


def test_choose_crop_median_and_clamp():
    pts = np.zeros((3, 478, 3), np.float32)
    for t, c in enumerate([100, 102, 300]):  # one outlier frame
        pts[t, :, 0] = np.linspace(c - 20, c + 20, 478)
        pts[t, :, 1] = np.linspace(80, 120, 478)
    tr = LandmarkTrack(pts, np.ones(3, bool), np.ones(3, int), 400, 300)
    x0, y0, x1, y1 = choose_crop(tr, 400, 300)
    assert x1 - x0 == y1 - y0
    assert x0 <= 102 - 20 and x1 >= 102 + 20  # the median face is inside
    assert 0 <= x0 and x1 <= 400 and 0 <= y0 and y1 <= 300
    tr_big = LandmarkTrack(pts * np.array([1, 4, 1], np.float32), np.ones(3, bool), np.ones(3, int), 400, 300)
    x0, y0, x1, y1 = choose_crop(tr_big, 400, 300)
    assert (x1 - x0) == 300 and y0 == 0  # shrunk to the short side, no padding


# --------------------------------------------------------------------------- checks
def test_face_mostly_absent_is_tracked_after_crop_and_redetect():
    """Full-frame FaceMesh misses this small face; the full-range detector locates it,
    and FaceMesh inside the crop tracks it: the clip is accepted."""
    vt, _frames, pts, pose = tracked("face_mostly_absent_4s.mp4", max_frames=100)
    assert vt.pass1.found_fraction < 0.5  # FaceMesh on the full frame: mostly missed
    assert vt.pass1.located.mean() > 0.9  # the full-range detector finds the face
    assert vt.track.found_fraction >= 1 - FaceCheckConfig().max_lost_fraction
    assert np.median(reprojection_error(pose, pts[..., :2], "rigid")) < 3.0


def test_two_faces_side_by_side_is_multiple_faces():
    a = clip_frames("vox_input_00002_224.mp4", 20)
    b = clip_frames("vox_audio_source_00015_224.mp4", 20)
    both = np.concatenate([a, b], axis=2)  # (T, 224, 448, 3)
    tr = detect_landmarks(both)
    with pytest.raises(InputError) as e:
        check_faces(tr, check_lost=False)
    assert e.value.code == "multiple_faces"


def test_blank_frames_are_no_face():
    rng = np.random.default_rng(0)
    frames = [np.full((256, 256, 3), 128, np.uint8) + rng.integers(0, 8, (256, 256, 3), dtype=np.uint8)
              for _ in range(8)]
    tr = detect_landmarks(frames)
    assert tr.found_fraction == 0.0
    for lost in (False, True):
        with pytest.raises(InputError) as e:
            check_faces(tr, check_lost=lost)
        assert e.value.code == "no_face"
        assert "visible" in str(e.value) and "lit" in str(e.value)


def test_face_missing_too_often_is_face_lost():
    _vt, frames, *_ = tracked("may_5s.mp4")
    f = frames[:30].copy()
    f[::2] = 0  # face gone in half the frames
    tr = detect_landmarks(f, DetectConfig(detector_boxes=False))
    assert 0.3 < tr.found_fraction < 0.7
    check_faces(tr, check_lost=False)  # pass 1 tolerates it
    with pytest.raises(InputError) as e:
        check_faces(tr)
    assert e.value.code == "face_lost"
    assert "50%" in e.value.problem and "steadier" in e.value.fix


# --------------------------------------------------------------------------- pose
@pytest.mark.parametrize("name", list(CLIPS))
def test_pose_reprojects_landmarks(name):
    _vt, frames, pts, pose = tracked(name)
    T = len(frames)
    assert isinstance(pose, HeadPose)
    assert pose.R.shape == (T, 3, 3) and pose.t.shape == (T, 3)
    assert pose.canonical.shape == (478, 3)
    err_r = reprojection_error(pose, pts[..., :2], "rigid")
    err_a = reprojection_error(pose, pts[..., :2], "all")
    print(f"{name}: f={pose.focal:.0f}px@{RES} ({pose.focal * 512 / RES:.0f}@512) "
          f"dist={pose.camera_distance().mean():.3f}m err rigid={err_r.mean():.2f} all={err_a.mean():.2f}px")
    assert err_r.mean() < 2.5 and np.percentile(err_r, 95) < 5.0
    assert err_a.mean() < 3.5
    d = pose.camera_distance()
    assert 0.4 < d.min() and d.max() < 1.0
    lo, hi = 600 * RES / 512, 1400 * RES / 512
    assert lo - 1e-6 <= pose.focal <= hi + 1e-6


def test_pose_conventions():
    _, _, pts, pose = tracked("may_5s.mp4")
    c = pose.canonical
    assert np.allclose(c.mean(0), 0, atol=1e-6)
    assert np.abs(c).max() < 0.12  # head within about +-0.1 m
    assert np.linalg.norm(c[454] - c[234]) == pytest.approx(0.14, rel=1e-4)
    assert c[454, 0] > c[234, 0]  # +x = image right (subject's left)
    assert c[152, 1] > c[10, 1]  # +y down: chin below forehead
    assert c[1, 2] < c[234, 2]  # +z into the head: nose tip nearer the camera
    V = pose.viewmats()
    assert V.shape == (len(pts), 4, 4) and V.dtype == np.float32
    assert np.allclose(V[:, 3], [0, 0, 0, 1])
    assert np.allclose(np.einsum("tij,tkj->tik", pose.R, pose.R), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(pose.R), 1, atol=1e-5)
    # frontal camera: in front of the face (-z side) and looking at it
    cam = -np.einsum("tji,tj->ti", pose.R, pose.t)  # camera centre in the world
    assert (cam[:, 2] < -0.3).all()
    K = pose.K()
    assert K[0, 2] == K[1, 2] == RES / 2 and K[0, 0] == K[1, 1] == pytest.approx(pose.focal)
    assert pose.K(512)[0, 0] == pytest.approx(2 * pose.focal) and pose.K(512)[0, 2] == 256
    # projection through viewmat + K equals project()
    Xh = np.concatenate([c, np.ones((478, 1))], 1)
    xc = (V[5] @ Xh.T).T[:, :3]
    uv = (K @ xc.T).T
    uv = uv[:, :2] / uv[:, 2:]
    assert np.allclose(uv, pose.project()[5], atol=1e-3)


@pytest.mark.parametrize(("name", "med", "p95"), [
    ("woman_20s_512x480_30fps.mp4", 0.3, 1.0),  # still-ish head
    ("may_5s.mp4", 0.8, 2.0),  # nods while speaking
])
def test_pose_jitter_small(name, med, p95):
    from scipy.ndimage import gaussian_filter1d

    _, _, _, pose = tracked(name)
    d = rotation_angles_deg(pose.R)
    # high-frequency part: rotation vectors minus their 3-frame-sigma smoothing
    rv = np.array([_rotvec(r) for r in pose.R])
    hf = np.degrees(np.linalg.norm(rv - gaussian_filter1d(rv, 3, axis=0, mode="nearest"), axis=1))
    print(f"{name} jitter: frame-to-frame rotation median {np.median(d):.3f} p95 {np.percentile(d, 95):.3f} deg; "
          f"high-frequency rms {np.sqrt((hf**2).mean()):.3f} deg")
    assert np.median(d) < med and np.percentile(d, 95) < p95
    dt = np.linalg.norm(np.diff(pose.t, axis=0), axis=1)
    assert np.median(dt) < 0.003  # metres per frame


def _rotvec(R: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(R.astype(np.float64))[0].ravel()


def test_pose_rejects_nan_points():
    _, _, pts, _ = tracked("may_5s.mp4")
    bad = pts[:10].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError):
        fit_head_pose(bad[..., :2], bad, RES)


def test_rigid_subset_excludes_mouth_and_lids():
    from core.data.masks import INNER_LIPS, OUTER_LIPS

    assert not set(RIGID_IDX) & (set(INNER_LIPS) | set(OUTER_LIPS) | {152, 159, 145, 386, 374})


def test_pose_state_roundtrip(tmp_path):
    _, _, _, pose = tracked("may_5s.mp4")
    np.savez(tmp_path / "pose.npz", **pose.state())
    back = HeadPose.from_state(np.load(tmp_path / "pose.npz"))
    assert np.array_equal(back.viewmats(), pose.viewmats()) and np.array_equal(back.K(), pose.K())
