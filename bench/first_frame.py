"""Render -> first frame on screen, in a real browser, by the length of the audio.

The app (``demo.ui``) runs in this process on a loopback port; headless Debian Chromium
(Playwright) creates an avatar from ``--clip`` through the Create tab (consent ticked),
then in the Talk tab uploads the audio cut or looped to each ``--seconds`` length, clicks
Render and measures the time until the streamed player's ``<video>`` has a frame to show
(``readyState >= 2``), then waits for the whole mp4. Each length ``--repeats`` times.
Prints one line per render and a summary table (median first-frame time per length).

Run from the project root (needs /usr/bin/chromium and playwright; ``.ci/run`` installs
them): ``python -m bench.first_frame [--preset fast] [--seconds 7.4 30] [--repeats 3]``.
The preset defaults to the app's own default on this machine; ``--preset tiny`` makes the
avatar in seconds instead of about a minute and a half (the first frame then costs less
to render, so it says less about a real avatar).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.browser import CHROMIUM, FLAGS, loopback_only

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
#: The streamed player has a frame to show.
FIRST_FRAME_JS = ("() => { const v = document.querySelector('#talk-live video');"
                  " return !!v && v.readyState >= 2; }")


def measure(clip: Path, audios: list[tuple[float, Path]], repeats: int, preset: str | None,
            data_root: Path) -> list[dict]:
    """Create an avatar from ``clip`` in the browser, then render each audio ``repeats``
    times; one dict per render: seconds of audio, first-frame time (s), whether the render
    was still going then, and the whole render's time (s)."""
    from playwright.sync_api import sync_playwright

    from bench.stream_player import free_port
    from demo.config import AppConfig
    from demo.ui import build_app, launch

    overrides = {"preset": preset} if preset else {}
    cfg = AppConfig.from_env(data_root=data_root, **overrides)
    demo = build_app(cfg, start_sweeper=False)
    port = free_port()
    launch(demo, cfg, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
           quiet=True)
    url = f"http://127.0.0.1:{port}/"
    rows: list[dict] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", loopback_only)
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Create avatar").wait_for()
            t0 = time.perf_counter()
            page.set_input_files("#create-video input[type=file]", str(clip))
            page.locator("#create-video video").wait_for()
            page.fill("#create-name textarea, #create-name input", "first-frame bench")
            page.check("#create-consent input[type=checkbox]")
            page.click("#create-btn")
            page.locator("#create-status", has_text="is ready").wait_for(timeout=1800_000)
            print(f"avatar ({cfg.preset} preset) ready {time.perf_counter() - t0:.0f} s "
                  f"after the upload", flush=True)
            for seconds, audio in audios:
                for r in range(repeats):
                    # a fresh page per render: the players are empty again, the avatar
                    # stays listed and selected (the owner token is in the browser's storage)
                    page.reload(wait_until="domcontentloaded")
                    page.get_by_role("tab", name="Talk").click()
                    page.locator("#avatar-table").get_by_text(
                        "first-frame bench").first.wait_for()
                    page.set_input_files("#talk-audio input[type=file]", str(audio))
                    page.locator('#talk-audio [data-testid="waveform-controls"]').wait_for()
                    t_click = time.perf_counter()
                    page.click("#talk-btn")
                    page.wait_for_function(FIRST_FRAME_JS, timeout=600_000, polling=50)
                    first = time.perf_counter() - t_click
                    rendering = not page.locator("#talk-status", has_text="frames").count()
                    page.locator("#talk-status", has_text="frames").wait_for(timeout=1800_000)
                    whole = time.perf_counter() - t_click
                    rows.append({"seconds": seconds, "first_s": first, "rendering": rendering,
                                 "whole_s": whole})
                    print(f"{seconds:5.1f} s of audio, run {r + 1}: first frame {first:.2f} s "
                          f"after Render (still rendering: {rendering}); whole mp4 {whole:.1f} s",
                          flush=True)
            browser.close()
    finally:
        demo.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.first_frame", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DATA / "clips" / "may_5s.mp4")
    p.add_argument("--audio", type=Path, default=DATA / "audio" / "en_eng.wav",
                   help="speech, cut or looped to each --seconds length")
    p.add_argument("--seconds", type=float, nargs="+", default=[7.4, 30.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", default=None,
                   help="adaptation preset of the avatar (default: the app's)")
    a = p.parse_args(argv)
    if not CHROMIUM.is_file():
        p.error(f"needs Debian chromium at {CHROMIUM} (apt-get install -y chromium)")
    from bench.synthesize import looped_audio

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        audios = [(s, looped_audio(a.audio, s, tmp_path)) for s in a.seconds]
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        rows = measure(a.clip, audios, a.repeats, a.preset, tmp_path / "data")
    print(f"\n{'audio s':>8} {'renders':>7} {'first frame s (median)':>23} {'min':>6} {'max':>6}")
    for s in a.seconds:
        firsts = [r["first_s"] for r in rows if r["seconds"] == s]
        print(f"{s:8.1f} {len(firsts):7d} {statistics.median(firsts):23.2f} "
              f"{min(firsts):6.2f} {max(firsts):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
