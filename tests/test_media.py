"""core.data.media on the real clips in ../shared/data plus synthetic round trips."""
from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from core.errors import InputError
from core.data.media import (
    MediaLimits,
    fit_length,
    iter_frames,
    num_frames,
    probe,
    read_audio,
    read_clip,
    write_video,
)
from eval.metrics.frames import psnr

NTSC_AND_VFR = ["woman_11s_30fps.mp4", "man_map_6s_30fps.mp4", "woman_glasses_7s_30fps.mp4",
                "woman_20s_512x480_30fps.mp4"]


def encode_into(container, stream, frame=None) -> None:
    """Encode one ``frame`` on ``stream`` and mux its packets into ``container``; with no
    frame, flush the encoder (the test files below are written this way)."""
    for pkt in stream.encode(frame):
        container.mux(pkt)


def _stream_ends(path: Path) -> tuple[float, float | None]:
    """(video end, audio end) in s from the raw stream headers, independently of core.data.media."""
    with av.open(str(path)) as c:
        def span(s):
            return (s.start_time or 0) * s.time_base, ((s.start_time or 0) + s.duration) * s.time_base
        v0, v1 = span(c.streams.video[0])
        if not c.streams.audio:
            return float(v1 - v0), None
        a0, a1 = span(c.streams.audio[0])
        t0 = min(v0, a0)
        return float(v1 - t0), float(a1 - t0)


# ----------------------------------------------------------------------------- probing
def test_every_clip_probes(clips_dir: Path) -> None:
    clips = sorted(clips_dir.glob("*.mp4"))
    assert len(clips) >= 20
    for p in clips:
        info = probe(p)
        assert info.has_video and info.has_audio, p.name
        assert info.width > 0 and info.height > 0 and 20 < info.fps < 31, (p.name, info)
        assert info.audio_sample_rate in (16000, 44100, 48000), p.name
        assert 4.0 < info.duration_s < 61.0 and info.rotation == 0, p.name
        assert num_frames(info) > 90, p.name
    ntsc = probe(clips_dir / "woman_11s_30fps.mp4")
    assert (ntsc.width, ntsc.height) == (200, 278) and abs(ntsc.fps - 29.97) < 1e-3


