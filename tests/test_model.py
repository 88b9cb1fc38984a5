"""The InsTaG model end to end at a tiny scale on real clips: pre-training, adaptation,
resume, checkpoints, synthesis."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.model import checkpoint
from core.train.adapt import PRESETS as ADAPT_PRESETS
from core.train.adapt import adapt, load_prior
from core.data.audio import AudioFeatureSpec
from core.model.avatar import load_avatar
from core.data.dataset import ProcessedClip
from core.errors import InputError
from core.model.head import UMF, Identity, render_frame
from core.train.stages import TrainFrames
from core.synthesize import pingpong, synthesize
from eval.metrics.frames import psnr

TINY = replace(ADAPT_PRESETS["tiny"], seconds=3.0)


@pytest.fixture(scope="module")
def clips(tiny_clips: dict[str, Path]) -> dict[str, Path]:
    return tiny_clips  # the session's: may_5s, man_suit_5s, vox_input_00010_224 (128², 75 frames)


@pytest.fixture(scope="module")
def prior(tiny_prior: Path) -> Path:
    return tiny_prior  # tiny preset on man_suit_5s + vox_input_00010_224


@pytest.fixture(scope="module")
def avatar(tiny_avatar: Path) -> Path:
    return tiny_avatar  # may_5s, tiny preset, 3 s, from the prior above


def test_prior_holds_the_ema_weights(prior: Path) -> None:
    t, meta = checkpoint.load(prior, kind="prior")
    assert meta["audio"]["kind"] == "mel" and len(meta["identities"]) == 2
    assert meta["ema_updates"]["face"] > 0 and meta["ema_updates"]["mouth"] > 0
    state, _ = checkpoint.load(prior.parent / "work" / "pretrain.safetensors", kind="pretrain-state")
    for branch in ("face", "mouth"):
        name = "field.mlp.0.weight"
        avg = state[f"ema.{branch}.shadow.{name}"]
        assert torch.equal(t[f"umf.{branch}.{name}"], avg)
        assert not torch.equal(avg, state[f"umf.{branch}.{name}"])  # the average, not the raw
    assert prior.stat().st_size < 8 << 20  # a few MB


def test_adaptation_end_to_end_improves_the_fit(avatar: Path, clips: dict[str, Path]) -> None:
    av = load_avatar(avatar)
    assert av.meta["run"]["n_train"] == 75 and av.ident.face_aligner is not None
    clip = ProcessedClip.load(clips["may_5s"])
    fr = TrainFrames.from_clip(clip, torch.arange(75), av.res, drive=av.drive)
    untrained = Identity(sh_degree=1, aligners=True).init_gaussians(clip.arrays["canonical"])
    before, after = [], []
    for j in (5, 30, 60):
        gt = fr.images[j].numpy()
        before.append(psnr(render_frame(UMF(80), untrained, fr.cond(j), fr.plates[j]).numpy(), gt))
        after.append(psnr(render_frame(av.umf, av.ident, fr.cond(j), fr.plates[j]).numpy(), gt))
    print(f"\nPSNR before {np.mean(before):.2f} dB, after {np.mean(after):.2f} dB")
    assert np.mean(after) > np.mean(before) + 2.0


def test_resume_continues_from_the_saved_step(clips: dict[str, Path], prior: Path,
                                              tmp_path: Path) -> None:
    cfg = replace(TINY, face_steps=30, mouth_steps=10, fuse_steps=4, ckpt_every=20)
    full = adapt(clips["may_5s"], tmp_path / "full", prior, cfg)

    class Stop(Exception):
        pass

    def stop_at_25(text: str, frac: float) -> None:
        if text.startswith("face 25/"):
            raise Stop

    with pytest.raises(Stop):
        adapt(clips["may_5s"], tmp_path / "resumed", prior, cfg, progress=stop_at_25)
    assert not (tmp_path / "resumed").exists()
    seen: list[str] = []
    adapt(clips["may_5s"], tmp_path / "resumed", prior, cfg, resume=True,
          progress=lambda text, frac: seen.append(text))
    assert seen[0].startswith("face 21/30")  # continued after the step-20 checkpoint
    a, _ = checkpoint.load(full / "model.safetensors")
    b, _ = checkpoint.load(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k  # same result as an uninterrupted run


def test_refine_continues_a_short_avatar_and_keeps_it_until_done(clips: dict[str, Path],
                                                                prior: Path, tmp_path: Path) -> None:
    """``--preset tiny-fast`` then ``--resume --preset tiny`` (the tests' fast -> cpu): the
    refine goes on from the steps the avatar reached, a stopped refine leaves the avatar
    as it was and resumes from its own checkpoint, and a finished or mismatched one is
    refused."""
    from core.train.adapt import REFINE_TO, main

    assert REFINE_TO["tiny-fast"] == "tiny" and REFINE_TO["fast"] == "cpu"
    out = tmp_path / "av"
    args = [str(clips["may_5s"]), "--prior", str(prior), "--out", str(out), "--seconds", "3"]
    assert main(args + ["--preset", "tiny-fast"]) == 0
    fast_bytes = (out / "model.safetensors").read_bytes()
    fast = load_avatar(out)
    assert fast.meta["steps"] == {"face": 16, "mouth": 8, "fuse": 4}

    class Stop(Exception):
        pass

    seen: list[str] = []

    def stop_at_25(text: str, frac: float) -> None:
        seen.append(text)
        if text.startswith("face 25/"):
            raise Stop

    with pytest.raises(Stop):
        adapt(clips["may_5s"], out, prior, TINY, progress=stop_at_25, resume=True)
    assert seen[0].startswith("face 17/40")  # went on from the avatar's 16 face steps
    assert (out / "model.safetensors").read_bytes() == fast_bytes  # the avatar is intact
    seen.clear()
    adapt(clips["may_5s"], out, prior, TINY, progress=lambda t, f: seen.append(t), resume=True)
    assert seen[0].startswith("face 21/40")  # the refine's own step-20 checkpoint
    assert any(t.startswith("mouth 9/20") for t in seen) and not any(
        t.startswith("mouth 8/") for t in seen)
    assert not (tmp_path / ".av.work").exists()
    full = load_avatar(out)
    assert full.meta["steps"] == {"face": 40, "mouth": 20, "fuse": 10}
    assert full.meta["refined_from"]["steps"] == {"face": 16, "mouth": 8, "fuse": 4}
    a, _ = checkpoint.load(out / "model.safetensors")
    assert not torch.equal(full.ident.face.means, fast.ident.face.means)
    drive = fast.drive.tensors()
    assert any(k.startswith("drive.") for k in a)
    for k in [k for k in a if k.startswith("drive.")]:  # the mouth drive is the avatar's own
        assert torch.equal(a[k], drive[k]), k
    # nothing left to do / another setting: refused, the avatar untouched
    before = (out / "model.safetensors").read_bytes()
    assert main(args + ["--preset", "tiny", "--resume"]) != 0  # already finished
    with pytest.raises(InputError, match="already finished"):
        adapt(clips["may_5s"], out, prior, TINY, resume=True)
    with pytest.raises(InputError, match="other settings"):
        adapt(clips["may_5s"], out, prior, replace(TINY, face_steps=80, res=64), resume=True)
    assert (out / "model.safetensors").read_bytes() == before


def test_face_densify_gradient_reaches_the_face_stage_alone(clips: dict[str, Path], prior: Path,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``face_densify_grad`` is the threshold the face stage densifies with (the mouth stage
    keeps its own); 0 is refused. What a lower one does to the Gaussian count and the fit:
    docs/results/fast_preset.md."""
    import core.train.adapt as A
    from core.model.gaussians import FACE_DENSIFY, MOUTH_DENSIFY

    seen: list[float] = []
    real = A.Densifier

    def spy(cfg, *args, **kwargs):
        seen.append(cfg.grad_threshold)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(A, "Densifier", spy)
    cfg = replace(TINY, face_steps=2, mouth_steps=1, fuse_steps=1)
    assert cfg.face_densify_grad == FACE_DENSIFY.grad_threshold == 5e-4
    adapt(clips["may_5s"], tmp_path / "av", prior, replace(cfg, face_densify_grad=1e-4))
    assert seen == [1e-4, MOUTH_DENSIFY.grad_threshold]
    with pytest.raises(ValueError, match="face_densify_grad"):
        replace(TINY, face_densify_grad=0.0)


def test_adapt_accepts_a_raw_video_with_monotonic_progress(clips_dir: Path, prior: Path,
                                                            tmp_path: Path) -> None:
    cfg = replace(TINY, face_steps=10, mouth_steps=5, fuse_steps=2)
    seen: list[tuple[str, float]] = []
    out = adapt(clips_dir / "man_suit_5s.mp4", tmp_path / "raw", prior, cfg,
                progress=lambda text, frac: seen.append((text, frac)))
    fracs = [f for _, f in seen]
    assert any(t.startswith("preprocessing") for t, _ in seen) and seen[-1] == ("done", 1.0)
    assert all(b >= a for a, b in zip(fracs, fracs[1:])), "progress went backwards"
    assert load_avatar(out).num_frames == 75
    assert not (tmp_path / ".raw.work").exists()  # the work folder is removed on success


def test_corrupt_or_wrong_checkpoints_are_refused(avatar: Path, prior: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(avatar, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        load_avatar(bad)
    assert e.value.code == "corrupt"
    (bad / "model.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(InputError) as e:
        load_avatar(bad)
    assert e.value.code == "corrupt"
    with pytest.raises(InputError) as e:  # a prior is not an avatar
        checkpoint.load(prior, kind="avatar")
    assert e.value.code == "wrong_weights"
    with pytest.raises(InputError) as e:  # audio feature type mismatch
        load_prior(prior, AudioFeatureSpec("hubert", 1024, "facebook/hubert-large-ls960-ft"))
    assert e.value.code == "wrong_weights" and "mel" in str(e.value)


def test_synthesis_length_audio_and_mark(avatar: Path, audio_dir: Path, tmp_path: Path) -> None:
    from core.data.media import probe, read_audio, read_clip, write_video

    src = read_audio(audio_dir / "zh_news.wav")[: int(2.3 * 16000)]  # 48 kHz source, 2.3 s
    clip_path = tmp_path / "speech.mp4"  # drive it from the audio track of a video
    write_video(clip_path, (np.zeros((64, 64, 3), np.uint8) for _ in range(58)), audio=src)
    r = synthesize(avatar, clip_path, tmp_path / "out.mp4")
    info = probe(r.path)
    T = int(np.ceil(read_audio(clip_path).shape[0] / 640))  # the track's length (AAC pads it)
    assert abs(T - 58) <= 2
    assert r.frames == T and info.num_video_frames == T
    assert info.has_audio and abs(info.audio_end_s - T / 25) < 0.05
    assert "AI-generated" in info.metadata.get("comment", "")
    out = read_clip(r.path)
    assert out.num_frames == T
    # the driving audio is in the file, aligned with the frames
    ref = read_audio(clip_path)[: out.audio.shape[0]]
    assert np.corrcoef(out.audio[: ref.shape[0]], ref)[0, 1] > 0.95
    # the visible mark: a dark label box with white text in the bottom-left corner
    h = out.frames.shape[1]
    corner = out.frames[:, int(0.8 * h):, : h // 2].astype(int)
    assert (corner.max(-1) > 200).mean() > 0.01 and (corner.max(-1) < 40).mean() > 0.05
    assert r.render_fps > 0


def test_cli_speaks_typed_text(avatar: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """``python -m core.synthesize AVATAR --text ...``: the voice's audio drives the avatar
    unchanged (no re-timing: the file's track is the speech from sample 0), the video lasts
    as long as the speech, and the mark and the metadata say the voice is synthetic."""
    import hashlib

    import core.data.speech as speech
    from core.data.media import probe, read_audio, read_clip
    from core.synthesize import main

    said: list[speech.Speech] = []  # what the voice said (Piper's timing varies per call)
    real_speak = speech.speak
    monkeypatch.setattr(speech, "speak", lambda *a, **k: said.append(real_speak(*a, **k)) or said[-1])

    def fingerprint() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(avatar.iterdir()) if p.is_file()}

    before = fingerprint()
    text = "Hello, I am a talking head."
    out = tmp_path / "text.mp4"
    assert main([str(avatar), "--text", text, "--out", str(out)]) == 0
    assert len(said) == 1 and said[0].voice.name == "joe"
    ref = read_audio(said[0].write_wav(tmp_path / "ref.wav"))
    T = int(np.ceil(len(ref) / 640))
    info = probe(out)
    assert info.num_video_frames == T and info.has_audio and abs(info.audio_end_s - T / 25) < 0.05
    comment = info.metadata.get("comment", "")
    assert "AI-generated" in comment and "voice is synthetic" in comment and "joe" in comment
    clip = read_clip(out)
    n = min(len(ref), clip.audio.shape[0])
    assert np.corrcoef(clip.audio[:n], ref[:n])[0, 1] > 0.95
    h = clip.frames.shape[1]  # the longer mark: white text on black over most of the width
    band = clip.frames[:, int(0.8 * h):].astype(int).max(-1)
    cols = np.nonzero((band > 200).any(axis=(0, 1)))[0]
    assert cols.max() - cols.min() > 0.5 * h
    # bad text, voice or language: a named error, nothing written, the avatar untouched
    for args, words in ((["--text", "   "], "no text"), (["--text", "x" * 601], "601"),
                        (["--text", "Hi", "--voice", "nobody"], "no voice named"),
                        (["--text", "Hi", "--lang", "zh"], "No voice speaks"),
                        (["--text", "Hi \U0001F600"], "cannot say")):
        bad = tmp_path / "bad.mp4"
        assert main([str(avatar), *args, "--out", str(bad)]) == 2
        assert words in capsys.readouterr().err
        assert not bad.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.wav", "text.mp4"]
    assert fingerprint() == before


def test_pingpong_loops_without_jumps() -> None:
    seq = [pingpong(t, 4) for t in range(10)]
    assert seq == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert all(pingpong(t, 1) == 0 for t in range(5))


def _driven(avatar: Path, audio: Path, seconds: float):
    from core.data.features import audio_features, feature_config
    from core.data.media import read_audio

    av = load_avatar(avatar)
    wav = read_audio(audio, 16000, duration=seconds)
    T = int(np.ceil(wav.shape[0] / 640))
    wav = np.concatenate([wav, np.zeros(T * 640 - wav.shape[0], np.float32)])
    feats = audio_features(wav, T, feature_config(AudioFeatureSpec.from_dict(av.meta["audio"])))
    mouth = av.drive.predicted(wav, T) if av.drive is not None else None
    return av, feats, mouth


def test_fast_path_renders_the_same_frames(avatar: Path, audio_dir: Path) -> None:
    """The fast path (batched fields, per-avatar constants, 8-px tiles, two render threads,
    only the head's box composited) against the per-frame path on real speech: the same
    frames up to one grey level on a handful of pixels, in order."""
    from core.synthesize import TalkConfig, render_frames, render_frames_fast

    av, feats, mouth = _driven(avatar, audio_dir / "en_radio31.wav", 2.0)
    ref = np.stack(list(render_frames(av, feats, True, None, mouth)))
    fast = np.stack(list(render_frames_fast(av, feats, True, None, mouth,
                                            TalkConfig(batch=7, workers=2))))
    assert fast.shape == ref.shape == (50, av.res, av.res, 3)
    diff = np.abs(fast.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert psnr(fast.astype(np.float32) / 255, ref.astype(np.float32) / 255) > 45
    # the frames move with the audio (not one frame repeated), so the check is not vacuous
    assert np.abs(ref[1:].astype(int) - ref[:-1]).max() > 10


def test_stream_segments_play_in_order_with_the_audio(avatar: Path, audio_dir: Path,
                                                      tmp_path: Path) -> None:
    from core.data.media import media_seconds, read_audio, read_clip

    seen: list[Path] = []
    r = synthesize(avatar, audio_dir / "en_radio31.wav", tmp_path / "out.mp4",
                   duration=2.5, stream_dir=tmp_path / "stream", on_segment=seen.append)
    assert r.frames == 63 and seen == r.segments
    assert [media_seconds(p) for p in seen] == pytest.approx([0.4, 1.0, 1.0, 0.12], abs=1e-6)
    playlist = (tmp_path / "stream" / "playlist.m3u8").read_text()
    assert playlist.strip().endswith("#EXT-X-ENDLIST")
    assert [ln for ln in playlist.splitlines() if ln.endswith(".ts")] == [p.name for p in seen]
    joined = tmp_path / "all.ts"  # the segments one after the other are one stream
    joined.write_bytes(b"".join(p.read_bytes() for p in seen))
    whole, cat = read_clip(r.path), read_clip(joined)
    assert cat.num_frames == whole.num_frames == 63
    err = np.abs(cat.frames.astype(int) - whole.frames.astype(int)).mean()
    assert err < 3.0  # the same pictures (two lossy encodes of them)
    # every segment carries its own stretch of the driving audio
    src = read_audio(audio_dir / "en_radio31.wav", 16000, duration=2.5)
    seg = read_audio(seen[1])
    lag = np.argmax(np.correlate(src[6400:6400 + 8000], seg[:4000], "valid"))
    assert abs(lag - 0) < 1600  # segment 1 starts 0.4 s in (sample 6400), within 0.1 s


def test_stopped_render_leaves_a_playable_prefix(avatar: Path, audio_dir: Path,
                                                 tmp_path: Path) -> None:
    from core.data.media import media_seconds, read_clip

    class Stop(Exception):
        pass

    def progress(text: str, frac: float) -> None:
        if "frame 40/" in text:
            raise Stop

    with pytest.raises(Stop):
        synthesize(avatar, audio_dir / "en_radio31.wav", tmp_path / "out.mp4", progress,
                   duration=4.0, stream_dir=tmp_path / "stream")
    assert not (tmp_path / "out.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.mp4")]
    segs = sorted((tmp_path / "stream").glob("segment_*.ts"))
    playlist = (tmp_path / "stream" / "playlist.m3u8").read_text()
    assert "#EXT-X-ENDLIST" not in playlist and len(segs) >= 2
    assert not list((tmp_path / "stream").glob("*.tmp*"))
    for p in segs:  # each one plays on its own: 0.4 s first, then 1 s each
        assert p.name in playlist and read_clip(p).num_frames >= 10
        assert media_seconds(p) == pytest.approx(0.4 if p.name.endswith("00000.ts") else 1.0)


def test_closing_a_stream_stops_the_render(avatar: Path, audio_dir: Path, tmp_path: Path) -> None:
    """A consumer that leaves after the first segment: the render stops within a frame or
    so (no further progress), the worker is gone and no mp4 is written."""
    import threading

    from core.synthesize import stream_synthesis

    calls: list[str] = []
    gen = stream_synthesis(avatar, audio_dir / "en_eng.wav", tmp_path / "out.mp4",
                           tmp_path / "stream", progress=lambda t, f: calls.append(t),
                           duration=20.0)
    first = next(gen)
    assert isinstance(first, Path) and first.name == "segment_00000.ts"
    gen.close()
    n = len(calls)
    assert not [t for t in threading.enumerate() if t.name in ("synthesis", "encoder")
                or t.name.startswith("render")]
    assert n < 500 and not (tmp_path / "out.mp4").exists()  # 20 s = 500 frames: stopped early


def test_mouth_stage_on_the_interior_alone_learns_nothing_from_a_closed_mouth(
        avatar: Path, clips: dict[str, Path]) -> None:
    """``interior_only``: the mouth stage's photometric term sees only the recorded mouth
    interior. On a frame whose interior label is empty the mouth Gaussians' colours get no
    gradient at all (the plain target, flat background over the whole lips box, does push
    them); on the frame with the most interior they do."""
    from core.data.masks import Label
    from core.model.head import HOOK_K_EVAL
    from core.train.stages import mouth_step

    av = load_avatar(avatar)
    fr = TrainFrames.from_clip(ProcessedClip.load(clips["may_5s"]), torch.arange(75), av.res,
                               drive=av.drive)
    interior = (fr.labels == Label.MOUTH).flatten(1).sum(1)
    closed, widest = int(torch.nonzero(interior == 0)[0]), int(interior.argmax())
    assert int(interior[widest]) > 20
    bg = torch.tensor([0.2, 0.7, 0.4])

    def colour_grad(j: int, interior_only: bool) -> float:
        colours = av.ident.mouth.sh_dc
        colours.grad = None
        colours.requires_grad_(True)
        mouth_step(av.umf, av.ident, fr, j, bg, HOOK_K_EVAL,
                   interior_only=interior_only).loss.backward()
        return float(colours.grad.abs().sum()) if colours.grad is not None else 0.0

    assert colour_grad(closed, True) == 0.0
    assert colour_grad(closed, False) > 0.0
    assert colour_grad(widest, True) > 0.0
