"""The clip's square crop on real clips (core.data.crop)."""
from __future__ import annotations

import numpy as np
import pytest

from core.data.crop import choose_crop
from core.data.landmarks import LandmarkTrack
from core.data.media import probe
from tests.test_landmarks import RES, clip_path, tracked


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