def test_unreadable_and_missing(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video, just some text\n" * 20)
    for fn in (probe, read_audio, iter_frames, read_clip):
        with pytest.raises(InputError) as ei:
            fn(fake)
        assert ei.value.code == "unreadable"
        assert "notes.mp4" in ei.value.problem and "mp4" in ei.value.fix and "webm" in ei.value.fix
    with pytest.raises(InputError) as ei:
        probe(tmp_path / "missing.mp4")
    assert ei.value.code == "unreadable"


def test_no_audio_and_no_video(short_dir: Path, audio_dir: Path) -> None:
    p = short_dir / "no_audio_10s.mp4"
    info = probe(p)
    assert info.has_video and not info.has_audio
    assert num_frames(info) == 250  # video only: floor(10.0 * 25)
    for fn in (read_audio, read_clip):
        with pytest.raises(InputError) as ei:
            fn(p)
        assert ei.value.code == "no_audio" and "microphone" in ei.value.fix
    for fn in (probe, iter_frames):
        with pytest.raises(InputError) as ei:
            fn(audio_dir / "en_radio31.wav")
        assert ei.value.code == "no_video"
    assert not probe(audio_dir / "en_radio31.wav", require_video=False).has_video


# ----------------------------------------------------------------------------- frame timing
@pytest.mark.parametrize("name", NTSC_AND_VFR)
def test_resampled_frame_count(clips_dir: Path, name: str) -> None:
    p = clips_dir / name
    v_end, a_end = _stream_ends(p)
    info = probe(p)
    assert num_frames(info) == math.floor(min(v_end, a_end) * 25 + 1e-6)
    n = sum(1 for _ in iter_frames(p, size=16))
    assert n == math.floor(v_end * 25 + 1e-6)
    if name == "woman_11s_30fps.mp4":  # 131200 / 11988 s of video, 11.008 s of audio
        assert num_frames(info) == 273 == math.floor(131200 / 11988 * 25)


@pytest.mark.parametrize("name", ["woman_11s_30fps.mp4", "man_map_6s_30fps.mp4"])
def test_resampling_picks_frame_displayed_at_t(clips_dir: Path, name: str) -> None:
    """Output frame i == the source frame whose display interval holds t = i / 25."""
    p = clips_dir / name
    src, pts = [], []
    with av.open(str(p)) as c:
        for f in c.decode(video=0):
            pts.append(float(f.pts * f.time_base))
            src.append(f.to_ndarray(format="rgb24", width=24, height=24, interpolation="AREA"))
    pts_arr = np.array(pts)  # the container time origin is 0 for both clips
    out = list(iter_frames(p, fps=25, size=24))
    assert len(out) > 100
    for i, img in enumerate(out):
        j = max(0, int(np.searchsorted(pts_arr, i / 25 + 1e-6, side="right")) - 1)
        assert np.array_equal(img, src[j]), (name, i, j)


def test_mpeg1_grid(short_dir: Path) -> None:
    p = short_dir / "grid_3s.mpg"
    info = probe(p)
    assert info.video_codec == "mpeg1video" and info.audio_codec == "mp2"
    clip = read_clip(p, size=(90, 72))
    T = num_frames(info)
    assert T == 73  # floor(min(2.98 s video, 2.952 s audio) * 25)
    assert clip.frames.shape == (T, 72, 90, 3) and clip.audio.shape == (T * 640,)
    assert clip.frames.std() > 5 and np.sqrt(np.mean(clip.audio ** 2)) > 1e-3


def test_read_clip_alignment_30fps(clips_dir: Path) -> None:
    p = clips_dir / "woman_glasses_7s_30fps.mp4"
    clip = read_clip(p, size=64)
    T = num_frames(probe(p))
    assert clip.num_frames == T and clip.frames.shape == (T, 64, 64, 3)
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (T * 640,)
    full = read_audio(p)
    np.testing.assert_array_equal(clip.audio, fit_length(full, T * 640))


def test_crop_resize_and_max_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 48, 80, 3), dtype=np.uint8)
    p = write_video(tmp_path / "rgb.mp4", frames, pix_fmt="rgb24", crf=0)
    back = np.stack(list(iter_frames(p)))
    np.testing.assert_array_equal(back, frames)  # libx264rgb crf 0 is lossless
    crop = list(iter_frames(p, crop=(10, 4, 42, 36), max_frames=3))
    assert len(crop) == 3
    np.testing.assert_array_equal(crop[1], frames[1, 4:36, 10:42])
    small = next(iter_frames(p, crop=(10, 4, 42, 36), size=16))
    expect = frames[0, 4:36, 10:42].reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    assert small.shape == (16, 16, 3) and np.abs(small - expect).max() <= 1.0  # area filter
    assert next(iter_frames(p, size=(40, 24))).shape == (24, 40, 3)
    with pytest.raises(ValueError):
        next(iter_frames(p, crop=(0, 0, 100, 10)))


