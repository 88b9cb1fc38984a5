"""End to end in a real browser: headless Debian Chromium driven by Playwright clicks through
Create (consent refused, then a real clip with live progress; ``tiny-fast``, the tests' counterpart
of the app's CPU default) and Talk (real audio, then a
typed sentence spoken by the offline voice), reloads
the page (the avatars are still listed; another browser sees none; the owner token never
appears in a URL), and takes screenshots. Skipped when /usr/bin/chromium is absent (``.ci/run`` installs it).

Screenshots go to ``$INSTAG_SCREENSHOT_DIR`` (``docs/screenshots`` when regenerating the
committed ones) or a temp folder. Every ``<video>`` element is masked in them: the clips
come from ../shared/data, which must not be shipped, nor anything rendered from it.
"""
from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import pytest

from bench.browser import CHROMIUM, FLAGS, loopback_only
from tests.test_app import app_config, app_prior, assert_marked_mp4, serve
from tests.test_media import make_short_speech

if not CHROMIUM.is_file():
    pytest.skip("browser test needs Debian chromium at /usr/bin/chromium "
                "(apt-get install -y chromium; .ci/run does this)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (PyPI) not installed")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, clips_dir: Path):
    prior = app_prior(tmp_path_factory, clips_dir)
    cfg = app_config(tmp_path_factory.mktemp("appdata"), prior, {"INSTAG_PRESET": "tiny-fast"})
    with serve(cfg) as (demo, url):
        yield url, demo


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("INSTAG_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _body(request) -> str:
    """A request's body as text (uploads are binary: undecodable bytes replaced)."""
    try:
        raw = request.post_data_buffer
    except Exception:  # noqa: BLE001 - Playwright raises plain errors for odd bodies
        return ""
    return raw.decode("utf-8", "replace") if raw else ""


def test_create_then_talk_in_browser(app_url, shots: Path, clips_dir: Path,
                                     audio_dir: Path, short_dir: Path, tmp_path: Path) -> None:
    app_url, demo = app_url
    t_start = time.time()
    requests: list[tuple[str, str]] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", loopback_only)
            page.on("request", lambda r: requests.append((r.url, _body(r))))
            page.set_default_timeout(30_000)

            def wait_for(ok, timeout_s: float) -> None:
                """Wait until ``ok`` is visible; fail at once with the message of any error
                toast the app shows instead. One wait inside the browser for either (every
                call of Playwright's sync API walks the Python stack: polling from here
                cost tens of CPU seconds)."""
                toast = page.locator(".toast-body")
                try:
                    ok.or_(toast).first.wait_for(state="visible", timeout=timeout_s * 1000)
                except sync_api.TimeoutError:
                    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {ok}")
                if toast.count():
                    pytest.fail(f"the app showed an error: {toast.first.inner_text()}")

            def shot(name: str) -> None:
                # masked: every video (shared clips) and machine paths in the report
                paths = page.locator("#bench-table code").filter(has_text=re.compile(r"^/"))
                page.screenshot(path=str(shots / name), full_page=True,
                                mask=[page.locator("video"), paths], mask_color="#6b7280")

            page.goto(app_url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Create avatar").wait_for()
            assert "60 s" in page.locator("#limits").inner_text()  # limits shown up front

            def toast_text() -> str:
                toast = page.locator(".toast-body").first
                toast.wait_for()
                time.sleep(0.8)  # let the toast finish fading in before a screenshot
                return toast.inner_text()

            # a clip without audio: the specific error, no stack trace
            page.set_input_files("#create-video input[type=file]",
                                 str(short_dir / "no_audio_10s.mp4"))
            page.locator("#create-video video").wait_for(timeout=60_000)
            page.check("#create-consent input[type=checkbox]")
            page.click("#create-btn")
            text = toast_text()
            assert "has no audio track" in text and "Traceback" not in text
            shot("01_bad_upload_error.png")
            page.reload(wait_until="domcontentloaded")

            # upload a real clip; consent left unticked -> refused
            page.set_input_files("#create-video input[type=file]", str(clips_dir / "may_5s.mp4"))
            page.locator("#create-video video").wait_for(timeout=60_000)
            page.fill("#create-name textarea, #create-name input", "May (browser)")
            shot("02_create_form.png")
            page.click("#create-btn")
            assert "tick the consent box" in toast_text()
            shot("03_consent_refused.png")
            page.locator(".toast-close").first.click()
            page.locator(".toast-body").first.wait_for(state="detached")

            # tick consent -> progress -> ready with a preview
            page.check("#create-consent input[type=checkbox]")
            page.click("#create-btn")
            wait_for(page.get_by_text("Adapting: face"), 180)
            shot("04_create_progress.png")
            wait_for(page.locator("#create-status", has_text="is ready"), 300)
            page.locator("#create-preview video").wait_for()
            shot("05_create_done.png")

            # Talk: the new avatar is selected; upload real audio; render
            page.get_by_role("tab", name="Talk").click()
            assert "May (browser)" in page.locator("#talk-avatar input").input_value()
            # the first 3 s of a real recording (how long the first frame takes for long
            # audio is measured by python -m bench.first_frame)
            speech = make_short_speech(audio_dir, tmp_path / "speech_3s.wav", 3.0)
            page.set_input_files("#talk-audio input[type=file]", str(speech))
            # the player appears once the upload reached the server
            page.locator('#talk-audio [data-testid="waveform-controls"]').wait_for(timeout=60_000)
            t_click = time.perf_counter()
            page.click("#talk-btn")
            # the streamed player shows the first segment (a frame to show: readyState >= 2)
            # while the rest renders; the time from the click is printed
            page.wait_for_function(
                "() => { const v = document.querySelector('#talk-live video');"
                " return !!v && v.readyState >= 2; }", timeout=300_000, polling=50)
            first_frame = time.perf_counter() - t_click
            rendering = not page.locator("#talk-status", has_text="frames").count()
            print(f"talk: first frame on screen {first_frame:.2f} s after Render "
                  f"(3 s of audio; still rendering then: {rendering})")
            wait_for(page.locator("#talk-status", has_text="frames"), 300)
            # then the whole mp4 in the other player (and the download box)
            page.locator("#talk-video video").wait_for()
            src = page.locator("#talk-video video").get_attribute("src")
            shot("06_talk_done.png")
            # the whole mp4 to download: audio track, metadata statement, mark on every frame
            link = page.locator("#talk-file a").first
            href = link.get_attribute("href")
            assert href
            body = page.request.get(href if href.startswith("http") else app_url.rstrip("/") + href).body()
            mp4 = tmp_path / "talk.mp4"
            mp4.write_bytes(body)
            assert_marked_mp4(mp4)
            from core.data.media import probe as probe_mp4

            talk_info = probe_mp4(mp4)  # the visitor's own frame (512² may_5s), not the crop
            assert (talk_info.width, talk_info.height) == (512, 512)
            assert "512x512 (your full frame)" in page.locator("#talk-status").inner_text()

            # Talk from typed text: the default voice says it; the video has the speech as
            # its audio track and lasts as long as the speech shown beside it
            sentence = "Hello! I can say anything you type into this box."
            page.fill("#talk-text textarea", sentence)
            assert page.locator("#talk-voice input").input_value().startswith("English (US), Joe")
            page.click("#talk-text-btn")
            wait_for(page.locator("#talk-status", has_text="synthetic voice"), 300)
            page.wait_for_function("(old) => { const v = document.querySelector('#talk-video video');"
                                   " return v && v.src && v.src !== old; }", arg=src)
            shot("06b_talk_text_done.png")
            from core.data.media import probe, read_audio

            def fetch(url: str, name: str) -> Path:
                f = tmp_path / name
                f.write_bytes(page.request.get(
                    url if url.startswith("http") else app_url.rstrip("/") + url).body())
                return f

            mp4_text = fetch(page.locator("#talk-video video").get_attribute("src"), "text.mp4")
            # the speech player holds the file as a blob: read its bytes in the page
            # (the waveform's shadow DOM: only a locator reaches it)
            player = page.locator('#talk-speech audio[src^="blob:"]')
            player.wait_for(state="attached")
            b64 = player.evaluate("""async (a) => {
                const u = new Uint8Array(await (await fetch(a.src)).arrayBuffer());
                let s = ''; for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]);
                return btoa(s); }""")
            wav = tmp_path / "speech.wav"
            wav.write_bytes(base64.b64decode(b64))
            assert_marked_mp4(mp4_text)
            info = probe(mp4_text)
            speech_s = len(read_audio(wav)) / 16000
            assert 2.0 < speech_s < 6.0, speech_s  # ten words at a normal pace
            assert info.has_audio and info.num_video_frames == -(-round(speech_s * 16000) // 640)
            assert abs(info.audio_end_s - info.num_video_frames / 25) < 0.05
            assert "voice is synthetic" in info.metadata.get("comment", "")

            # Benchmark (quick) on the new avatar's clip, the methods that need no training
            page.get_by_role("tab", name="Benchmark").click()
            # keep the quick run to seconds: one baseline, the looped recording (the
            # methods and their scores are tested in test_benchmark.py and test_app.py)
            for method in ("instag", "scratch", "mean-mouth", "retrieval", "shifted"):
                page.locator("#bench-methods").get_by_label(method, exact=True).uncheck()
            page.click("#bench-btn")
            wait_for(page.locator("#bench-table table"), 300)
            page.locator("#bench-plots img").first.wait_for()
            page.locator("#bench-csv").scroll_into_view_if_needed()
            page.wait_for_function("() => [...document.querySelectorAll('#bench-plots img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            assert page.locator("#bench-csv a").count() >= 1
            shot("07_benchmark.png")

            page.get_by_role("tab", name="About / responsible use").click()
            page.get_by_text("How your data is handled").wait_for()
            shot("08_about.png")

            # reload: the owner token comes back from localStorage, the avatar is listed
            page.reload(wait_until="domcontentloaded")
            page.get_by_role("tab", name="Talk").click()
            table = page.locator("#avatar-table")
            wait_for(table.get_by_text("May (browser)"), 60)
            assert "May (browser)" in page.locator("#talk-avatar input").input_value()
            table.scroll_into_view_if_needed()
            shot("09_after_reload_avatars_kept.png")

            # another browser (a fresh profile) sees none of them
            other = browser.new_context(viewport={"width": 1280, "height": 900})
            p2 = other.new_page()
            p2.route("**/*", loopback_only)
            p2.goto(app_url, wait_until="domcontentloaded")
            p2.get_by_role("tab", name="Talk").click()
            p2.locator("#avatar-table").wait_for()
            p2.wait_for_timeout(2000)  # the page-load listing has run
            assert "May (browser)" not in p2.locator("#avatar-table").inner_text()
            other.close()
        finally:
            browser.close()
    # the token travelled in request bodies only, never in a URL
    owners = demo.instag.owners
    tokens = {t for _, body in requests for t in re.findall(r"[A-Za-z0-9_-]{43}", body)
              if owners.check(t)}
    assert tokens, "no owner token seen in any request body"
    assert not any(t in url for url, _ in requests for t in tokens)
    print(f"browser test: {time.time() - t_start:.1f} s; screenshots in {shots}")
