"""End-to-end preprocessing on the real clips: CLI, on-disk format, loader, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.dataset import ProcessedClip
from core.errors import InputError
from core.data.media import num_frames, probe, read_audio
from core.data.masks import Label, torso_plate
from core.data.preprocess import PreprocessConfig, preprocess
from core.preprocess import main
from core.train.stages import TrainFrames

QUICK = PreprocessConfig(res=128, max_frames=50)  # first 2 s, small frames
#: Every clip of clips/: the first half second (the crop, pose and focal checks hold there
#: too).
EVERY = PreprocessConfig(res=128, max_frames=13, full_frame=False)


@pytest.fixture(scope="module")
def all_clips(clips_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Every clip in clips/ preprocessed (first half second at 128²)."""
    root = tmp_path_factory.mktemp("all")
    return {p.name: preprocess(p, root / p.stem, EVERY) for p in sorted(clips_dir.glob("*.mp4"))}


@pytest.fixture(scope="module")
def may(may_cli) -> Path:
    """may_5s.mp4 in full, through the command line, at the CPU default 256² (the session's)."""
    return may_cli.out


def test_every_clip_preprocesses(all_clips: dict[str, Path], clips_dir: Path) -> None:
    names = sorted(p.name for p in clips_dir.glob("*.mp4"))
    assert sorted(all_clips) == names and len(names) >= 20
    print("\nclip                                 crop                 reproj px (all / rigid)")
    for name, folder in all_clips.items():
        m = json.loads((folder / "manifest.json").read_text())
        assert m["num_frames"] == 13 and m["res"] == 128 and m["fps"] == 25.0
        x0, y0, x1, y1 = m["crop"]
        assert x1 - x0 == y1 - y0 > 0, f"{name}: crop {m['crop']} is not square"
        tr = m["tracking"]
        print(f"{name:36s} {str(m['crop']):20s} {tr['reproj_err_px_mean']:.2f} / "
              f"{tr['reproj_err_rigid_px_mean']:.2f}")
        # Solved pose + focal reproject the landmarks within a few pixels (128² frames).
        assert tr["reproj_err_px_mean"] < 2.0, name
        assert 0.3 < tr["camera_distance_m_median"] < 1.0, name


def test_non_25fps_non_square_become_25fps_square(clips_dir: Path, tmp_path: Path) -> None:
    clip = clips_dir / "woman_11s_30fps.mp4"  # 200x278 at 29.97 fps
    info = probe(clip)
    assert info.width != info.height and abs(info.fps - 25.0) > 1
    out = preprocess(clip, tmp_path / "w", PreprocessConfig(res=128))
    c = ProcessedClip.load(out)
    assert c.num_frames == num_frames(info, 25.0) == int(np.floor(min(info.video_end_s, info.audio_end_s) * 25))
    assert tuple(c.frames.shape[1:]) == (128, 128, 3)
    assert c.arrays["audio"].shape[0] == 640 * c.num_frames
    assert c.arrays["audio_steps"].shape[0] == 2 * c.num_frames
    assert (c.full_frame.width, c.full_frame.height) == (200, 278)  # its own non-square frame


def test_processed_folder_format_and_loader(may: Path, clips_dir: Path) -> None:
    m = json.loads((may / "manifest.json").read_text())
    assert sorted(p.name for p in may.iterdir()) == [
        "arrays.safetensors", "frames.mp4", "labels.npz", "manifest.json", "source.mp4"]
    assert m["format_version"] == 2 and m["full_frame"]["box"] == m["crop"]
    assert m["audio"]["kind"] == "mel" and m["audio"]["dim"] == 80
    assert m["num_frames"] == 125 and m["res"] == 256
    assert len(m["source"]["sha256"]) == 64
    c = ProcessedClip.load(may)
    T = c.num_frames
    # the command line measures the audio-video offset (may_5s is in sync: the audio-to-mouth
    # prior's curve peaks at lag 0, well above its neighbours two frames away)
    off = m["av_offset"]
    assert c.av_offset == off["frames"] == 0
    assert off["curve"]["0"] > max(off["curve"]["-2"], off["curve"]["2"]) + 0.1
    assert ProcessedClip.load(may).av_offset == 0
    assert c.frames.dtype == torch.uint8 and c.frames.shape == (T, 256, 256, 3)
    assert c.labels.shape == (T, 256, 256) and int(c.labels.max()) == 4
    assert c.audio_features().shape == (T, 16, 80)
    assert torch.allclose(c.K[0, 2], torch.tensor(128.0)) and c.viewmats.shape == (T, 4, 4)
    # Stored frames are the source frames (near-lossless storage, >= 45 dB).
    src = np.asarray(next(iter_first_frame(clips_dir / "may_5s.mp4", m["crop"])), np.float64)
    err = np.mean((src - c.frames[0].numpy().astype(np.float64)) ** 2)
    assert 10 * np.log10(255.0**2 / max(err, 1e-12)) > 45
    # The exact audio is stored: it equals the source audio at 16 kHz.
    ref = read_audio(clips_dir / "may_5s.mp4")[: 640 * T]
    assert np.allclose(c.arrays["audio"].numpy(), ref, atol=1e-6)
    # Time split: first 3 s train, the rest test, disjoint and in order.
    tr, te = c.split(3.0)
    assert tr.tolist() == list(range(75)) and te.tolist() == list(range(75, 125))
    tr, te = c.split(2.0, test_seconds=1.0)
    assert te.tolist() == list(range(100, 125))
    with pytest.raises(ValueError):
        c.split(10.0)
    # Training frames: float images; the plate keeps the torso/background and, where the head
    # is, the continuation of its surroundings (the one plate builder, core.data.masks).
    f = TrainFrames.from_clip(c, torch.tensor([10]))
    assert f.images.shape == (1, 256, 256, 3) and f.images.dtype == torch.float32
    head = f.labels[0] >= Label.HAIR
    assert head.sum() > 1000
    assert torch.equal(f.plates[0][~head], f.images[0][~head])
    plate = torso_plate(c.frames[10].numpy(), c.labels[10].numpy())
    assert torch.equal(f.plates[0], torch.from_numpy(plate).float() / 255.0)