def test_display_rotation(tmp_path: Path) -> None:
    """A phone-style 90 degree display matrix (tkhd) is applied: output is upright."""
    img = np.zeros((32, 64, 3), np.uint8)
    img[:8, :8] = 255  # marker at the top-left of a landscape 64 x 32 picture
    p = write_video(tmp_path / "land.mp4", [img] * 5, pix_fmt="rgb24", crf=0)
    data = bytearray(p.read_bytes())
    k = data.index(b"tkhd")  # the video track's header comes first (version 0)
    assert data[k + 4] == 0
    off = k + 4 + 4 + 20 + 8 + 8
    data[off:off + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    rot = tmp_path / "portrait.mp4"
    rot.write_bytes(bytes(data))
    info = probe(rot)
    assert (info.width, info.height, info.rotation) == (32, 64, 270)
    f = next(iter_frames(rot))
    assert f.shape == (64, 32, 3)
    ys, xs = np.nonzero(f.mean(axis=2) > 128)
    assert ys.max() < 8 and xs.min() >= 24  # rotated clockwise: marker now top-right
    assert next(iter_frames(rot, crop=(0, 0, 32, 32), size=16)).shape == (16, 16, 3)


# ----------------------------------------------------------------------------- audio
@pytest.mark.parametrize("name", ["en_radio31.wav", "en_imagine.wav", "en_eng.wav",
                                  "en_kim.mp3", "fr_macron.wav", "zh_news.wav",
                                  "ja_sample.wav", "de_german1.wav"])
def test_read_audio_files(audio_dir: Path, name: str) -> None:
    p = audio_dir / name
    with av.open(str(p)) as c:
        s = c.streams.audio[0]
        dur = float(s.duration * s.time_base) if s.duration else c.duration / av.time_base
    a = read_audio(p)
    assert a.dtype == np.float32 and a.ndim == 1
    assert abs(a.shape[0] / 16000 - dur) < 0.03, (a.shape[0] / 16000, dur)  # mp3: 1 frame
    # full-scale (clipped) sources overshoot a little after band-limited resampling
    assert np.abs(a).max() <= 1.2 and np.sqrt(np.mean(a ** 2)) > 1e-3


def test_resampling_keeps_tone(tmp_path: Path) -> None:
    """48 kHz stereo 440 Hz (s16 wav) -> 16 kHz mono, same pitch and amplitude."""
    p = tmp_path / "tone.wav"
    sr, n = 48000, 48000
    t = np.arange(n) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with av.open(str(p), "w") as c:
        st = c.add_stream("pcm_s16le", rate=sr, layout="stereo")
        fr = av.AudioFrame.from_ndarray(np.stack([tone, tone]).T.reshape(1, -1).copy(),
                                        format="s16", layout="stereo")
        fr.sample_rate = sr
        encode_into(c, st, fr)
        encode_into(c, st)
    a = read_audio(p)
    assert abs(a.shape[0] - 16000) <= 1
    spec = np.abs(np.fft.rfft(a[1000:15000]))
    assert abs(np.argmax(spec) * 16000 / 14000 - 440) < 2
    assert abs(np.sqrt(2) * np.sqrt(np.mean(a[1000:15000] ** 2)) - 0.5) < 0.02


# ----------------------------------------------------------------------------- writing
def test_round_trip_keeps_sync(tmp_path: Path) -> None:
    T, marks = 60, (7, 31, 52)
    frames = np.full((T, 64, 96, 3), 40, np.uint8)
    audio = np.zeros(T * 640, np.float32)
    for k in marks:
        frames[k] = 235
        audio[640 * k + 200: 640 * k + 240] = 0.8  # click inside frame k's 40 ms
    meta = {"title": "round trip", "comment": "made by tests", "instag_spec": "mel-80"}
    p = write_video(tmp_path / "rt.mp4", frames, fps=25, audio=audio, metadata=meta)
    info = probe(p)
    for key, val in meta.items():
        assert info.metadata.get(key) == val
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    clip = read_clip(p)
    assert clip.num_frames == T and clip.audio.shape == (T * 640,)
    bright = np.nonzero(clip.frames.mean(axis=(1, 2, 3)) > 128)[0]
    assert tuple(bright) == marks
    env = np.abs(clip.audio).reshape(T, 640).max(axis=1)
    assert tuple(np.nonzero(env > 0.3)[0]) == marks
    # raw AAC output is a little longer (1024-sample frames); read_clip trims it
    assert 0 <= read_audio(p).shape[0] - T * 640 <= 2048


def test_atomic_write(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    frames = [np.full((32, 32, 3), v, np.uint8) for v in range(0, 250, 10)]
    write_video(out, frames)
    assert [q.name for q in tmp_path.iterdir()] == ["out.mp4"]
    old = out.read_bytes()

    def broken():
        yield from frames[:5]
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(out, broken(), audio=np.zeros(16000, np.float32))
    assert [q.name for q in tmp_path.iterdir()] == ["out.mp4"] and out.read_bytes() == old
    with pytest.raises(ValueError):
        write_video(tmp_path / "odd.mp4", [np.zeros((31, 32, 3), np.uint8)])
    assert [q.name for q in tmp_path.iterdir()] == ["out.mp4"]


def test_near_lossless_storage(tmp_path: Path, clips_dir: Path) -> None:
    """5 s of real 256^2 frames: yuv444p crf 0 is near-lossless and ~6x smaller than raw."""
    clip = read_clip(clips_dir / "may_5s.mp4", size=256)
    assert clip.frames.shape == (125, 256, 256, 3)
    p = write_video(tmp_path / "nl.mp4", clip.frames, audio=clip.audio, pix_fmt="yuv444p", crf=0)
    back = read_clip(p)
    size_mb, quality = p.stat().st_size / 1e6, psnr(clip.frames, back.frames)
    print(f"\nyuv444p crf0 5 s 256^2: {size_mb:.2f} MB (raw {clip.frames.nbytes / 1e6:.1f} MB), "
          f"PSNR {quality:.1f} dB")
    assert back.frames.shape == clip.frames.shape
    assert quality > 48 and size_mb < clip.frames.nbytes / 1e6 / 4


def test_iter_frames_streams(clips_dir: Path) -> None:
    """1080p frames are not accumulated: peak numpy memory stays at a few frames."""
    import tracemalloc
    p = clips_dir / "woman_1080p_7s_30fps.mp4"
    assert (probe(p).width, probe(p).height) == (1920, 1080)
    tracemalloc.start()
    try:
        n = 0
        for img in iter_frames(p, max_frames=60):
            assert img.shape == (1080, 1920, 3)
            n += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 60 and peak < 8 * 1920 * 1080 * 3  # 60 frames would be ~370 MB


@pytest.mark.parametrize("fmt,vcodec,acodec,ext", [("matroska", "libx264", "flac", "mkv"),
                                                   ("webm", "libvpx-vp9", "libopus", "webm"),
                                                   ("mp4", "libx264", "aac", "mp4")])
def test_late_audio_start_stays_in_sync(tmp_path: Path, fmt: str, vcodec: str, acodec: str,
                                        ext: str) -> None:
    """Audio starting 0.2 s after the video (mkv/webm have no per-stream durations)."""
    T, k, offset = 50, 10, 0.2
    p = tmp_path / f"late.{ext}"
    with av.open(str(p), "w", format=fmt) as c:
        vs = c.add_stream(vcodec, rate=25)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        st = c.add_stream(acodec, rate=48000 if acodec == "libopus" else 16000, layout="mono")
        sr = st.codec_context.sample_rate
        for i in range(T):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 235 if i == k else 40, np.uint8),
                                           format="rgb24")
            f.pts = i
            encode_into(c, vs, f)
        encode_into(c, vs)
        a = np.zeros(int((T / 25 - offset) * sr), np.float32)
        s = int((k / 25 + 0.01 - offset) * sr)  # click 10 ms into frame k
        a[s: s + sr // 400] = 0.8
        af = av.AudioFrame.from_ndarray(a[None], format="flt", layout="mono")
        af.sample_rate, af.pts = sr, int(offset * sr)
        encode_into(c, st, af)
        encode_into(c, st)
    info = probe(p)
    assert num_frames(info) == T
    clip = read_clip(p)
    assert clip.num_frames == T and clip.audio.shape == (T * 640,)
    assert np.abs(clip.audio[: int(0.19 * 16000)]).max() < 1e-3  # leading silence inserted
    assert int(clip.frames.mean(axis=(1, 2, 3)).argmax()) == k
    assert abs(np.abs(clip.audio).argmax() / 16000 - (k / 25 + 0.01)) < 0.004


# ----------------------------------------------------------------------------- hostile input
# Each maker writes a small hostile file into a test's tmp_path (nothing is committed).
def make_timestamp_bomb(path: Path, audio_start_s: float = 36000.0) -> Path:
    """mkv (a few KB): 1 s of 64x64 video at 0 s and 1 s of tone whose timestamps start
    at ``audio_start_s``; an aligned read would pad 10 h of silence before it."""
    with av.open(str(path), "w", format="matroska") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast"}
        st = c.add_stream("flac", rate=16000, layout="mono")
        for i in range(25):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40, np.uint8), format="rgb24")
            f.pts = i
            encode_into(c, vs, f)
        encode_into(c, vs)
        tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)
        af = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
        af.sample_rate, af.pts = 16000, int(audio_start_s * 16000)
        encode_into(c, st, af)
        encode_into(c, st)
    return path


