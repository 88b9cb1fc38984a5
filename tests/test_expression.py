"""Expression signals from landmarks (core.data.expression), on real tracked clips."""
from __future__ import annotations

import numpy as np
import pytest

from core.data.expression import AU_NAMES, SIGNAL_NAMES, Expression, expression_signals
from core.data.masks import Label
from tests.test_masks import labelled
from tests.test_landmarks import tracked


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Rz @ Rx @ Ry


def test_shapes_names_ranges():
    _, _, pts, _ = tracked("may_5s.mp4")
    ex = expression_signals(pts)
    T = len(pts)
    assert isinstance(ex, Expression) and len(ex) == T
    assert ex.values.shape == (T, len(SIGNAL_NAMES)) and ex.values.dtype == np.float32
    assert ex.au.shape == (T, 7) and ex.au.dtype == np.float32
    assert ex.names == SIGNAL_NAMES and ex.au_names == AU_NAMES == ("AU01", "AU04", "AU05", "AU06", "AU07", "AU45", "AU25")
    assert np.all((ex.au >= 0) & (ex.au <= 1))
    for k in ("blink_left", "blink_right"):
        assert np.all((ex[k] >= 0) & (ex[k] <= 1))
    assert np.array_equal(ex["AU45"], ex.au[:, 5])
    assert ex.model_input().shape == (T, 6)
    assert 0.2 < np.median(ex["brow_raise_left"]) < 1.0  # brow above the eye, IOD units
    assert 0.0 <= ex["lips_apart"].min() and ex["lips_apart"].max() < 0.4
    with pytest.raises(KeyError):
        ex["nope"]


def test_lips_apart_tracks_mouth_mask():
    _frames, pts, lab = labelled("may_5s.mp4")
    ex = expression_signals(pts)
    area = (lab == Label.MOUTH).mean((1, 2))
    r = np.corrcoef(ex["lips_apart"], area)[0, 1]
    assert r > 0.8, r
    assert np.corrcoef(ex["AU25"], ex["lips_apart"])[0, 1] > 0.9


def test_blink_on_real_clip():
    """woman_1080p closes her eyes around 1 s in."""
    _, _, pts, _ = tracked("woman_1080p_7s_30fps.mp4")
    ex = expression_signals(pts)
    bl, br = ex["blink_left"], ex["blink_right"]
    assert bl.max() > 0.9 and br.max() > 0.9
    assert np.corrcoef(bl, br)[0, 1] > 0.7  # both eyes blink together
    closed = np.argmax(bl)
    assert 15 <= closed <= 40


def test_synthetic_blink_and_brow_raise():
    _, _, pts, _ = tracked("may_5s.mp4")
    P = pts.astype(np.float64).copy()
    base = expression_signals(P)
    # close the left eye (upper lid onto the lower lid) in frames 20-24
    for up, lo in [(387, 373), (386, 374), (385, 380), (388, 390), (384, 381)]:
        P[20:25, up] = P[20:25, lo]
    # raise both brows by 15 % of the eye-corner distance in frames 60-69
    iod = np.linalg.norm(P[:, 33] - P[:, 263], axis=1)[:, None]
    brows = [70, 63, 105, 66, 107, 55, 65, 52, 53, 46, 300, 293, 334, 296, 336, 285, 295, 282, 283, 276]
    P[60:70, brows, 1] -= 0.15 * iod[60:70]
    ex = expression_signals(P)
    assert ex["blink_left"][20:25].min() > 0.9
    assert np.abs(ex["blink_right"][20:25] - base["blink_right"][20:25]).max() < 0.15
    up = ex["brow_raise_left"][60:70].mean() - base["brow_raise_left"][60:70].mean()
    assert up > 0.08
    assert ex["AU01"][60:70].mean() > 0.9 and ex["AU04"][60:70].mean() < 0.1


def test_signals_ignore_head_pose():
    _, _, pts, _ = tracked("may_5s.mp4")
    P = pts.astype(np.float64)
    rng = np.random.default_rng(0)
    Q = np.empty_like(P)
    for t in range(len(P)):
        R = _rot(*rng.uniform(-0.3, 0.3, 3))
        c = P[t].mean(0)
        Q[t] = (P[t] - c) @ R.T * rng.uniform(0.8, 1.2) + c + rng.uniform(-20, 20, 3)
    a, b = expression_signals(P), expression_signals(Q)
    assert np.abs(a.values - b.values).max() < 0.03
    assert np.abs(a.au - b.au).mean() < 0.03


def test_2d_points_accepted():
    _, _, pts, _ = tracked("may_5s.mp4")
    ex2 = expression_signals(pts[..., :2])
    ex3 = expression_signals(pts)
    assert ex2.values.shape == ex3.values.shape
    assert np.corrcoef(ex2["lips_apart"], ex3["lips_apart"])[0, 1] > 0.95
    with pytest.raises(ValueError):
        expression_signals(np.full((3, 478, 3), np.nan))
