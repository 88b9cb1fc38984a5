"""Audio drives the mouth: the phonetic front end, the mouth code, the audio-to-mouth prior,
the expression input without mouth state, and a tiny avatar whose mouth follows its audio.

Known answers come from the recordings themselves: where the front end hears a bilabial
(M/B/P) the tracked lips are closed; the shipped prior, never trained on obama_20s, predicts
its lip opening; obama_20s's audio lags its picture by about 5-6 frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.media import read_audio
from core.data.mouth_code import (BLINK_COLUMN, MOUTH_CODE_NAMES, mouth_free_expression,
                                  mouth_geometry, r2_from)
from core.data.phones import FEATURE_DIM, VISEMES, phone_features
from core.data.preprocess import PreprocessConfig, preprocess
from core.data.dataset import ProcessedClip
from core.data.expression import ExpressionConfig, expression_signals
from core.model.mouth_drive import MouthDrive, lagged_corr, measure_av_offset
from core.model.mouth_predictor import load_predictor

CLOSED, REST = VISEMES.index("closed"), VISEMES.index("rest")
OPEN = [VISEMES.index(v) for v in ("open", "wide")]


@pytest.fixture(scope="module")
def processed(clips_dir: Path, tmp_path_factory) -> dict[str, ProcessedClip]:
    """obama_20s whole at 128² (the avatar tests below use the session's may_5s and its tiny
    avatar: ``may_clip``, ``tiny_avatar``)."""
    root = tmp_path_factory.mktemp("lips")
    d = preprocess(clips_dir / "obama_20s.mp4", root / "obama_20s",
                   PreprocessConfig(res=128, full_frame=False))
    return {"obama_20s": ProcessedClip.load(d)}


def test_silence_is_rest_and_speech_is_spoken(audio_dir: Path) -> None:
    silent = phone_features(np.zeros(32000, np.float32)).numpy()
    assert silent.shape == (100, FEATURE_DIM)
    assert np.allclose(silent[:, REST], 1.0) and np.allclose(silent[:, 9:], 0.0)
    for name in ("en_radio31.wav", "zh_news.wav", "fr_macron.wav"):
        f = phone_features(read_audio(audio_dir / name)).numpy()
        post = f[:, :len(VISEMES)]
        assert np.allclose(post.sum(1), 1.0, atol=1e-5)
        assert post[:, REST].mean() < 0.5, name          # mostly speech
        assert (post.argmax(1) == CLOSED).sum() >= 5, name  # lip closures are heard
        assert len({int(v) for v in post.argmax(1)}) >= 6, name  # many mouth shapes


def test_front_end_hears_closed_lips_where_the_video_shows_them(processed) -> None:
    """Steps the decoder labels M/B/P have smaller tracked lip gaps than open vowels."""
    clip = processed["obama_20s"]
    a = clip.arrays
    code_aperture = mouth_geometry(a["points3d"].numpy())[:, 0]
    post = phone_features(a["audio"].numpy()).numpy()[:, :len(VISEMES)]
    T = len(code_aperture)
    frame_post = post[: 2 * T].reshape(T, 2, -1).mean(1)
    lag = 5                                   # obama's audio is late (see the offset test)
    vis = frame_post[lag:]
    ap = code_aperture[: T - lag]
    closed = vis[:, CLOSED] > 0.5
    opened = vis[:, OPEN].sum(1) > 0.5
    assert closed.sum() >= 10 and opened.sum() >= 10
    assert ap[closed].mean() < 0.8 * ap[opened].mean()


def test_mouth_prior_predicts_an_unseen_speaker(processed) -> None:
    model, meta = load_predictor()
    assert "obama_20s" not in meta["train_clips"]
    clip = processed["obama_20s"]
    a = clip.arrays
    drive = MouthDrive.fit(a["points3d"].numpy(), a["audio"].numpy(), 125, a["valid"].numpy())
    tracked = drive.tracked(a["points3d"].numpy()).numpy()
    pred = drive.predicted(a["audio"].numpy(), clip.num_frames).numpy()
    lags = lagged_corr(pred[:, 0], tracked[:, 0], max_offset=8)
    assert 4 <= drive.av_offset <= 7          # known lag of obama_20s, from its first 5 s
    assert lags[drive.av_offset] > 0.3        # a constant predictor has no correlation
    assert lags[drive.av_offset] > lags[0] + 0.05


def test_fit_readout_known_answers() -> None:
    """A huge penalty returns the prior's layer; a tiny one recovers a planted linear map."""
    from core.model.mouth_drive import fit_readout

    g = np.random.default_rng(0)
    hidden = g.normal(size=(400, 6))
    true = g.normal(size=(4, 7))
    target = hidden @ true[:, :-1].T + true[:, -1]
    prior = g.normal(size=(4, 7))
    assert np.allclose(fit_readout(hidden, target, prior, 1e9), prior, atol=1e-4)
    assert np.allclose(fit_readout(hidden, target, prior, 1e-6), true, atol=1e-4)
    mid = fit_readout(hidden, target, prior, 400.0)          # in between, closer to the data
    assert np.abs(mid - true).sum() < np.abs(prior - true).sum()