def make_hour_of_silence(path: Path, seconds: int = 3600, sample_rate: int = 16000,
                         hide_length: bool = False) -> Path:
    """FLAC of ``seconds`` of digital silence (about 650 KB for an hour). ``hide_length``
    zeroes STREAMINFO's total-samples field ('unknown', as streamed FLAC has), so only
    decoding can tell the length."""
    with av.open(str(path), "w", format="flac") as c:
        st = c.add_stream("flac", rate=sample_rate, layout="mono")
        block = np.zeros((1, sample_rate * 10), np.int16)
        for k in range(seconds // 10):
            af = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            af.sample_rate, af.pts = sample_rate, k * sample_rate * 10
            encode_into(c, st, af)
        encode_into(c, st)
    if hide_length:
        data = bytearray(path.read_bytes())
        assert data[:4] == b"fLaC"
        off = 8 + 13  # STREAMINFO starts at byte 8; total samples = its last 36 of 108 bits
        data[off] &= 0xF0
        data[off + 1: off + 5] = b"\0\0\0\0"
        path.write_bytes(bytes(data))
    return path


def make_huge_frames(path: Path, side: int = 10000, frames: int = 1) -> Path:
    """mov (about 300 KB) of flat ``side x side`` frames with a short silent AAC track."""
    with av.open(str(path), "w", format="mov") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width = vs.height = side
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast"}
        st = c.add_stream("aac", rate=16000, layout="mono")
        plane = np.full((side * 3 // 2, side), 90, np.uint8)  # yuv420p: no RGB conversion
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            f.pts = i
            encode_into(c, vs, f)
        encode_into(c, vs)
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1280), np.float32), format="flt",
                                        layout="mono")
        af.sample_rate, af.pts = 16000, 0
        encode_into(c, st, af)
        encode_into(c, st)
    return path


