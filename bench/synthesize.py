"""Talk speed: an avatar driven by new audio, the per-frame path and the fast path side by
side in one process (frames per second end to end, their ratio, and how far apart their
frames are), and optionally where the per-frame path spends its time. With ``--frames crop
full``: full-frame output against crop output instead (fast path), side by side in one
run, each synthesis in a fresh process so its peak memory is its own; ``@native`` draws the
head at the crop box's own side up to 512 px (``head_res='native'``, the GPU default), the
others at the avatar's res (the CPU default).

    python -m bench.synthesize --avatar AVATAR [--audio ../shared/data/audio/en_radio31.wav]
                               [--threads 1 2] [--seconds S] [--profile]
    python -m bench.synthesize --avatar AVATAR --frames crop full [full:box] [full@native]
                               [--threads 2] [--seconds S] [--audio-seconds 120]
    python -m bench.synthesize --avatar AVATAR --first-segment 7.4 30 120 [--threads 2]
                               [--frame crop|full] [--repeats 3]

The per-frame / fast comparison renders the crop (``frame='crop'``), as before full-frame
output existed. In the frame comparison, peak RSS is the child process's maximum resident
set (``ru_maxrss``) and "growth" its rise during the synthesis over what the loaded avatar
held, which stays flat with the audio's length when frames are streamed. "sharpness": Sobel
gradient energy inside the face oval, the video over the recorded training frame it was made
on (:func:`eval.bench.full_res.talk_sharpness`; the crop resized to the crop box first).

End to end = audio read + features + mouth drive + every frame + the finished mp4 (the
avatar is loaded once, before the clocks start). Wall-clock seconds and the process's CPU
seconds are both printed: on a machine shared with other busy processes the wall clock
is distorted, the CPU time much less so (but it cannot show two cores working at once).
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.model.avatar import Avatar, load_avatar
from core.synthesize import TalkConfig, synthesize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = (ROOT / ".." / "shared" / "data" / "audio" / "en_radio31.wav").resolve()


def run(av: Avatar, audio: Path, out: Path, threads: int, talk: TalkConfig,
        seconds: float | None) -> tuple[float, float, int]:
    """(wall s, CPU s, frames) of one synthesis with ``threads`` PyTorch threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        r = synthesize(av, audio, out, duration=seconds, talk=replace(talk, workers=threads),
                       frame="crop")
        return time.perf_counter() - w0, time.process_time() - c0, r.frames
    finally:
        torch.set_num_threads(old)


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process in MB (Linux)."""
    import resource

    cur = 0.0
    with open("/proc/self/statm") as f:
        cur = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    return cur, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frame_child(avatar: str, audio: str, out: str, threads: int, frame: str, blend: str,
                 seconds: float | None, q, head_res: str = "avatar") -> None:
    """One synthesis in a fresh process: puts (wall s, CPU s, frames, size, frame made, RSS
    before MB, peak RSS MB, face sharpness ratio) on ``q``."""
    from eval.bench.full_res import talk_sharpness

    torch.set_num_threads(threads)
    av = load_avatar(avatar)
    before, _ = _rss_mb()
    w0, c0 = time.perf_counter(), time.process_time()
    r = synthesize(av, audio, out, duration=seconds, talk=TalkConfig(workers=threads),
                   frame=frame, blend=blend, head_res=head_res)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = _rss_mb()[1]
    sharp = talk_sharpness(Path(out), av) if av.full is not None else float("nan")
    q.put((wall, cpu, r.frames, r.size, r.frame, before, peak, sharp))


def looped_audio(audio: Path, seconds: float, folder: Path) -> Path:
    """``audio`` repeated to ``seconds`` (16 kHz mono 16-bit wav in ``folder``): a long
    Talk from a short recording."""
    import wave

    from core.data.media import read_audio

    wav = read_audio(audio, 16000)
    n = int(round(seconds * 16000))
    pcm = np.tile(wav, -(-n // wav.shape[0]))[:n]
    out = folder / f"{audio.stem}_{seconds:g}s.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return out


def compare_frames(avatar: Path, audio: Path, frames: list[str], threads: list[int],
                   seconds: float | None) -> None:
    """Full-frame against crop output, each in a fresh process, printed as a table."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    print(f"\n{'threads':>7} {'frame':>17} {'size':>10} {'frames':>6} {'wall s':>7} "
          f"{'FPS':>6} {'CPU s':>7} {'frames/CPU s':>12} {'RSS MB':>7} {'peak MB':>8} "
          f"{'growth MB':>9} {'sharpness':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in threads:
            for mode in frames:
                mode, _, head = mode.partition("@")
                frame, _, blend = mode.partition(":")
                q = ctx.Queue()
                proc = ctx.Process(target=_frame_child, args=(
                    str(avatar), str(audio), str(Path(tmp) / f"{frame}_{blend}_{head}_{n}.mp4"),
                    n, frame, blend or "lower-face", seconds, q, head or "avatar"))
                proc.start()
                wall, cpu, T, size, made, before, peak, sharp = q.get()
                proc.join()
                label = made if made == "crop" else f"{made}:{blend or 'lower-face'}"
                label += "@native" if head == "native" and made != "crop" else ""
                print(f"{n:>7} {label:>17} {size[0]:>4}x{size[1]:<5} {T:>6} {wall:>7.1f} "
                      f"{T / wall:>6.2f} {cpu:>7.1f} {T / cpu:>12.2f} {before:>7.0f} "
                      f"{peak:>8.0f} {peak - before:>9.0f} {sharp:>9.2f}", flush=True)


