"""Does Gradio's streaming video player show our MPEG-TS segments? A browser check with no
avatar: synthetic frames (a moving colour ramp, 25 fps) and a 440 Hz tone are cut into
segments by :class:`core.data.media.SegmentStream` (0.4 s, then 1 s each), a tiny Gradio app
yields them one by one to ``gr.Video(streaming=True, autoplay=True)`` (``--delay`` s apart,
like a render), and headless Chromium (Playwright) clicks its button and samples the page's
``<video>`` (readyState, currentTime, buffered, error) every 0.25 s.

Run from the project root:
``python -m bench.stream_player [--probe app|pyav|ffprobe|subclass] [--segments 6]
[--delay 1.0] [--mode ts|restart|mp4] [--muted] [--autoplay-flag]``

``--mode``: ``ts`` yields our segments as written (timestamps continuing from segment to
segment); ``restart`` writes every segment with timestamps starting at 0; ``mp4`` yields
each segment as an mp4 (Gradio converts it to .ts itself).

Prints the playlists Gradio served, every segment request, the player's console messages
(hls.js errors), the time from the click to the first sample with ``readyState >= 2`` and
to ``currentTime > 0``, how long the picture stood still after it started (samples whose
``currentTime`` did not move while the video was not paused) and when the last segment had
played out. Needs /usr/bin/chromium and playwright.
"""
from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.browser import CHROMIUM, FLAGS, loopback_only

FPS = 25.0
SR = 16000
PROBE = """() => { const v = document.querySelector('video'); if (!v) return null;
  const b = []; for (let i = 0; i < v.buffered.length; i++) b.push([v.buffered.start(i), v.buffered.end(i)]);
  return {rs: v.readyState, t: v.currentTime, paused: v.paused, muted: v.muted,
          err: v.error ? v.error.code + ' ' + v.error.message : null, src: v.currentSrc, buf: b}; }"""