def _heldout_aperture_r(clip: ProcessedClip, readout, person=None) -> tuple[float, MouthDrive]:
    """Aperture r of the drive fitted on the first 5 s (offset from them, like the
    benchmark) over the last 12 s, driven by those seconds' audio alone."""
    from core.model.mouth_drive import pearson
    from core.train.person_mouth import fit_drive

    a = clip.arrays
    pts, wav, valid = a["points3d"].numpy(), a["audio"].numpy(), a["valid"].numpy().astype(bool)
    drive = fit_drive(pts, wav, 125, valid, None, readout, person)
    T = len(pts)
    start = T - 300
    pred = drive.predicted(wav[start * 640:], T - start + 8).numpy()[np.arange(T - start) + drive.av_offset]
    tracked = drive.tracked(pts).numpy()[start:]
    ok = valid[start:]
    return pearson(pred[ok, 0], tracked[ok, 0]), drive


def test_readout_learns_a_speaker_the_prior_does_not_know(processed, clips_dir: Path,
                                                          tmp_path_factory) -> None:
    """man_256_26s smiles his lips apart and parts them less when loud: the
    speaker-independent prior does not predict his held-out lip gap; the read-out fitted on
    his first 5 s does. On obama_20s, whom the prior predicts, the read-out keeps most of it.
    Stored and loaded back, the drive predicts the same codes."""
    from core.model.mouth_drive import ReadoutConfig

    root = tmp_path_factory.mktemp("readout")
    # his first 17 s: 5 s to fit on, the 12 s after them held out
    man = ProcessedClip.load(preprocess(clips_dir / "man_256_26s_30fps.mp4", root / "man",
                                        PreprocessConfig(res=64, full_frame=False,
                                                         max_frames=425)))
    prior_r, _ = _heldout_aperture_r(man, None)
    own_r, drive = _heldout_aperture_r(man, ReadoutConfig())
    assert prior_r < 0.15 and own_r > 0.35 and own_r > prior_r + 0.25
    obama_prior, _ = _heldout_aperture_r(processed["obama_20s"], None)
    obama_own, _ = _heldout_aperture_r(processed["obama_20s"], ReadoutConfig())
    assert obama_prior > 0.3 and obama_own > 0.3
    back = MouthDrive.from_tensors(drive.tensors(), drive.meta())
    assert back.mix == drive.mix == 1.0 and np.array_equal(back.readout, drive.readout)
    wav = man.arrays["audio"].numpy()[:32000]
    assert torch.equal(back.predicted(wav, 50), drive.predicted(wav, 50))
    assert not torch.equal(MouthDrive(drive.predictor, drive.gain, drive.stats).predicted(wav, 50),
                           drive.predicted(wav, 50))


