"""The timing chain of a Talk render and the measure of its lips against loudness
(:mod:`eval.studies.talk_motion`): the loudness sits on the video frame grid, the lag
convention, the chance level of ``r``, the mouth code predicted from new audio follows
that audio frame for frame (the recording's offset re-times only the training recording),
and an avatar with a mouth drive gives its motion fields the features of silence.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.data.media import read_audio
from eval.studies.talk_motion import chance_r, frame_loudness, lagged_r

SPF = 640  # samples per video frame (16 kHz, 25 fps)


def _burst(first: int, last: int, frames: int = 100) -> np.ndarray:
    """A 300 Hz tone on frames ``first..last`` (inclusive) over faint noise."""
    t = np.arange((last + 1 - first) * SPF) / 16000
    w = (1e-4 * np.random.default_rng(0).standard_normal(frames * SPF)).astype(np.float32)
    w[first * SPF:(last + 1) * SPF] += (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    return w


def test_loudness_sits_on_the_frame_grid_and_lags_read_the_right_way() -> None:
    loud = frame_loudness(_burst(50, 69), 100)
    assert (loud[50:70] > 0.9).all() and (loud[:48] < 0.05).all() and (loud[72:] < 0.05).all()
    # the 25 ms analysis window spills as far before the onset as after the offset: centred
    assert loud[49] < 0.6 and loud[70] < 0.6 and abs(loud[49] - loud[70]) < 0.1
    gap = np.roll(loud, 2)                        # an "aperture" 2 frames after the sound
    lags = lagged_r(gap, loud, np.ones(100, bool))
    assert max(lags, key=lags.get) == 2 and lags[2] > 0.99


def test_chance_level_of_r() -> None:
    """White noise against white noise: 95 % of |r| under 1.96 / sqrt(n); a slow signal
    against another reaches far larger r by chance, and the measure says so."""
    g = np.random.default_rng(1)
    n = 1000
    white = chance_r(g.standard_normal(n), g.standard_normal(n), np.ones(n, bool))
    assert 0.04 < white < 0.09, white                   # 1.96 / sqrt(1000) = 0.062
    slow = [np.convolve(g.standard_normal(n + 49), np.ones(50) / 50, "valid") for _ in range(2)]
    assert chance_r(slow[0], slow[1], np.ones(n, bool)) > 3 * white
    assert np.isnan(chance_r(np.ones(40), np.ones(40), np.ones(40, bool)))


def test_predicted_mouth_follows_new_audio_frame_for_frame(audio_dir: Path) -> None:
    """Delaying the audio by k frames delays the predicted mouth code by exactly k frames,
    and the recording's audio-video offset stored in a drive leaves codes for new audio
    unchanged (it re-times only the training recording)."""
    from core.data.mouth_code import MouthCodeStats
    from core.model.mouth_drive import MouthDrive, lagged_corr
    from core.model.mouth_predictor import load_predictor

    model, meta = load_predictor()
    stats = MouthCodeStats(np.zeros(4, np.float32), np.ones(4, np.float32))
    drive = MouthDrive(model, np.asarray(meta["gain"], np.float32), stats, av_offset=0)
    speech = read_audio(audio_dir / "en_radio31.wav")[: 4 * 16000]
    T, k = 100, 3
    code = drive.predicted(speech, T).numpy()
    late = np.concatenate([speech[:k * SPF] * 0.0, speech])[: T * SPF]
    moved = drive.predicted(late, T).numpy()
    # moved[t] should be code[t - k]: lagged_corr(pred, target) reads pred[t + lag]
    curve = lagged_corr(moved[:, 0], code[:, 0], max_offset=6)
    assert max(curve, key=curve.get) == k and curve[k] > 0.9, curve
    offset = MouthDrive(model, drive.gain, stats, av_offset=5)
    assert np.array_equal(offset.predicted(speech, T).numpy(), code)


def test_fields_hear_silence_when_a_mouth_drive_speaks(tiny_avatar: Path, audio_dir: Path) -> None:
    """An avatar with a mouth drive: its motion fields' own audio input is the features of
    digital silence, the same whatever it says; the speech reaches the mouth through the
    predicted code. Without a drive the fields hear the speech."""
    import torch

    from core.data.audio import AudioFeatureSpec
    from core.data.features import audio_features, feature_config
    from core.model.avatar import load_avatar
    from core.synthesize import field_audio

    av = load_avatar(tiny_avatar)
    assert av.drive is not None
    cfg = feature_config(AudioFeatureSpec.from_dict(av.meta["audio"]))
    speech = read_audio(audio_dir / "en_radio31.wav")[: 4 * 16000]
    held = field_audio(av, speech[: 2 * 16000], 50)
    assert torch.equal(held, field_audio(av, speech[2 * 16000:], 50))    # not the speech
    assert torch.equal(held, audio_features(np.zeros(50 * SPF, np.float32), 50, cfg))
    assert torch.equal(held, held[:1, :1].expand_as(held))               # one constant input
    spoken = audio_features(speech[: 2 * 16000], 50, cfg)
    av.drive = None
    assert torch.equal(field_audio(av, speech[: 2 * 16000], 50), spoken)
    assert (spoken - held).abs().mean() > 0.5


def test_own_motion_measures_the_recorded_lips_against_their_own_loudness(may_clip: Path) -> None:
    """The recording's side of the table: the aperture FaceMesh reads off the processed
    clip's frames, correlated with the loudness of the clip's own audio by lag (the same
    functions as for a render), with its chance level and the recording's offset."""
    from core.data.dataset import ProcessedClip
    from core.data.media import iter_frames
    from eval.studies.talk_motion import aperture, own_motion

    got = own_motion(may_clip)
    gap, ok = aperture(np.stack(list(iter_frames(may_clip / "frames.mp4", fps=25.0))))
    loud = frame_loudness(ProcessedClip.load(may_clip).arrays["audio"].numpy(), len(gap))
    assert ok.mean() > 0.9 and got["std"] == pytest.approx(float(np.nanstd(gap)))
    assert got["r_lags"] == lagged_r(gap, loud, ok) and set(got["r_lags"]) == set(range(5))
    assert all(-1.0 <= r <= 1.0 for r in got["r_lags"].values())
    assert got["r_lags"][got["best_lag"]] == max(got["r_lags"].values())
    assert got["av_offset"] == ProcessedClip.load(may_clip).av_offset
    assert 0.0 < got["r_chance"] < 1.0