def iter_first_frame(clip: Path, crop: list[int]):
    from core.data.media import iter_frames

    return iter_frames(clip, fps=25.0, size=256, crop=tuple(crop), max_frames=1)


def test_mouth_area_follows_audio_envelope(may: Path) -> None:
    """The mouth-interior mask tracks speech. may_5s rests with her lips parted, so frame
    by frame the raw area barely correlates with loudness (about 0); over syllable-length
    windows (Gaussian, sigma 2 frames = 80 ms) the area follows the envelope, and its
    movement |d area / dt| follows it clearly."""
    from scipy.ndimage import gaussian_filter1d

    c = ProcessedClip.load(may)
    area = TrainFrames.from_clip(c, torch.arange(c.num_frames)).mouth_px.double().numpy()
    audio = c.arrays["audio"].numpy().reshape(c.num_frames, 640)
    env = gaussian_filter1d(np.sqrt((audio.astype(np.float64) ** 2).mean(1)), 2)
    r_area = np.corrcoef(gaussian_filter1d(area, 2), env)[0, 1]
    r_motion = np.corrcoef(gaussian_filter1d(np.abs(np.gradient(area)), 2), env)[0, 1]
    print(f"\nmay_5s: corr(area, envelope) = {r_area:.3f}, corr(|d area|, envelope) = {r_motion:.3f}")
    assert r_area > 0.1
    assert r_motion > 0.3


def test_pose_jitter_small_on_still_clip(may: Path) -> None:
    from core.data.pose import rotation_angles_deg

    V = ProcessedClip.load(may).viewmats.numpy()
    rel = np.einsum("tij,tkj->tik", V[1:, :3, :3], V[:-1, :3, :3])
    step = rotation_angles_deg(rel)
    print(f"\nmay_5s: frame-to-frame rotation median {np.median(step):.3f} deg, max {step.max():.3f}")
    assert np.median(step) < 0.5 and step.max() < 2.0


@pytest.mark.parametrize("name, code", [
    ("grid_3s.mpg", "too_short"),
    ("no_audio_10s.mp4", "no_audio"),
])
def test_short_files_refused_with_specific_message(short_dir: Path, tmp_path: Path, name: str,
                                                   code: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        preprocess(short_dir / name, out, QUICK)
    assert e.value.code == code
    assert e.value.fix  # names what to do
    assert list(tmp_path.iterdir()) == []  # no output folder, no temp folder


def test_small_face_is_tracked_by_crop_and_redetect(short_dir: Path, tmp_path: Path) -> None:
    """face_mostly_absent_4s.mp4: a full-frame detector finds the face in about a quarter of
    the frames; cropping around it and re-detecting tracks it (the data README allows
    either tracking or refusing; we track)."""
    out = preprocess(short_dir / "face_mostly_absent_4s.mp4", tmp_path / "f", QUICK)
    m = json.loads((out / "manifest.json").read_text())
    x0, y0, x1, y1 = m["crop"]
    assert x1 - x0 < 400  # a real crop of the 720x1080 frame, not the whole frame
    assert m["tracking"]["found_fraction"] >= 0.8
    # the recorded frames are kept upright at their own portrait size, crop box inside
    ff = m["full_frame"]
    assert (ff["width"], ff["height"]) == (720, 1080) and ff["box"] == m["crop"]
    info = probe(out / "source.mp4")
    assert (info.width, info.height, info.num_video_frames) == (720, 1080, 50)


def test_too_long_and_unreadable(clips_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        preprocess(clips_dir / "lieu_60s.mp4", tmp_path / "x", PreprocessConfig(max_seconds=30))
    assert e.value.code == "too_long" and "30" in str(e.value)
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(InputError) as e:
        preprocess(bad, tmp_path / "y", QUICK)
    assert e.value.code == "unreadable"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]


def test_failed_overwrite_keeps_existing_folder(may: Path, short_dir: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "keep"
    shutil.copytree(may, out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(InputError):
        preprocess(short_dir / "no_audio_10s.mp4", out, QUICK, overwrite=True)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    with pytest.raises(FileExistsError):
        preprocess(short_dir / "no_audio_10s.mp4", out, QUICK)


def test_corrupt_folder_refused(may: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(may, bad)
    data = bytearray((bad / "labels.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "labels.npz").write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        ProcessedClip.load(bad)
    assert e.value.code == "corrupt" and "labels.npz" in str(e.value)
    with pytest.raises(InputError) as e:
        ProcessedClip.load(tmp_path / "missing")
    assert e.value.code == "corrupt"


def test_cli_reports_input_error(short_dir: Path, tmp_path: Path, capsys) -> None:
    assert main([str(short_dir / "no_audio_10s.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "no audio track" in capsys.readouterr().err
