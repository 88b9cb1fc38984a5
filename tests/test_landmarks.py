"""FaceMesh landmarks on real clips: detection, index sets, face checks (core.data.landmarks).

Shared, cached helpers (``tracked``, ``clip_frames``) are also used by
test_crop.py, test_pose.py, test_masks.py and test_expression.py, so every clip is
decoded and tracked once per test run.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from core.data.media import iter_frames
from core.data.crop import track_video
from core.data.landmarks import SKULL_LANDMARKS, DetectConfig, FaceCheckConfig, LandmarkTrack, check_faces, detect_landmarks
from core.data.pose import fit_head_pose, reprojection_error

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



def test_skull_landmarks_exclude_mouth_lids_and_brows():
    from core.data.masks import INNER_LIPS, OUTER_LIPS

    lids_chin = {152, 159, 145, 386, 374}
    brows = {70, 63, 105, 66, 107, 300, 293, 334, 296, 336}
    assert not set(SKULL_LANDMARKS) & (set(INNER_LIPS) | set(OUTER_LIPS) | lids_chin | brows)