def test_drive_predicts_new_speech_narrower_and_the_avatar_draws_it_wider(
        processed, tiny_avatar: Path, audio_dir: Path) -> None:
    """The study behind ``HELDOUT_SPREAD`` on a real clip: obama_20s's drive, fitted on his
    first 5 s, predicts his training seconds' lip gap about as wide as it was (0.94) and the
    15 s after them clearly narrower (0.60), still following them (r 0.48). A finished avatar
    stores the factor and draws every predicted code that much wider, exactly; a drive
    stored without it (made before) loads with 1."""
    from dataclasses import replace

    from core.model.avatar import load_avatar
    from core.model.mouth_drive import HELDOUT_SPREAD
    from eval.studies.drive_spread import measure

    m = measure(processed["obama_20s"], 125)
    assert m.frames == 500 and m.heldout_r > 0.35
    assert m.train_spread > 0.85 and m.heldout_spread < 0.8
    drive = load_avatar(tiny_avatar).drive
    assert drive.spread == HELDOUT_SPREAD == 1.4
    wav = read_audio(audio_dir / "en_radio31.wav")[:32000]
    as_fitted = replace(drive, spread=1.0).predicted(wav, 50)
    assert torch.allclose(drive.predicted(wav, 50), HELDOUT_SPREAD * as_fitted)
    t = drive.tensors()
    assert MouthDrive.from_tensors(t, drive.meta()).spread == HELDOUT_SPREAD
    del t["drive.spread"]
    assert MouthDrive.from_tensors(t, drive.meta()).spread == 1.0


def test_person_model_from_five_seconds_and_its_blend_with_the_prior(processed) -> None:
    """A predictor trained from scratch on obama_20s's first 5 s alone predicts his held-out
    lip gap (a constant has no correlation); blended with the prior and its read-out it does
    better than the prior does alone, with a spread of the order of the real one. The same
    seed gives the same model, and the drive stored and loaded back predicts the same codes."""
    from core.model.mouth_drive import ReadoutConfig
    from core.train.person_mouth import PersonMouthConfig

    clip = processed["obama_20s"]
    prior_r, _ = _heldout_aperture_r(clip, ReadoutConfig())
    own_r, own = _heldout_aperture_r(clip, ReadoutConfig(), PersonMouthConfig(weight=1.0))
    blend_r, blend = _heldout_aperture_r(clip, ReadoutConfig(), PersonMouthConfig())
    assert own_r > 0.3 and blend_r > 0.4 and blend_r > prior_r + 0.05, (prior_r, own_r, blend_r)
    assert own.blend_gain is not None and np.allclose(own.blend_gain, 1.0, atol=1e-4)
    assert np.all((blend.blend_gain > 1.0) & (blend.blend_gain < 1.6))   # members disagree
    wav = clip.arrays["audio"].numpy()[-32000:]
    _, again = _heldout_aperture_r(clip, ReadoutConfig(), PersonMouthConfig())
    assert torch.equal(again.predicted(wav, 50), blend.predicted(wav, 50))
    back = MouthDrive.from_tensors(blend.tensors(), blend.meta())
    assert back.person_weight == 0.5 and torch.equal(back.predicted(wav, 50), blend.predicted(wav, 50))
    assert not torch.equal(back.prior_codes(audio_steps(wav), 50), back.predicted(wav, 50))
    with pytest.raises(ValueError, match="weight"):
        PersonMouthConfig(weight=1.5)


def audio_steps(wav: np.ndarray) -> torch.Tensor:
    from core.model.mouth_predictor import audio_front_end

    return audio_front_end(wav, "mel+phones")


def test_offset_of_the_recording_and_of_planted_shifts(processed) -> None:
    """The whole of obama_20s reads +5 frames (audio late); advancing its audio by k frames
    takes k off, delaying it adds k: the measurement follows the audio, not the clip."""
    a = processed["obama_20s"].arrays
    pts, wav, valid = a["points3d"].numpy(), a["audio"].numpy(), a["valid"].numpy()
    base = measure_av_offset(pts, wav, valid)
    assert base.frames == 5 and base.gain > 0.1
    spf = 640
    for k in (-3, 2, 6):             # new offsets -1 ... +8 stay in the searched range of +-8
        moved = np.roll(wav, -k * spf)
        moved[len(wav) - max(k, 0) * spf:] = 0.0
        moved[: max(-k, 0) * spf] = 0.0
        assert abs(measure_av_offset(pts, moved, valid).frames - (5 - k)) <= 1, k


