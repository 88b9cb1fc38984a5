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
from core.data.preprocess import PreprocessConfig, preprocess
from core.train.pretrain import PRESETS as PRETRAIN_PRESETS
from core.train.pretrain import pretrain
from core.train.stages import TrainFrames
from core.synthesize import pingpong, synthesize
from eval.metrics import psnr

TINY = replace(ADAPT_PRESETS["tiny"], seconds=3.0)


@pytest.fixture(scope="module")
def clips(clips_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    cfg = PreprocessConfig(res=128, max_frames=75)
    return {name: preprocess(clips_dir / f"{name}.mp4", root / name, cfg)
            for name in ("may_5s", "man_suit_5s", "vox_input_00010_224")}


@pytest.fixture(scope="module")
def prior(clips: dict[str, Path], tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prior")
    return pretrain([clips["man_suit_5s"], clips["vox_input_00010_224"]], root / "prior.safetensors",
                    PRETRAIN_PRESETS["tiny"], work=root / "work")


@pytest.fixture(scope="module")
def avatar(clips: dict[str, Path], prior: Path, tmp_path_factory) -> Path:
    return adapt(clips["may_5s"], tmp_path_factory.mktemp("av") / "may", prior, TINY)


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


def test_pingpong_loops_without_jumps() -> None:
    seq = [pingpong(t, 4) for t in range(10)]
    assert seq == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert all(pingpong(t, 1) == 0 for t in range(5))
