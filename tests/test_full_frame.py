"""Full-frame output: the crop put back into the recorded frame (core.data.full_frame), the
recorded frames kept from preprocessing through adaptation (source.mp4), random access to
them (core.data.media.FrameLoop) and core.synthesize's ``frame='full'`` / ``'crop'``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.data.full_frame import (FullFrame, box_feather, composite, lower_face_mask,
                                  output_size)


# ------------------------------------------------------------------ sizes, on known answers
@pytest.mark.parametrize("size, want", [
    ((3840, 2160), (1920, 1080)),   # 4K landscape: scaled down, not refused
    ((1080, 1920), (1080, 1920)),   # portrait at the cap: unchanged
    ((2160, 3840), (1080, 1920)),   # 4K portrait
    ((4000, 4000), (1920, 1920)),   # square
    ((401, 721), (400, 720)),       # odd sides made even (rounded down)
    ((200, 278), (200, 278)),       # small: never enlarged
])
def test_output_size_caps_the_long_side_and_evens(size, want) -> None:
    assert output_size(*size) == want


def test_full_frame_box_scales_with_the_frame_and_round_trips() -> None:
    ff = FullFrame.from_source(3840, 2160, (1128, 0, 2790, 1662))
    assert (ff.width, ff.height) == (1920, 1080)
    assert ff.box == (564, 0, 1395, 831) and ff.side == 831
    # a box at the frame's edge stays inside after rounding
    edge = FullFrame.from_source(1001, 601, (400, 0, 1001, 601))
    assert edge.box[2] <= edge.width and edge.box[3] <= edge.height
    assert edge.box[2] - edge.box[0] == edge.box[3] - edge.box[1]
    assert FullFrame.from_dict(json.loads(json.dumps(ff.to_dict()))) == ff
    with pytest.raises(ValueError, match="newer"):
        FullFrame.from_dict({**ff.to_dict(), "version": 99})


def test_flat_head_over_flat_frame_interior_outside_and_a_monotone_seam() -> None:
    frame = np.full((120, 160, 3), 40, np.uint8)
    head = np.full((32, 32, 3), 200, np.uint8)   # rendered at 32², box of 64 px
    box = (50, 30, 114, 94)
    out = composite(frame, head, box, box_feather(32, 6))
    assert (frame == 40).all()                   # the input is not modified
    assert (out[:30] == 40).all() and (out[94:] == 40).all()      # outside the box: frame
    assert (out[:, :50] == 40).all() and (out[:, 114:] == 40).all()
    assert (out[30 + 14:94 - 14, 50 + 14:114 - 14] == 200).all()  # interior: the head
    row = out[62, 50:82, 0].astype(int)          # from the box's edge to its centre
    assert (np.diff(row) >= 0).all() and row[0] < 60 and row[-1] == 200


def test_box_feather_is_zero_at_the_border_and_one_inside() -> None:
    a = box_feather(40, 8)
    assert a.shape == (40, 40) and a.dtype == np.float32
    assert a[0].max() < 0.02 and a[:, -1].max() < 0.02 and (a[8:32, 8:32] == 1).all()
    assert (np.diff(a[20, :20]) >= 0).all()
    assert (box_feather(10, 0) == 1).all()


def test_lower_face_mask_covers_the_mouth_not_the_eyes(may_clip: Path) -> None:
    """On the real landmarks of may_5s: 1 on the lips and chin, 0 on the eyes and forehead,
    and it moves with the face."""
    from safetensors.torch import load_file

    pts = load_file(str(may_clip / "arrays.safetensors"))["points2d"].numpy()
    res = json.loads((may_clip / "manifest.json").read_text())["res"]
    for p in pts[::25]:
        m = lower_face_mask(p, res)
        at = lambda i: m[int(round(p[i, 1])), int(round(p[i, 0]))]  # noqa: E731
        assert at(13) > 0.95 and at(14) > 0.95 and at(152) > 0.4   # lips, chin
        assert at(33) < 0.05 and at(263) < 0.05 and at(10) < 0.01  # eye corners, forehead
    shifted = pts[0] + np.array([10.0, 0.0])
    m0, m1 = lower_face_mask(pts[0], res), lower_face_mask(shifted, res)
    c0 = (m0 * np.arange(res)[None]).sum() / m0.sum()
    c1 = (m1 * np.arange(res)[None]).sum() / m1.sum()
    assert c1 - c0 == pytest.approx(10.0, abs=0.5)


# ------------------------------------------------------------------ files
def test_frame_loop_reads_any_frame_as_a_sequential_read_does(tmp_path: Path) -> None:
    from core.data.media import FrameLoop, iter_frames, write_video

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (36, 52, 3), np.uint8) for _ in range(23)]
    write_video(tmp_path / "s.mp4", iter(frames), crf=18, preset="veryfast", keyint=5)
    seq = list(iter_frames(tmp_path / "s.mp4"))
    order = [*range(23), *range(21, -1, -1), 7, 22, 0]  # a ping-pong loop and jumps
    with FrameLoop(tmp_path / "s.mp4", 23, 5) as loop:
        for i in order:
            assert np.array_equal(loop[i], seq[i]), i
        assert len(loop._groups) <= 1
        with pytest.raises(IndexError):
            loop[23]


def test_processed_clip_keeps_the_recorded_frames(may_clip: Path, clips_dir: Path) -> None:
    from core.data.dataset import ProcessedClip
    from core.data.media import iter_frames, probe

    clip = ProcessedClip.load(may_clip, max_frames=3)
    ff = clip.full_frame
    assert ff is not None and (ff.width, ff.height) == (512, 512)
    assert ff.box == tuple(clip.manifest["crop"])   # no scaling below the cap
    info = probe(clip.source_path)
    assert (info.width, info.height) == (512, 512) and not info.has_audio
    assert info.num_video_frames == clip.manifest["num_frames"]
    kept = next(iter_frames(clip.source_path)).astype(float)
    rec = next(iter_frames(clips_dir / "may_5s.mp4")).astype(float)
    assert 10 * np.log10(255 ** 2 / np.mean((kept - rec) ** 2)) > 35  # crf 18


def test_version_1_clip_loads_without_full_frames(may_clip: Path, tmp_path: Path) -> None:
    from core.data.dataset import ProcessedClip
    from core.train.adapt import full_frame_frames

    old = tmp_path / "old"
    shutil.copytree(may_clip, old)
    (old / "source.mp4").unlink()
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 1
    del m["full_frame"], m["files"]["source.mp4"]
    (old / "manifest.json").write_text(json.dumps(m))
    clip = ProcessedClip.load(old, max_frames=5)
    assert clip.full_frame is None and clip.source_path is None
    assert full_frame_frames(clip, 5) is None


# ------------------------------------------------------------------ synthesis
def test_full_frame_talk_puts_the_head_back_into_the_recording(tiny_avatar: Path,
                                                               audio_dir: Path,
                                                               tmp_path: Path) -> None:
    """The tiny avatar of may_5s (512² source, 96² render): a full-frame Talk has the
    source's size; far from the face it is the looped recorded frame, on the lips it is the
    render; crop mode is the avatar's square."""
    from core.data.media import FrameLoop, iter_frames, probe
    from core.model.avatar import load_avatar
    from core.synthesize import pingpong, synthesize

    av = load_avatar(tiny_avatar)
    assert av.full is not None and av.landmarks is not None and av.full_note is None
    full = synthesize(av, audio_dir / "en_radio31.wav", tmp_path / "full.mp4", duration=0.8,
                      mark=False)
    crop = synthesize(av, audio_dir / "en_radio31.wav", tmp_path / "crop.mp4", duration=0.4,
                      mark=False, frame="crop")
    assert (full.frame, full.size, full.note) == ("full", (512, 512), None)
    assert (crop.frame, crop.size) == ("crop", (av.res, av.res))
    info = probe(full.path)
    assert (info.width, info.height, info.has_audio) == (512, 512, True)
    x0, y0, x1, y1 = av.full.box
    with FrameLoop(tiny_avatar / "source.mp4", av.num_frames, 10) as src:
        for t, f in enumerate(iter_frames(full.path)):
            rec = src[pingpong(t, av.num_frames)].astype(float)
            f = f.astype(float)
            i = pingpong(t, av.num_frames)
            lm = av.landmarks[i].numpy() * (x1 - x0) + [x0, y0]
            ex, ey = np.round(lm[33]).astype(int)       # an eye corner: the recording
            assert np.abs(f[ey - 2:ey + 3, ex - 2:ex + 3] - rec[ey - 2:ey + 3, ex - 2:ex + 3]
                          ).mean() < 6
            top = f[: max(4, y0 // 2)] if y0 >= 8 else f[:, : max(4, x0 // 2)]
            assert np.abs(top - (rec[: top.shape[0]] if y0 >= 8 else rec[:, : top.shape[1]])
                          ).mean() < 4
    c = np.stack(list(iter_frames(crop.path)))
    assert c.shape[1:3] == (av.res, av.res)


def test_head_rendered_at_the_box_size_is_the_same_head_with_more_pixels(
        tiny_avatar: Path, audio_dir: Path, tmp_path: Path) -> None:
    """``Avatar.at_res``: the tiny avatar (96²) drawn at 192² and shrunk back by area is its
    96² render (intrinsics scaled about the crop's centre; the Gaussians are continuous),
    within a grey level or two over the head; ``head_resolution`` picks the side on known
    answers; a full-frame Talk with ``head_res=192`` has the source's size. (That a larger
    head shows more of the recording's detail is measured on real avatars:
    docs/results/full_frame.md.)"""
    import cv2
    import torch
    from dataclasses import replace

    from core.data.full_frame import FullFrame
    from core.data.media import read_audio
    from core.model.avatar import load_avatar
    from core.synthesize import field_audio, head_resolution, render_frames_fast, synthesize

    av = load_avatar(tiny_avatar)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")   # only the device's type is read
    assert av.res == 96 and av.full.side == 512
    assert head_resolution(av, "full", "auto", cpu) == 96
    assert head_resolution(av, "full", "auto", gpu) == 512
    assert head_resolution(av, "full", "native", cpu) == 512
    assert head_resolution(av, "full", "avatar", gpu) == 96
    assert head_resolution(av, "full", "200", cpu) == 200
    assert head_resolution(av, "crop", "native", gpu) == 96          # crop output: own res
    small = replace(av, full=FullFrame(400, 300, (10, 10, 74, 74), (400, 300), (10, 10, 74, 74)))
    assert head_resolution(small, "full", "native", cpu) == 96       # never below the avatar's
    big = replace(av, full=FullFrame(1920, 1080, (0, 0, 831, 831), (1920, 1080), (0, 0, 831, 831)))
    assert head_resolution(big, "full", "native", cpu) == 512        # capped
    assert head_resolution(replace(av, full=None), "full", "native", gpu) == 96
    for bad in ("huge", 8, "4096"):
        with pytest.raises(ValueError, match="head_res"):
            head_resolution(av, "full", bad, cpu)
    assert av.at_res(96) is av

    T = 12
    wav = read_audio(audio_dir / "en_radio31.wav", 16000)[: T * 640]
    feats, codes = field_audio(av, wav, T), av.drive.predicted(wav, T)
    lo = np.stack(list(render_frames_fast(av, feats, mark=False, mouth=codes)))
    hi_av = av.at_res(192)
    assert hi_av.plates.shape == (av.num_frames, 192, 192, 3) and av.plates.shape[1] == 96
    assert torch.allclose(hi_av.K[:2, :2], 2 * av.K[:2, :2]) and float(hi_av.K[0, 2]) == 96.0
    hi = np.stack(list(render_frames_fast(hi_av, feats, mark=False, mouth=codes)))
    assert hi.shape == (T, 192, 192, 3)
    back = np.stack([cv2.resize(f, (96, 96), interpolation=cv2.INTER_AREA) for f in hi])
    head = np.abs(lo.astype(float) - av.plates[:T].numpy().astype(float)).max(-1) > 8
    assert head.mean() > 0.1                                        # the head is drawn
    diff = np.abs(back.astype(float) - lo.astype(float)).max(-1)[head]
    assert diff.mean() < 2.5, diff.mean()
    r = synthesize(av, audio_dir / "en_radio31.wav", tmp_path / "hi.mp4", duration=0.4,
                   mark=False, head_res=192)
    assert (r.frame, r.size) == ("full", (512, 512))


def test_avatar_made_before_renders_the_crop_with_a_note(tiny_avatar: Path, audio_dir: Path,
                                                         tmp_path: Path) -> None:
    """An avatar folder of the earlier format (no recorded frames, no landmarks) renders
    the crop, with a note, never an error."""
    from core.model import checkpoint
    from core.synthesize import synthesize

    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tiny_avatar / "plates.mp4", old / "plates.mp4")
    t, meta = checkpoint.load(tiny_avatar / "model.safetensors", kind="avatar")
    del t["full.landmarks"], meta["full_frame"]
    checkpoint.save(old / "model.safetensors", t, meta)
    r = synthesize(old, audio_dir / "en_radio31.wav", tmp_path / "o.mp4", duration=0.4)
    assert r.frame == "crop" and r.size == (96, 96) and r.frames == 10
    assert "made without the recorded frames" in (r.note or "")


# ------------------------------------------------------------------ scoring at source size
def test_full_res_scores_on_known_frames() -> None:
    """A render equal to the recorded crop scores perfectly; a blurred one loses sharpness;
    the weight is exactly 1 on the head (no recorded head pixel enters a render)."""
    import cv2

    from eval.bench.full_res import head_alpha, score_frame

    rng = np.random.default_rng(1)
    recorded = rng.integers(0, 255, (80, 120, 3), np.uint8)
    box = (30, 10, 94, 74)
    crop = recorded[10:74, 30:94].copy()
    head = np.zeros((64, 64), bool)
    head[16:48, 20:44] = True
    alpha, big = head_alpha(head, 64)
    assert (alpha[big] == 1).all() and alpha[0, 0] == 0 and (big == head).all()
    same = score_frame(crop, recorded, head, box, crop)
    assert same["psnr_head"] == np.inf and same["sharpness"] == pytest.approx(1.0)
    assert same["psnr_seam"] == np.inf and same["ssim_head"] == pytest.approx(1.0)
    blurred = score_frame(cv2.GaussianBlur(crop, (0, 0), 1.5), recorded, head, box)
    assert blurred["sharpness"] < 0.3 and blurred["psnr_head"] < 30
    # a half-size render (the resolution bottleneck) is upscaled into the box and blurs
    small = score_frame(cv2.resize(crop, (32, 32), interpolation=cv2.INTER_AREA), recorded,
                        head, box)
    assert small["sharpness"] < 0.8