def test_expression_input_carries_no_mouth_state(processed) -> None:
    """On held-out seconds the brow/lid stand-ins predict how far the lips are apart; the
    input a mouth-code model gets (blink only) carries far less of it."""
    clip = processed["obama_20s"]
    lips = clip.arrays["signals"][:, clip.manifest["signal_names"].index("lips_apart")].numpy()
    expr = clip.expr.numpy()
    n = 125                                    # the training seconds; the rest is held out
    raw = r2_from(expr[n:], lips[n:])
    free = mouth_free_expression(expr)
    assert np.count_nonzero(free[:, :BLINK_COLUMN]) == 0
    assert raw > 0.15
    kept = r2_from(free[n:], lips[n:])
    assert kept < min(0.1, 0.6 * raw)
    # blink read from any narrowing of the eye (no open band) carries more of the lips
    loose = expression_signals(clip.arrays["points3d"].double().numpy(),
                               ExpressionConfig(open_fraction=1.0)).model_input()
    assert r2_from(mouth_free_expression(loose)[n:], lips[n:]) > 1.5 * kept


def test_adaptation_takes_the_offset_measured_in_preprocessing(may_clip: Path, tmp_path: Path) -> None:
    """An avatar re-times its clip by the manifest's offset (``av_offset='recording'``), or
    by its own measurement on the training seconds (``'training'``, the benchmark's)."""
    import json
    import shutil
    from dataclasses import replace

    from core.model.checkpoint import load
    from core.train.adapt import PRESETS, adapt

    clip = tmp_path / "clip"
    shutil.copytree(may_clip, clip)
    m = json.loads((clip / "manifest.json").read_text())
    m["av_offset"] = {"frames": 3, "gain": 0.1, "curve": {}, "method": "test"}
    (clip / "manifest.json").write_text(json.dumps(m))
    cfg = replace(PRESETS["tiny"], seconds=3.0, face_steps=2, mouth_steps=1, fuse_steps=1)
    got = {}
    for source in ("recording", "training"):
        av = adapt(clip, tmp_path / source, None, replace(cfg, av_offset=source))
        got[source] = int(load(av / "model.safetensors")[0]["drive.av_offset"][0])
    assert got == {"recording": 3, "training": 0}     # may_5s is in sync


def test_edge_band_term_trains_face_and_fuse_stages(may_clip: Path, tmp_path: Path) -> None:
    """``edge_weight`` reaches both stages that use it: the same seed gives other weights."""
    from dataclasses import replace

    from core.model.checkpoint import load
    from core.train.adapt import PRESETS, adapt

    cfg = replace(PRESETS["tiny"], seconds=3.0, face_steps=3, mouth_steps=1, fuse_steps=2)
    got = {}
    for w in (0.0, 2.0):
        av = adapt(may_clip, tmp_path / f"w{w}", None, replace(cfg, edge_weight=w))
        tensors, meta = load(av / "model.safetensors")
        assert meta["run"]["config"]["edge_weight"] == w
        got[w] = tensors
    changed = [k for k in got[0.0] if not torch.equal(got[0.0][k], got[2.0][k])]
    assert any(k.startswith("face.") for k in changed)


