"""Tests of eval/sync/syncnet.py: LSE definitions, SyncNet shapes on a real clip, offline offset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.data.media import read_clip
from core.data.landmarks import DetectConfig, detect_landmarks
from eval.metrics.frames import lip_aperture
from eval.sync.syncnet import (
    AVSyncConfig,
    SyncNet,
    audio_envelope,
    av_offset,
    av_sync_curve,
    face_boxes_from_points,
    load_syncnet,
    lse_from_distances,
    mfcc,
    offset_distances,
    sync_scores,
    syncnet_crops,
)

SPF = 640


@pytest.fixture(scope="session")
def clips(clips_dir) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (frames (T, 256, 256, 3), audio (T*640,), filled landmarks (T, 478, 3))."""
    out = {}
    for name, n in (("obama_20s.mp4", 250), ("may_5s.mp4", 125)):
        c = read_clip(clips_dir / name, size=256, max_frames=n)
        tr = detect_landmarks(c.frames, DetectConfig(detector_boxes=False))
        assert tr.valid.mean() > 0.95
        out[name] = (c.frames, c.audio, tr.filled())
    return out


def _shift_audio(a: np.ndarray, k: int) -> np.ndarray:
    """Delay (k > 0) or advance (k < 0) audio by k frames, zero-padded, same length."""
    s = abs(k) * SPF
    z = np.zeros(s, a.dtype)
    if k > 0:
        return np.concatenate([z, a[:-s]])
    if k < 0:
        return np.concatenate([a[s:], z])
    return a


# ----------------------------------------------------------------------------- MFCC
def test_mfcc_layout_and_scale_invariance():
    rng = np.random.default_rng(0)
    a = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    m = mfcc(a)
    assert m.shape == (13, 1 + math.ceil((16000 - 400) / 160)) and m.dtype == np.float32
    # a gain g shifts every log filter energy by log(g^2): only c0 (log energy) changes
    m1, m2 = mfcc(a, int16_scale=False), mfcc(2 * a, int16_scale=False)
    assert np.allclose(m2[0] - m1[0], math.log(4.0), atol=1e-4)
    assert np.allclose(m2[1:], m1[1:], atol=1e-3)
    # int16 scaling only moves c0 by log(32768^2) (up to rounding)
    assert np.allclose(m[0] - m1[0], math.log(32768.0 ** 2), atol=1e-3)
    # silence: log energy is log(eps)
    assert np.allclose(mfcc(np.zeros(3200, np.float32))[0], math.log(np.finfo(float).eps))


# ----------------------------------------------------------------------------- LSE
def test_lse_definitions_synthetic_matrix():
    # mean distance 10 at every offset except 6 at d = +3 and 8 at d = -2
    d = np.full((12, 31), 10.0)
    d[:, 15 + 3] = 6.0
    d[:, 15 - 2] = 8.0
    off, lse_d, lse_c, m = lse_from_distances(d)
    assert (off, lse_d, lse_c) == (3, 6.0, 4.0)
    assert m.shape == (31,)
    # against a plain numpy reading of the definitions on a random matrix
    rng = np.random.default_rng(1)
    d = rng.uniform(5, 15, (40, 31))
    off, lse_d, lse_c, _ = lse_from_distances(d)
    mean = d.mean(0)
    assert lse_d == pytest.approx(mean.min())
    assert lse_c == pytest.approx(np.median(mean) - mean.min())
    assert off == int(np.argmin(mean)) - 15


def test_offset_distances_sign_convention():
    """Audio embeddings that repeat the video's k windows later: best offset = +k."""
    rng = np.random.default_rng(2)
    v = torch.from_numpy(rng.standard_normal((50, 32))).float()
    for k in (-4, 0, 5):
        a = torch.roll(v, shifts=k, dims=0)  # a[i + k] = v[i]: audio lags by k
        d = offset_distances(v, a, vshift=15)
        assert d.shape == (50, 31)
        off, lse_d, lse_c, _ = lse_from_distances(d)
        assert off == k
        assert lse_d < 0.5 * float(d.mean()) and lse_c > 0