def frames(n: int, size: int = 128) -> list[np.ndarray]:
    """``n`` (size, size, 3) uint8 frames: a horizontal ramp that scrolls one column a frame."""
    x = np.arange(size)
    out = []
    for i in range(n):
        ramp = ((x + 4 * i) % size * 255 // (size - 1)).astype(np.uint8)
        f = np.zeros((size, size, 3), np.uint8)
        f[..., 0] = ramp[None, :]
        f[..., 1] = ramp[:, None]
        f[..., 2] = (i * 10) % 256
        out.append(f)
    return out


def make_segments(folder: Path, n_segments: int, mode: str) -> list[Path]:
    """Write the segments (0.4 s first, then 1 s) and return their paths in order."""
    from core.data.media import SegmentStream, write_segment, write_video

    n_frames = 10 + 25 * (n_segments - 1)
    fr = frames(n_frames)
    audio = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(n_frames / FPS * SR)) / SR)
             ).astype(np.float32)
    s = SegmentStream(folder / "stream", fps=FPS, audio=audio, sample_rate=SR,
                      segment_frames=25, first_frames=10)
    paths = [p for f in fr if (p := s.add(f)) is not None]
    if (last := s.close()) is not None:
        paths.append(last)
    if mode == "ts":
        return paths
    cuts, start = [], 0
    for k, _ in enumerate(paths):
        n = 10 if k == 0 else 25
        cuts.append((start, start + n))
        start += n
    out = []
    for k, (a, b) in enumerate(cuts):
        seg_audio = audio[int(a / FPS * SR):int(b / FPS * SR)]
        if mode == "restart":
            p = write_segment(folder / mode / f"seg_{k:03d}.ts", fr[a:b], 0, FPS, seg_audio, SR)
        else:
            p = folder / mode / f"seg_{k:03d}.mp4"
            write_video(p, fr[a:b], FPS, audio=seg_audio, sample_rate=SR)
        out.append(p)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segments", type=int, default=6)
    ap.add_argument("--delay", type=float, default=1.0, help="seconds between yields")
    ap.add_argument("--mode", choices=["ts", "restart", "mp4"], default="ts")
    ap.add_argument("--muted", action="store_true", help="mute the <video> before clicking")
    ap.add_argument("--autoplay-flag", action="store_true",
                    help="launch Chromium with --autoplay-policy=no-user-gesture-required")
    ap.add_argument("--watch", type=float, default=20.0, help="seconds to sample the player")
    ap.add_argument("--probe", choices=["ffprobe", "pyav", "subclass", "app"], default="app",
                    help="how each chunk's duration is read: gr.Video's own ffprobe call "
                         "(needs the ffprobe program); gr.Video patched to use "
                         "core.data.media.media_seconds (pyav); a plain gr.Video subclass "
                         "overriding it (its frontend name becomes the subclass's); the "
                         "app's player, demo.streaming.SegmentVideo (app)")
    ap.add_argument("--end-update", action="store_true",
                    help="yield gr.update() after the last segment (as the Talk tab does, "
                         "whose last step fills the download box)")
    args = ap.parse_args()

    import gradio as gr
    from playwright.sync_api import sync_playwright

    from core.data.media import media_seconds

    player = gr.Video
    if args.probe == "pyav":
        gr.Video.get_video_duration_ffprobe = staticmethod(media_seconds)
    elif args.probe == "subclass":
        class PlainSubclass(gr.Video):
            get_video_duration_ffprobe = staticmethod(media_seconds)
        player = PlainSubclass
    elif args.probe == "app":
        from demo.streaming import SegmentVideo
        player = SegmentVideo

    tmp = Path(tempfile.mkdtemp(prefix="stream_player_"))
    segs = make_segments(tmp, args.segments, args.mode)
    print(f"{len(segs)} segments ({args.mode}):", ", ".join(p.name for p in segs))

    def play():
        for p in segs:
            yield str(p)
            time.sleep(args.delay)
        if args.end_update:
            yield gr.update()

    with gr.Blocks() as demo:
        btn = gr.Button("Go", elem_id="go")
        vid = player(streaming=True, autoplay=True, elem_id="player")
        btn.click(play, None, vid)
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                quiet=True, ssr_mode=False)
    url = f"http://127.0.0.1:{port}/"

    log: list[str] = []
    t0 = [0.0]

    def stamp() -> str:
        return f"{time.time() - t0[0]:7.2f}s" if t0[0] else "  -    "

    def on_response(resp) -> None:
        if "/stream/" in resp.url:
            log.append(f"{stamp()} {resp.status} {resp.url.split('/stream/')[1]}")
            if resp.url.endswith(".m3u8"):
                try:
                    body = resp.text().strip().replace("\n", " | ")
                except Exception as e:  # noqa: BLE001 - body may be gone
                    body = f"<{e}>"
                log.append(f"         playlist: {body}")

    flags = FLAGS + (["--autoplay-policy=no-user-gesture-required"] if args.autoplay_flag
                     else [])
    first_ready = first_play = played_out = None
    samples: list[tuple[float, float, bool]] = []   # (s since the click, currentTime, paused)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=flags)
            page = browser.new_page()
            page.route("**/*", loopback_only)
            page.on("console", lambda m: log.append(f"{stamp()} console.{m.type}: "
                                                    f"{m.text[:400]}"))
            page.on("pageerror", lambda e: log.append(f"{stamp()} pageerror: {e}"))
            page.on("response", on_response)
            page.goto(url)
            try:
                page.wait_for_selector("#go", timeout=15_000)
            except Exception:  # noqa: BLE001 - report what the page did instead
                log.append("the page never showed its button (the app did not render)")
                args.watch = 0
            t0[0] = time.time()
            page.click("#go")
            last = None
            while time.time() - t0[0] < args.watch:
                if args.muted:
                    page.evaluate("() => { const v = document.querySelector('video');"
                                  " if (v) v.muted = true; }")
                st = page.evaluate(PROBE)
                dt = time.time() - t0[0]
                if st is not None:
                    if first_ready is None and st["rs"] >= 2:
                        first_ready = dt
                    if first_play is None and st["t"] > 0:
                        first_play = dt
                    samples.append((dt, st["t"], st["paused"]))
                    if played_out is None and st["paused"] and st["buf"] and st["t"] > 0 \
                            and st["t"] >= st["buf"][-1][1] - 1e-3:
                        played_out = dt
                    key = (st["rs"], round(st["t"], 0), st["paused"], st["err"], str(st["buf"]))
                    if key != last:
                        log.append(f"{dt:7.2f}s video: {st}")
                        last = key
                time.sleep(0.25)
            browser.close()
    finally:
        demo.close()
    print("\n".join(log))
    print(f"click -> readyState>=2: {first_ready if first_ready is None else f'{first_ready:.2f} s'}")
    print(f"click -> currentTime>0: {first_play if first_play is None else f'{first_play:.2f} s'}")
    print(f"picture stood still after it started: {stood_still(samples):.2f} s")
    print(f"click -> last segment played out: "
          f"{'not within --watch' if played_out is None else f'{played_out:.2f} s'}")


def stood_still(samples: list[tuple[float, float, bool]]) -> float:
    """Seconds between consecutive samples, after playback started, in which ``currentTime``
    did not move although the video was not paused (a stall)."""
    total = 0.0
    for (t0, c0, _), (t1, c1, paused) in zip(samples, samples[1:]):
        if c0 > 0 and not paused and c1 == c0:
            total += t1 - t0
    return total


if __name__ == "__main__":
    main()