def test_tiny_avatar_mouth_follows_its_audio(may_clip: Path, audio_dir: Path,
                                            tiny_avatar: Path) -> None:
    """Different audio gives a different mouth; silence gives a closed one."""
    from core.model.avatar import load_avatar
    from core.model.head import FrameCond, render_frame

    av = load_avatar(tiny_avatar)
    assert av.drive is not None and av.umf.code_dim == len(MOUTH_CODE_NAMES)
    speech = read_audio(audio_dir / "en_radio31.wav")[: 4 * 16000]
    codes_speech = av.drive.predicted(speech, 100)
    codes_silence = av.drive.predicted(np.zeros(4 * 16000, np.float32), 100)
    tracked = av.drive.tracked(ProcessedClip.load(may_clip).arrays["points3d"].numpy()[:75])
    assert float(codes_silence[:, 0].mean()) < float(np.percentile(tracked[:, 0], 25))
    assert float(codes_speech[:, 0].std()) > 0.5
    assert float(codes_speech[:, 0].max()) > float(codes_silence[:, 0].max()) + 1.0

    def lips(code: torch.Tensor) -> np.ndarray:
        cond = FrameCond(viewmat=av.viewmats[0], K=av.K, width=av.res, height=av.res,
                         audio_win=torch.zeros(8, 16, 80), expr=av.expr[0], mouth=code)
        return render_frame(av.umf, av.ident, cond, av.plates[0].float() / 255.0).numpy()
    wide = codes_speech[int(codes_speech[:, 0].argmax())]
    shut = codes_silence[0]
    near = shut + 0.1 * (wide - shut)
    far_diff = np.abs(lips(wide) - lips(shut)).mean(-1)
    near_diff = np.abs(lips(near) - lips(shut)).mean(-1)
    assert far_diff.max() > 0.05                            # the code changes the render ...
    assert far_diff.sum() > 3 * near_diff.sum()             # ... more the further it moves


def test_prior_without_code_input_loads_unchanged() -> None:
    """The shipped prior (trained without the mouth code) gets a silent code path: for any
    code its fields move every point exactly as before, until adaptation trains the path."""
    from core.train.adapt import load_prior

    old, _ = load_prior("prior_mel_cpu")
    new, _ = load_prior("prior_mel_cpu", code_dim=len(MOUTH_CODE_NAMES))
    assert old.code_dim == 0 and new.code_dim == len(MOUTH_CODE_NAMES)
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(300, 3, generator=g) * 0.2 - 0.1
    win = torch.randn(8, 16, 80, generator=g)
    aus, blink, hook = torch.rand(5, generator=g), torch.rand((), generator=g), torch.rand(3, generator=g)
    with torch.no_grad():
        for code in (torch.zeros(4), torch.tensor([2.0, -1.0, 0.5, 1.0])):
            a, b = old.face(xyz, win, aus, blink), new.face(xyz, win, aus, blink, code=code)
            assert torch.equal(a.d_xyz, b.d_xyz) and torch.equal(a.d_quat, b.d_quat)
            assert torch.equal(old.mouth(xyz, win, hook).d_xyz, new.mouth(xyz, win, hook, code=code).d_xyz)
        # and the code path is there to be trained: once its basis is non-zero, the code moves points
        new.face.field.code_basis.mlp[-1].bias.data.fill_(0.1)
        moved = new.face(xyz, win, aus, blink, code=torch.tensor([2.0, 0, 0, 0])).d_xyz
        assert not torch.equal(moved, old.face(xyz, win, aus, blink).d_xyz)


def test_pose_share_holds_the_pose_and_scores_every_condition(may_clip: Path,
                                                              tiny_avatar: Path) -> None:
    """The pose-held frames are all seen from the first frame's pose; every driving
    condition of a small real avatar gets a correlation (the session's avatar on its own
    75 frames, the last second scored as if held out)."""
    from core.train.stages import TrainFrames
    from eval.studies.pose_share import held_pose, pose_share

    clip = ProcessedClip.load(may_clip)
    av = tiny_avatar
    frames = TrainFrames.from_clip(clip, torch.arange(50, 65), 64, fit_frames=50, audio_span=(50, 65))
    held = held_pose(frames)
    assert torch.equal(held.viewmats, frames.viewmats[:1].expand(15, 4, 4))
    assert not torch.equal(frames.viewmats[0], frames.viewmats[-1])
    r = pose_share(av, clip.root, train_seconds=2.0)
    assert set(r) == {"audio, recorded pose", "silence, recorded pose", "audio, pose held",
                      "shuffled audio, pose held", "silence, pose held"}
    assert all(-1.0 <= v <= 1.0 for v in r.values())
