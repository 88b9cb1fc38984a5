"""Head pose on real clips: reprojection, conventions, jitter (core.data.pose)."""
from __future__ import annotations

import numpy as np
import pytest

from core.data.pose import (HeadPose, fit_head_pose, procrustes_align, reprojection_error,
                            rotation_angles_deg, similarity_fit, similarity_fits)
from tests.test_landmarks import CLIPS, RES, tracked


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


def test_pose_state_roundtrip(tmp_path):
    _, _, _, pose = tracked("may_5s.mp4")
    np.savez(tmp_path / "pose.npz", **pose.state())
    back = HeadPose.from_state(np.load(tmp_path / "pose.npz"))
    assert np.array_equal(back.viewmats(), pose.viewmats()) and np.array_equal(back.K(), pose.K())


@pytest.mark.parametrize("dim", [2, 3])
def test_similarity_fit_recovers_a_known_transform(dim):
    """Real landmarks moved by a known scale, rotation and shift: the fit returns exactly those."""
    _, _, pts, _ = tracked("may_5s.mp4")
    src = pts[0, :, :dim].astype(np.float64)
    ang = np.radians(25.0)
    if dim == 2:
        R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    else:
        R = _rotation_matrix(np.array([0.1, -0.3, 0.2]))
    t = np.arange(1.0, dim + 1.0) * 7.0
    dst = 1.7 * src @ R.T + t
    s, R_fit, t_fit = similarity_fit(src, dst)
    assert s == pytest.approx(1.7, rel=1e-9)
    assert np.allclose(R_fit, R, atol=1e-9) and np.allclose(t_fit, t, atol=1e-6)
    # a mirrored target still gets a proper rotation (det +1), never a reflection
    _, R_m, _ = similarity_fit(src, dst * np.r_[-1.0, np.ones(dim - 1)])
    assert np.linalg.det(R_m) == pytest.approx(1.0)


def test_batched_fits_recover_each_pairs_own_transform():
    """``similarity_fits`` on a batch: each pair gets its own known scale, rotation and
    shift back, the same as ``similarity_fit`` of that pair alone (a mirrored pair included)."""
    _, _, pts, _ = tracked("may_5s.mp4")
    src = pts[:4].astype(np.float64)
    Rs = [_rotation_matrix(np.array([0.1 * k, -0.2, 0.05 * k])) for k in range(4)]
    dst = np.stack([(0.8 + 0.3 * k) * src[k] @ Rs[k].T + k for k in range(4)])
    dst[3, :, 0] *= -1.0
    s, R, t = similarity_fits(src, dst)
    assert s.shape == (4,) and R.shape == (4, 3, 3) and t.shape == (4, 3)
    for k in range(3):
        assert s[k] == pytest.approx(0.8 + 0.3 * k, rel=1e-9)
        assert np.allclose(R[k], Rs[k], atol=1e-9) and np.allclose(t[k], k, atol=1e-6)
    for k in range(4):
        one = similarity_fit(src[k], dst[k])
        assert one[0] == pytest.approx(s[k], rel=1e-12)
        assert np.allclose(one[1], R[k], atol=1e-12) and np.allclose(one[2], t[k], atol=1e-9)
    assert np.allclose(np.linalg.det(R), 1.0)


def test_procrustes_align_removes_a_per_frame_similarity():
    """Frames that differ only by a similarity transform align onto one shape."""
    _, _, pts, _ = tracked("may_5s.mp4")
    base = pts[0].astype(np.float64)
    frames = np.stack([k * base @ _rotation_matrix(np.array([0.0, 0.05 * k, 0.02])).T + k
                       for k in (1.0, 1.2, 0.8, 1.1)])
    aligned, mean = procrustes_align(frames)
    assert aligned.shape == frames.shape and mean.shape == base.shape
    assert np.abs(aligned - mean).max() < 1e-6 * np.abs(mean).max()


def _rotation_matrix(rv: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(rv.astype(np.float64))[0]