def frames_of(path: Path) -> np.ndarray:
    from core.data.media import read_clip

    return read_clip(path).frames


def profile(av: Avatar, audio: Path, seconds: float | None) -> list[tuple[str, float]]:
    """CPU seconds per frame of each stage of the per-frame path (one thread)."""
    from core.data.media import read_audio, write_video
    from core.model.head import (FrameCond, composite, face_motion, hook_from_face,
                                 mouth_dilation, mouth_motion)
    from core.model.motion_field import HOOK_K_EVAL, audio_windows
    from core.raster import torch_backend
    from core.raster.projection import camera_center, project
    from core.raster.render import RenderOutput
    from core.raster.sh import sh_to_rgb
    from core.raster.tiles import bin_gaussians
    from core.synthesize import draw_mark, field_audio, pingpong

    clock = time.process_time
    acc: dict[str, float] = {}

    def tick(key: str, t0: float) -> float:
        now = clock()
        acc[key] = acc.get(key, 0.0) + now - t0
        return now

    t = clock()
    wav = read_audio(audio, 16000, duration=seconds)
    T = math.ceil(wav.shape[0] / 640)
    wav = np.concatenate([wav, np.zeros(T * 640 - wav.shape[0], np.float32)])
    t = tick("audio read", t)
    feats = field_audio(av, wav, T)
    t = tick("audio features (field input)", t)
    mouth = av.drive.predicted(wav, T) if av.drive is not None else None
    t = tick("mouth drive (front end + predictors)", t)
    res, frames = av.res, []
    with torch.no_grad():
        for f in range(T):
            i = pingpong(f, av.num_frames)
            cond = FrameCond(viewmat=av.viewmats[i], K=av.K, width=res, height=res,
                             audio_win=audio_windows(feats, f)[0], expr=av.expr[i],
                             mouth=None if mouth is None else mouth[f])
            fm = face_motion(av.umf, av.ident, cond)
            t = tick("face motion field", t)
            mm = mouth_motion(av.umf, av.ident, cond, hook_from_face(fm, HOOK_K_EVAL))
            t = tick("mouth motion field", t)
            outs = []
            for gs, m, name in ((av.ident.face, fm, "face"), (av.ident.mouth, mm, "mouth")):
                act = gs.activated(m)
                vm, K = cond.viewmat.to(act.means), cond.K.to(act.means)
                rgb = sh_to_rgb(act.sh_degree, act.sh, act.means, camera_center(vm))
                t = tick(f"{name}: activation + SH colour", t)
                d = torch.float64
                proj = project(act.means.to(d), act.quats.to(d), act.scales.to(d),
                               act.opacities, vm.to(d), K.to(d), res, res)
                m2 = proj.means2d.float()
                t = tick(f"{name}: projection", t)
                bins = bin_gaussians(m2, proj.radii, proj.depths, proj.visible, res, res,
                                     conics=proj.conics, opacities=act.opacities)
                t = tick(f"{name}: tile binning", t)
                feat = torch.cat([rgb, proj.depths.unsqueeze(1).to(rgb)], 1)
                img, alpha = torch_backend.composite(m2, proj.quad.float(), act.opacities, feat,
                                                     feat.new_zeros(4), bins, res, res)
                t = tick(f"{name}: tile compositing", t)
                outs.append(RenderOutput(img[..., :3], alpha, img[..., 3:], m2, proj.radii,
                                         proj.visible))
            plate = av.plates[i].float() / 255.0
            img = composite(outs[0], outs[1], plate, mouth_dilation(res)).clamp(0.0, 1.0)
            frame = (img * 255.0).round().to(torch.uint8).numpy()
            t = tick("composite over the plate + uint8", t)
            frames.append(draw_mark(frame))
            t = tick("AI-generated mark", t)
    with tempfile.TemporaryDirectory() as tmp:
        write_video(Path(tmp) / "p.mp4", frames, fps=25.0, audio=wav, sample_rate=16000)
    tick("mp4 encoding (x264 medium, crf 18)", t)
    return [(k, v / T) for k, v in acc.items()]