# ----------------------------------------------------------------------------- SyncNet
def test_syncnet_shapes():
    net = SyncNet()
    with torch.no_grad():
        assert net.forward_aud(torch.randn(3, 1, 13, 20)).shape == (3, 1024)
        assert net.forward_lip(torch.randn(2, 3, 5, 224, 224)).shape == (2, 1024)
    assert net.netcnnlip[0].weight.shape == (96, 3, 5, 7, 7)
    assert net.netcnnaud[-3].weight.shape == (512, 256, 5, 4)


def test_syncnet_random_weights_real_clip(clips):
    frames, audio, pts = clips["may_5s.mp4"]
    T = 40
    crops = syncnet_crops(frames[:T], face_boxes_from_points(pts[:T]))
    assert crops.shape == (T, 224, 224, 3) and crops.dtype == np.uint8
    torch.manual_seed(0)
    s = sync_scores(frames[:T], audio[:T * SPF], SyncNet(), points=pts[:T])
    assert s.num_windows == T - 5  # as syncnet_python: windows 0 .. T-6
    assert s.mean_dists.shape == (31,) and np.all(np.isfinite(s.mean_dists))
    assert -15 <= s.offset <= 15 and s.syncnet_offset == -s.offset
    assert math.isfinite(s.lse_d) and s.lse_d > 0 and s.lse_c >= 0
    assert s.lse_d == pytest.approx(float(s.mean_dists.min()))


def test_load_syncnet_paths(tmp_path):
    with pytest.raises(InputError) as e:
        load_syncnet(tmp_path / "nothing" / "syncnet_v2.model")
    assert e.value.code == "wrong_weights" and "syncnet_v2.model" in str(e.value)
    with pytest.raises(InputError) as e:  # hub id, offline: clear message, no download
        load_syncnet("nobody-here/no-such-syncnet", allow_download=False)
    assert e.value.code == "wrong_weights" and "downloads are off" in e.value.problem
    torch.manual_seed(1)
    ref = SyncNet()
    torch.save(ref.state_dict(), tmp_path / "syncnet_v2.model")
    net = load_syncnet(tmp_path)  # a folder holding syncnet_v2.model
    x = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        assert torch.allclose(net.forward_aud(x), ref.forward_aud(x))
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.model")
    with pytest.raises(InputError) as e:
        load_syncnet(tmp_path / "bad.model")
    assert e.value.code == "wrong_weights"


# ----------------------------------------------------------------------------- offline
@pytest.mark.parametrize("name", ["obama_20s.mp4", "may_5s.mp4"])
def test_av_offset_recovers_planted_shift(clips, name):
    _, audio, pts = clips[name]
    m = lip_aperture(pts)
    d0, c0 = av_offset(m, audio)
    assert c0 > 0.3
    # the unshifted clip: small positive offset (mouth opens just before the sound);
    # obama_20s measures +6 (240 ms) on both of its 10 s halves
    assert -1 <= d0 <= (6 if name == "obama_20s.mp4" else 3)
    for k in (-6, -3, 3, 6):
        d, c = av_offset(m, _shift_audio(audio, k))
        assert abs((d - d0) - k) <= 1, (name, k, d, d0)
        assert c > 0.3


def test_av_offset_inputs_and_curve(clips):
    frames, audio, pts = clips["may_5s.mp4"]
    offs, corr = av_sync_curve(pts, audio)
    assert offs.tolist() == list(range(-15, 16)) and corr.shape == (31,)
    assert np.all(np.abs(corr) <= 1 + 1e-9)
    d_pts = av_offset(pts, audio)
    assert av_offset(lip_aperture(pts), audio) == d_pts
    d_frames, _ = av_offset(frames, audio)  # runs FaceMesh itself
    assert abs(d_frames - d_pts[0]) <= 1
    env = audio_envelope(audio, len(pts))
    assert env.shape == (len(pts),) and np.all(np.isfinite(env))
    # unrelated audio: weak correlation
    _, c_wrong = av_offset(pts, np.roll(audio, 60 * SPF))
    assert c_wrong < d_pts[1]
    with pytest.raises(ValueError):
        av_offset(np.zeros(30), audio, AVSyncConfig(max_offset=15))