def make_tone_clip(path: Path, seconds: float = 5.0, size: int = 64) -> Path:
    """A moving-pattern video with a 220 Hz tone (no face)."""
    n = round(seconds * 25)
    yy, xx = np.mgrid[0:size, 0:size]
    frames = (np.stack([(xx * 4 + 3 * t) % 256, (yy * 4) % 256, np.full_like(xx, 128)], -1)
              .astype(np.uint8) for t in range(n))
    t = np.arange(n * 640) / 16000
    return write_video(path, frames, audio=0.2 * np.sin(2 * np.pi * 220 * t), preset="ultrafast")


def make_truncated_mp4(path: Path, source: Path | None = None, keep: float = 0.5) -> Path:
    """The first ``keep`` of an mp4's bytes (index at the front: an interrupted upload)."""
    src = source or make_tone_clip(path.with_name(path.stem + "_full.mp4"))
    data = src.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_short_speech(audio_dir: Path, out: Path, seconds: float = 2.5) -> Path:
    """The first seconds of a real recording as a wav (kept in the test's temp folder)."""
    pcm = (np.clip(read_audio(audio_dir / "en_kim.mp3", duration=seconds), -1, 1)
           * 32767).astype(np.int16)
    with av.open(str(out), "w", format="wav") as c:
        st = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = 16000
        encode_into(c, st, frame)
        encode_into(c, st)
    return out


