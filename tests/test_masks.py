"""Masks on real clips: labels, lips boxes, background and torso plates (core.data.masks)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from core.data.masks import (
    FACE_OVAL,
    INNER_LIPS,
    OUTER_LIPS,
    Label,
    background_plate,
    head_mask,
    lips_boxes,
    segment,
    torso_plate,
)
from core.data.media import read_audio
from tests.test_landmarks import RES, clip_path, tracked


@functools.cache
def labelled(name: str):
    _vt, frames, pts, _pose = tracked(name)
    return frames, pts, segment(frames, pts[..., :2])


@pytest.mark.parametrize("name", ["may_5s.mp4", "woman_1080p_7s_30fps.mp4"])
def test_labels_are_plausible(name):
    frames, pts, lab = labelled(name)
    T = len(frames)
    assert lab.shape == (T, RES, RES) and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= {0, 1, 2, 3, 4}
    frac = [(lab == k).mean() for k in range(5)]
    assert frac[Label.BACKGROUND] > 0.1 and frac[Label.TORSO] > 0.05
    assert 0.03 < frac[Label.HAIR] < 0.4 and 0.08 < frac[Label.FACE] < 0.45
    v = np.arange(RES)[None, :, None] + 0.5
    chin = pts[:, 152, 1][:, None, None]
    for k, below in [(Label.HAIR, False), (Label.TORSO, True), (Label.FACE, False)]:
        m = lab == k
        mean_v = (v * m).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
        ok = (mean_v > chin[:, 0, 0]) if below else (mean_v < chin[:, 0, 0])
        assert ok.mean() > 0.95, Label(k).name
    # face pixels lie inside the face-oval polygon's box; mouth inside the lips box
    boxes = lips_boxes(pts, RES)
    for t in range(0, T, 7):
        ys, xs = np.nonzero(lab[t] == Label.MOUTH)
        if len(xs):
            x0, y0, x1, y1 = boxes[t]
            assert xs.min() >= x0 - 1 and xs.max() < x1 + 1 and ys.min() >= y0 - 1 and ys.max() < y1 + 1
        ys, xs = np.nonzero(lab[t] == Label.FACE)
        oval = pts[t, list(FACE_OVAL), :2]
        assert xs.min() >= oval[:, 0].min() - 2 and xs.max() <= oval[:, 0].max() + 1


def test_lips_boxes_contain_outer_lips():
    _, pts, _ = labelled("may_5s.mp4")
    b = lips_boxes(pts, RES)
    assert b.shape == (len(pts), 4) and b.dtype == np.int32
    lips = pts[:, list(OUTER_LIPS), :2]
    assert (b[:, 0] <= lips[..., 0].min(1)).all() and (b[:, 2] >= lips[..., 0].max(1)).all()
    assert (b[:, 1] <= lips[..., 1].min(1)).all() and (b[:, 3] >= lips[..., 1].max(1)).all()
    assert ((b[:, 2] - b[:, 0]) > 10).all() and ((b[:, 3] - b[:, 1]) > 3).all()


def test_mouth_interior_follows_speech():
    """may_5s rests with the lips parted (teeth showing in the pauses), so the raw
    mouth area barely correlates with loudness frame by frame; the mouth's
    *movement* does: |d area / dt| (smoothed) vs the audio RMS envelope."""
    _frames, _pts, lab = labelled("may_5s.mp4")
    audio = read_audio(clip_path("may_5s.mp4"))
    T = min(len(lab), len(audio) // 640)
    rms = np.sqrt((audio[: T * 640].reshape(T, 640) ** 2).mean(1))
    area = (lab[:T] == Label.MOUTH).mean((1, 2))
    assert area.max() > 0.002 and (area > 0).mean() > 0.5
    raw = np.corrcoef(area, rms)[0, 1]
    motion = gaussian_filter1d(np.abs(np.gradient(area)), 2)
    env = gaussian_filter1d(rms, 2)
    r = np.corrcoef(motion, env)[0, 1]
    print(f"may_5s: corr(mouth area, rms)={raw:.3f}; corr(|d area|, rms envelope)={r:.3f}")
    assert r > 0.3
    # speech vs pause: the mouth changes more while she speaks
    loud = env > np.median(env)
    assert motion[loud].mean() > 1.2 * motion[~loud].mean()


def test_background_plate_matches_visible_background():
    frames, _pts, lab = labelled("may_5s.mp4")
    plate = background_plate(frames, lab)
    assert plate.shape == (RES, RES, 3) and plate.dtype == np.uint8
    # where a frame shows background away from the person, the plate agrees with it
    import cv2

    errs = []
    for t in range(0, len(frames), 10):
        bg = cv2.erode((lab[t] == 0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        errs.append(np.abs(plate[bg].astype(int) - frames[t][bg].astype(int)).mean())
    assert np.mean(errs) < 10
    # never-seen pixels (behind the head) are inpainted, not left black
    always = (lab > 0).all(0)
    assert always.any() and plate[always].mean() > 20


def test_background_plate_synthetic_moving_person():
    rng = np.random.default_rng(1)
    bg = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    frames, labs = [], []
    for x in (5, 25, 45):
        f = bg.copy()
        f[20:40, x:x + 14] = 255
        lab = np.zeros((64, 64), np.uint8)
        lab[20:40, x:x + 14] = Label.FACE
        frames.append(f)
        labs.append(lab)
    plate = background_plate(iter(frames), iter(labs))
    assert np.array_equal(plate, bg)  # every pixel is far from the person in some frame


def test_torso_plate_continues_neck_and_background_under_the_head():
    """Known answer: background colour above, neck colour below, a head disc in between.
    Filled pixels next to the neck take the neck colour, those next to the background its
    colour; no pixel outside the head changes."""
    H = W = 64
    bg, neck, skin = np.array([0, 200, 220]), np.array([120, 80, 60]), np.array([230, 180, 150])
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:] = bg
    frame[40:, 24:40] = neck
    lab = np.zeros((H, W), np.uint8)
    lab[40:, 24:40] = Label.TORSO
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 28) ** 2 + (xx - 32) ** 2 < 14 ** 2
    frame[disc] = skin
    lab[disc] = Label.FACE
    out = torso_plate(frame, lab)
    assert np.array_equal(out[~disc], frame[~disc])
    dist = lambda px, c: np.abs(px.astype(float) - c).sum(-1)  # noqa: E731
    under_chin = out[38:41, 28:36][disc[38:41, 28:36]]          # the disc's bottom, above the neck
    assert len(under_chin) and (dist(under_chin, neck) < dist(under_chin, bg)).all()
    top = out[15:17, 28:36][disc[15:17, 28:36]]
    assert len(top) and (dist(top, bg) < 30).all()
    assert not (dist(out[disc], skin) < 60).any()                # nothing of the head stays


def test_torso_plate_replaces_only_the_head():
    frames, _pts, lab = labelled("may_5s.mp4")
    t = 40
    out = torso_plate(frames[t], lab[t])
    head = head_mask(lab[t])
    assert head.sum() > 1000
    assert np.array_equal(out[~head], frames[t][~head])
    # the head area is filled from its surroundings: its colours lie within those of the
    # non-head pixels (per channel, up to rounding), not the recorded face's
    lo, hi = frames[t][~head].min(0).astype(int), frames[t][~head].max(0).astype(int)
    assert ((out[head] >= lo - 1) & (out[head] <= hi + 1)).all()
    assert np.abs(out[head].astype(int) - frames[t][head]).mean() > 10
    # a batch gives the same plates as one frame at a time
    batch = torso_plate(frames[t - 1:t + 2], lab[t - 1:t + 2])
    assert batch.shape == (3, *frames[t].shape) and batch.dtype == np.uint8
    assert np.array_equal(batch[1], out)


def test_segment_accepts_iterables_and_checks_lengths():
    frames, pts, lab = labelled("may_5s.mp4")
    lab2 = segment(iter(list(frames[:3])), pts[:3, :, :2])
    assert np.array_equal(lab2, lab[:3])
    with pytest.raises(ValueError):
        segment(frames[:3], pts[:2, :, :2])
    assert set(INNER_LIPS) <= set(range(478))
