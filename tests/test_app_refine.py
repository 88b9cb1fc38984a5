"""Refine in the app, through ``gradio_client`` on a server launched in-process (the tests'
short preset ``tiny-fast``, refined to ``tiny``): the avatar keeps rendering its short
version while it refines, the refined one replaces it only when complete, and a second
refine, a Delete, or a failure leave nothing half-written."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests.test_app import Visitor, app_config, app_prior, audit, serve, video_arg


@pytest.fixture(scope="module")
def server(tmp_path_factory, clips_dir: Path):
    prior = app_prior(tmp_path_factory, clips_dir)
    root = tmp_path_factory.mktemp("appdata")
    cfg = app_config(root, prior, {"INSTAG_PRESET": "tiny-fast"})
    with serve(cfg) as (demo, url):
        yield demo, url, root


@pytest.fixture(scope="module")
def created(server, clips_dir: Path, tmp_path_factory) -> tuple[Visitor, str, Path]:
    """One avatar made through the API with the short preset, and a copy of its folder as
    created (before any test refines it)."""
    _, url, root = server
    owner = Visitor(url)
    _, status, _, pick, _, _ = owner.cl.predict(video_arg(clips_dir / "may_5s.mp4"), True,
                                                "May", owner.token, api_name="/create")
    assert "Refine" in status and "`tiny-fast`" in status
    aid = pick["value"]
    copy = tmp_path_factory.mktemp("short") / aid
    shutil.copytree(root / "avatars" / aid, copy)
    return owner, aid, copy


def twin(demo, owner: Visitor, short: Path) -> str:
    """Another complete short-schedule avatar of ``owner`` with a copy of the created one's
    files (no second adaptation)."""
    store = demo.instag.store
    rec = store.begin(owner.token, short / "clip.mp4", "twin", preset="tiny-fast")
    for sub in ("avatar", "clip"):
        shutil.copytree(short / sub, store.folder(rec) / sub)
    store.finish(rec)
    return rec.id


def label(owner: Visitor, aid: str) -> str:
    return next(c[0] for c in owner.list()[0]["choices"] if c[1] == aid)


def wait_until(cond, timeout: float = 300.0) -> None:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.2)


@pytest.fixture
def gate(monkeypatch):
    """Holds every refine at its face step 20 until the test sets the event (so the test
    can act while a refine is known to be running)."""
    import demo.ui as ui

    event, reached = threading.Event(), threading.Event()
    real = ui.refine_work

    def held(processed, avatar, prior, preset, work, progress):
        def report(text: str, frac: float) -> None:
            progress(text, frac)
            if text.startswith("face 20/"):
                reached.set()
                assert event.wait(300)
        return real(processed, avatar, prior, preset, work, report)

    monkeypatch.setattr(ui, "refine_work", held)
    return event, reached


def test_refine_runs_in_the_background_while_the_avatar_talks(server, created, gate,
                                                              audio_dir: Path,
                                                              tmp_path: Path) -> None:
    from core.model import checkpoint
    from tests.test_media import make_short_speech

    speech = make_short_speech(audio_dir, tmp_path / "speech_2s5.wav")  # real speech, 2.5 s

    demo, url, root = server
    owner, aid, _ = created
    release, reached = gate
    model = root / "avatars" / aid / "avatar" / "model.safetensors"
    short = model.read_bytes()
    assert checkpoint.load(model)[1]["steps"] == {"face": 16, "mouth": 8, "fuse": 4}
    status, pick, *_ = owner.predict(aid, api_name="/refine_avatar")
    assert status.startswith("Refining “May” to the `tiny` schedule in the background")
    assert reached.wait(300)
    assert "refining" in label(owner, aid)
    with pytest.raises(AppError, match="already being refined"):
        owner.predict(aid, api_name="/refine_avatar")
    # the avatar renders (its short version) while the refine runs
    _, _, talk_status = owner.predict(aid, handle_file(str(speech)),
                                      api_name="/talk")
    assert "frames" in talk_status
    assert model.read_bytes() == short and (root / "avatars" / aid / "refine").is_dir()
    release.set()
    wait_until(lambda: "refining" not in label(owner, aid))
    meta = checkpoint.load(model)[1]
    assert meta["steps"] == {"face": 40, "mouth": 20, "fuse": 10}
    assert meta["refined_from"]["steps"] == {"face": 16, "mouth": 8, "fuse": 4}
    assert label(owner, aid).startswith("May (tiny;")
    folder = root / "avatars" / aid
    assert not (folder / "refine").exists() and not (folder / ".avatar.old").exists()
    assert [e["event"] for e in audit(root) if e.get("avatar") == aid] == [
        "consent", "created", "refined"]
    # refined avatars talk, and have nothing left to refine
    _, _, talk_status = owner.predict(aid, handle_file(str(speech)),
                                      api_name="/talk")
    assert "frames" in talk_status
    with pytest.raises(AppError, match="nothing left to refine"):
        owner.predict(aid, api_name="/refine_avatar")


def test_delete_during_refine_stops_it(server, created, gate) -> None:
    demo, url, root = server
    owner, _, short = created
    release, reached = gate
    other = twin(demo, owner, short)
    owner.predict(other, api_name="/refine_avatar")
    assert reached.wait(300)
    release.set()  # Delete's stop reaches the refine at its next step
    status, *_ = owner.predict(other, api_name="/delete_avatar")
    assert "Deleted" in status and "1 running job(s) on it were stopped first" in status
    time.sleep(1.0)
    assert not (root / "avatars" / other).exists()
    assert [e["event"] for e in audit(root) if e.get("avatar") == other] == [
        "consent", "created", "deleted"]
    assert not demo.instag.locks.is_refining(other)


def test_failed_refine_keeps_the_avatar(server, created, monkeypatch) -> None:
    import demo.ui as ui

    demo, url, root = server
    owner, _, short = created
    other = twin(demo, owner, short)
    model = root / "avatars" / other / "avatar" / "model.safetensors"
    before = model.read_bytes()
    real = ui.refine_work

    def failing(processed, avatar, prior, preset, work, progress):
        def report(text: str, frac: float) -> None:
            progress(text, frac)
            if text.startswith("mouth 10/"):
                raise RuntimeError("disk full")
        return real(processed, avatar, prior, preset, work, report)

    monkeypatch.setattr(ui, "refine_work", failing)
    owner.predict(other, api_name="/refine_avatar")
    wait_until(lambda: "refine failed" in label(owner, other))
    assert model.read_bytes() == before
    assert not (root / "avatars" / other / "refine").exists()
    assert not demo.instag.locks.is_refining(other)
    # an avatar made with the full schedule of its kind has nothing to refine
    store = demo.instag.store
    rec = store.begin(owner.token, root / "avatars" / other / "clip.mp4", "full", preset="tiny")
    shutil.copytree(root / "avatars" / other / "avatar", store.folder(rec) / "avatar")
    store.finish(rec)
    with pytest.raises(AppError, match="nothing left to refine"):
        owner.predict(rec.id, api_name="/refine_avatar")
    for a in (other, rec.id):
        owner.predict(a, api_name="/delete_avatar")


def test_cpu_default_is_the_fast_preset_which_refines_to_cpu() -> None:
    import torch

    from demo.config import default_preset, refine_target

    if not torch.cuda.is_available():
        assert default_preset() == "fast"
    assert refine_target("fast") == "cpu" and refine_target("cpu") is None