def make_zip_as_mp4(path: Path) -> Path:
    """A ZIP archive renamed to .mp4."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "not a video\n" * 100)
    return path


def make_video_gap(path: Path, gap_s: float = 100.0) -> Path:
    """mp4: 1 s of video, nothing for ``gap_s`` seconds, then 1 s more (plus audio)."""
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast"}
        vs.codec_context.time_base = Fraction(1, 25)
        st = c.add_stream("aac", rate=16000, layout="mono")
        jump = round(gap_s * 25)
        for i, pts in enumerate(list(range(25)) + list(range(25 + jump, 50 + jump))):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 4 * i % 256, np.uint8),
                                           format="rgb24")
            f.pts = pts
            encode_into(c, vs, f)
        encode_into(c, vs)
        af = av.AudioFrame.from_ndarray(np.zeros((1, 32000), np.float32), format="flt",
                                        layout="mono")
        af.sample_rate, af.pts = 16000, 0
        encode_into(c, st, af)
        encode_into(c, st)
    return path


def _error(fn, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as ei:
        out = fn(*args, **kwargs)
        if hasattr(out, "__next__"):
            for _ in out:
                pass
    assert "Traceback" not in str(ei.value)
    return ei.value


def test_timestamp_bomb_refused_from_headers(tmp_path: Path) -> None:
    """Audio starting 10 h after the video: refused before any padding is allocated."""
    p = make_timestamp_bomb(tmp_path / "bomb.mkv")
    assert p.stat().st_size < 40_000
    for fn in (read_audio, probe, read_clip, iter_frames):
        e = _error(fn, p)
        assert e.code == "timing", (fn.__name__, e)
        assert "audio starts 36000 s (10 h 0 min) after its video" in e.problem
        assert "start together" in e.fix


def test_late_start_within_limit_still_read(tmp_path: Path) -> None:
    p = make_timestamp_bomb(tmp_path / "late.mkv", audio_start_s=1.5)
    a = read_audio(p)
    assert np.abs(a[: int(1.45 * 16000)]).max() < 1e-3 and np.abs(a[24000:]).max() > 0.1
    with pytest.raises(InputError, match="the limit is 1 s"):
        read_audio(p, limits=MediaLimits(max_start_offset_s=1.0))


def test_hour_of_silence_refused_from_header(tmp_path: Path) -> None:
    p = make_hour_of_silence(tmp_path / "hour.flac")
    assert p.stat().st_size < 1_000_000
    e = _error(read_audio, p, limits=MediaLimits(max_seconds=120))
    assert e.code == "too_long" and "3600 s (1 h 0 min) long; the limit is 120 s" in e.problem
    assert _error(read_audio, p).code == "too_long"  # the default limit (600 s) too
    assert read_audio(p, duration=2.0).shape == (32000,)  # the first seconds stay readable


def test_decoding_stops_at_the_limit_when_the_header_hides_the_length(tmp_path: Path) -> None:
    """No length in the header: decoding itself stops at max_seconds (+1 s slack)."""
    import tracemalloc

    p = make_hour_of_silence(tmp_path / "hour_nolen.flac", seconds=600, hide_length=True)
    with av.open(str(p)) as c:
        assert c.duration is None and not c.streams.audio[0].duration
    tracemalloc.start()
    try:
        e = _error(read_audio, p, limits=MediaLimits(max_seconds=30))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.code == "too_long" and "the limit is 30 s" in e.problem
    assert peak < 3 * 31 * 16000 * 4  # a few copies of 31 s of float32, not 600 s


def test_huge_frames_refused_from_header(tmp_path: Path) -> None:
    p = make_huge_frames(tmp_path / "huge.mov")
    assert p.stat().st_size < 2_000_000
    for fn in (probe, iter_frames, read_clip):
        e = _error(fn, p)
        assert e.code == "too_large" and "10000x10000 pixels" in e.problem, (fn.__name__, e)
        assert "1080p" in e.fix


def test_pixel_cap_reaches_the_decoder(tmp_path: Path) -> None:
    """The decoder itself is capped: the header check skipped, decoding still refuses."""
    from core.data.media import _open, _open_decoder

    p = make_tone_clip(tmp_path / "small.mp4", seconds=1.0, size=64)
    with _open(p) as c:
        vs = c.streams.video[0]
        with pytest.raises(InputError, match="64x64"):
            _open_decoder(vs, p.name, MediaLimits(max_pixels=1000))
        vs.codec_context.width = 8  # a lying header (8x64 < 1000)
        _open_decoder(vs, p.name, MediaLimits(max_pixels=1000))
        with pytest.raises((av.FFmpegError, ValueError)):
            next(c.decode(vs))
    assert len(list(iter_frames(p, limits=MediaLimits(max_pixels=64 * 64)))) == 25


def test_truncated_mp4(tmp_path: Path) -> None:
    p = make_truncated_mp4(tmp_path / "cut.mp4")
    assert probe(p).duration_s == pytest.approx(5.0)  # the header still says 5 s
    for fn in (read_audio, iter_frames):
        e = _error(fn, p)
        assert e.code == "truncated" and "header says 5.0 s" in e.problem, (fn.__name__, e)
        assert "complete file" in e.fix


def test_audio_decoder_failing_at_the_cut_says_cut_short(tmp_path: Path) -> None:
    """An 8 s clip cut in half: its audio decoder fails part way (invalid data where the
    file ends) rather than running out; that too is a file cut short, not an unreadable
    one, and preprocessing says so before looking for a face, even when it keeps only the
    first second of video (which lies before the cut)."""
    from core.data.preprocess import PreprocessConfig, preprocess

    p = make_truncated_mp4(tmp_path / "cut.mp4", make_tone_clip(tmp_path / "whole_8s.mp4", 8.0))
    e = _error(read_audio, p)
    assert e.code == "truncated" and "header says 8.0 s" in e.problem, e
    with pytest.raises(InputError) as got:
        preprocess(p, tmp_path / "out", PreprocessConfig(res=64, max_frames=25))
    assert got.value.code == "truncated"  # the tone clip has no face: tracking never ran
    assert not (tmp_path / "out").exists()


def test_truncated_mp4_index_at_the_end(tmp_path: Path, clips_dir: Path) -> None:
    """A phone-style mp4 (index written last) cut in half: the index is gone."""
    p = make_truncated_mp4(tmp_path / "cut.mp4", clips_dir / "woman_desk_5s.mp4")
    for fn in (probe, read_audio, iter_frames):
        e = _error(fn, p)
        assert e.code == "truncated" and "damaged or cut short" in e.problem, (fn.__name__, e)


def test_zip_renamed_mp4(tmp_path: Path) -> None:
    p = make_zip_as_mp4(tmp_path / "clip.mp4")
    for fn in (probe, read_audio, iter_frames):
        e = _error(fn, p)
        assert e.code == "unreadable" and e.problem == "clip.mp4 is a ZIP archive, not audio or video."


def test_video_gap_refused_while_decoding(tmp_path: Path) -> None:
    p = make_video_gap(tmp_path / "gap.mp4")
    e = _error(iter_frames, p)
    assert e.code == "timing" and "video jumps from 1.0 s to 101.0 s" in e.problem
    assert len(list(iter_frames(p, max_frames=20))) == 20  # before the gap all is well


def test_audio_gap_refused_while_decoding(tmp_path: Path) -> None:
    """Audio frames at 0 s and at 10 h: with no length limit, the gap check stops it."""
    p = tmp_path / "agap.mka"
    with av.open(str(p), "w", format="matroska") as c:
        st = c.add_stream("flac", rate=16000, layout="mono")
        for start in (0, 36000 * 16000):
            af = av.AudioFrame.from_ndarray(np.full((1, 16000), 0.1, np.float32), format="flt",
                                            layout="mono")
            af.sample_rate, af.pts = 16000, start
            encode_into(c, st, af)
        encode_into(c, st)
    e = _error(read_audio, p, limits=MediaLimits(max_seconds=math.inf))
    assert e.code == "timing" and "audio jumps from" in e.problem


def test_input_error_survives_pickling() -> None:
    """Errors cross process boundaries (worker pools, a ZeroGPU worker) with their fields."""
    import pickle

    from core.errors import InputError

    e = pickle.loads(pickle.dumps(InputError("timing", "The audio starts at 36000 s.", "Re-encode it.")))
    assert isinstance(e, InputError) and (e.code, e.problem, e.fix) == (
        "timing", "The audio starts at 36000 s.", "Re-encode it.")
    assert str(e) == "The audio starts at 36000 s. Re-encode it."