def first_segment(avatar: Path, audio: Path, lengths: list[float], threads: int,
                  frame: str, repeats: int) -> None:
    """A streamed Talk (``stream_dir``) of ``audio`` looped to each length: seconds from the
    call to the first segment written, with the lead (the first frames driven from the
    phones of the audio's first seconds, :class:`core.model.lead_codes.LeadCodes`) and
    without it (the whole file's front end first), alternating, ``repeats`` times each;
    the render stops once the first segment is out, and the next one starts once a stopped
    lead's whole-file front end (which goes on by itself) has ended."""
    import threading

    from core.model.lead_codes import THREAD_NAME, LeadConfig

    class Done(Exception):
        pass

    av = load_avatar(avatar)
    modes = {"whole file first": TalkConfig(lead=LeadConfig(seconds=math.inf)),
             "lead": TalkConfig()}
    print(f"\n{'audio s':>7} {'front end':>17} {'first segment s (median)':>25} {'min':>6} "
          f"{'max':>6}")
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            wav = looped_audio(audio, seconds, Path(tmp))
            times: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(repeats):
                for name, talk in modes.items():
                    d = Path(tmp) / f"{name[:4]}_{seconds:g}_{r}"
                    t0 = time.perf_counter()

                    def segment(_: Path) -> None:
                        times[name].append(time.perf_counter() - t0)
                        raise Done

                    try:
                        synthesize(av, wav, d / "o.mp4", stream_dir=d / "s", on_segment=segment,
                                   talk=talk, frame=frame)
                    except Done:
                        pass
                    for t in threading.enumerate():
                        if t.name == THREAD_NAME:
                            t.join()
            for name, ts in times.items():
                ts.sort()
                print(f"{seconds:7.1f} {name:>17} {ts[len(ts) // 2]:25.2f} {ts[0]:6.2f} "
                      f"{ts[-1]:6.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--avatar", type=Path, required=True)
    p.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=None, help="use the first S s of audio")
    p.add_argument("--profile", action="store_true", help="per-stage CPU time, one thread")
    p.add_argument("--frames", nargs="+", default=None,
                   choices=("crop", "full", "full:box", "full@native", "full:box@native"),
                   help="compare these output frames (fast path) instead of the two paths "
                   "(full = full:lower-face; @native: the head drawn at the box's own side)")
    p.add_argument("--audio-seconds", type=float, default=None,
                   help="with --frames: the audio repeated to this length (a long Talk)")
    p.add_argument("--first-segment", type=float, nargs="+", default=None, metavar="S",
                   help="time to a streamed Talk's first segment for the audio looped to "
                   "these lengths, with and without the lead (first of --threads)")
    p.add_argument("--frame", choices=("crop", "full"), default="crop",
                   help="with --first-segment: the output frame")
    p.add_argument("--repeats", type=int, default=3, help="with --first-segment")
    a = p.parse_args()
    if a.first_segment:
        print(f"avatar {a.avatar.name}; audio {a.audio.name}; {a.frame} frame; "
              f"{a.threads[0]} thread(s); load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        first_segment(a.avatar, a.audio, a.first_segment, a.threads[0], a.frame, a.repeats)
        return
    if a.frames:
        with tempfile.TemporaryDirectory() as tmp:
            audio = a.audio if a.audio_seconds is None else looped_audio(
                a.audio, a.audio_seconds, Path(tmp))
            print(f"avatar {a.avatar.name}; audio {audio.name}"
                  f"{'' if a.seconds is None else f' (first {a.seconds:g} s)'}; "
                  f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            compare_frames(a.avatar, audio, a.frames, a.threads, a.seconds)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return
    av = load_avatar(a.avatar)
    print(f"avatar {a.avatar.name}: {av.res}², {av.ident.face.num} face + "
          f"{av.ident.mouth.num} mouth Gaussians; audio {a.audio.name}")
    if a.profile:
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        rows = profile(av, a.audio, a.seconds)
        torch.set_num_threads(old)
        tot = sum(v for _, v in rows)
        print(f"\nper-frame path, 1 thread: CPU ms per frame ({1 / tot:.2f} frames per CPU s)")
        for k, v in rows:
            print(f"  {k:40s} {1000 * v:8.2f} {100 * v / tot:6.1f} %")
    print(f"\n{'threads':>7} {'path':>10} {'frames':>6} {'wall s':>7} {'FPS':>7} {'CPU s':>7} "
          f"{'frames/CPU s':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.threads:
            res = {}
            for name, talk in (("per-frame", TalkConfig(reference=True)), ("fast", TalkConfig())):
                out = Path(tmp) / f"{name}_{n}.mp4"
                wall, cpu, T = run(av, a.audio, out, n, talk, a.seconds)
                res[name] = (wall, out)
                print(f"{n:>7} {name:>10} {T:>6} {wall:>7.1f} {T / wall:>7.2f} {cpu:>7.1f} "
                      f"{T / cpu:>12.2f}", flush=True)
            ratio = res["per-frame"][0] / res["fast"][0]
            x, y = frames_of(res["per-frame"][1]), frames_of(res["fast"][1])
            mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
            psnr = 10 * math.log10(255 ** 2 / mse) if mse > 0 else math.inf
            print(f"{n:>7} fast / per-frame: {ratio:.2f}x end to end; decoded mp4s "
                  f"{psnr:.1f} dB apart, max |diff| {int(np.abs(x.astype(int) - y).max())}/255")


if __name__ == "__main__":
    main()
