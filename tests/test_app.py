"""The Gradio app through ``gradio_client``, launched in-process on 127.0.0.1 (tiny preset,
data root in a temp folder): consent, a real clip to an avatar with progress, Talk with real
audio, session privacy, and the specific errors for bad uploads."""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from core.errors import InputError
from demo.config import AppConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(cfg: AppConfig) -> Iterator[tuple[object, str]]:
    """Build the app and launch it in this process on a free loopback port."""
    from demo.ui import build_app, launch

    demo = build_app(cfg, start_sweeper=False)
    port = free_port()
    launch(demo, cfg, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
           quiet=True)
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


_PRIOR: dict[str, str] = {}


def app_prior(tmp_factory, clips_dir: Path) -> str:
    """The shipped prior when present; otherwise a tiny prior built from two real clips
    (about 15 s, once per test session), so the app is always tested with a prior."""
    if "path" not in _PRIOR:
        _PRIOR["path"] = _make_prior(tmp_factory, clips_dir)
    return _PRIOR["path"]


def _make_prior(tmp_factory, clips_dir: Path) -> str:
    import shutil

    from demo.weights import resolve_prior

    root = tmp_factory.mktemp("prior")
    try:
        shipped = resolve_prior(AppConfig(data_root=root, preset="tiny"))
        # a private copy: the shared weights/ folder may change while the tests run
        return str(shutil.copy(shipped, root / "prior.safetensors"))
    except (InputError, OSError):
        pass
    from core.data.preprocess import PreprocessConfig, preprocess
    from core.train.pretrain import PRESETS, pretrain

    dirs = [preprocess(clips_dir / name, root / Path(name).stem,
                       PreprocessConfig(res=128, max_frames=75))
            for name in ("man_suit_5s.mp4", "woman_desk_5s.mp4")]
    return str(pretrain(dirs, root / "tiny_prior.safetensors", PRESETS["tiny"]))


def app_config(data_root: Path, prior: str, monkeypatch_env: dict[str, str]) -> AppConfig:
    """The app's config from the environment, as the tests run it (tiny preset)."""
    old = {k: os.environ.get(k) for k in monkeypatch_env}
    os.environ.update(monkeypatch_env)
    try:
        return AppConfig.from_env(data_root=data_root, prior=prior)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def prior(tmp_path_factory, clips_dir: Path) -> str:
    return app_prior(tmp_path_factory, clips_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory, prior: str):
    root = tmp_path_factory.mktemp("appdata")
    cfg = app_config(root, prior, {"INSTAG_PRESET": "tiny"})
    assert cfg.preset == "tiny"
    with serve(cfg) as (demo, url):
        yield demo, url, root


def client(url: str) -> Client:
    return Client(url, verbose=False, download_files=False)


def stored_avatars(root: Path) -> list[Path]:
    return [p for p in (root / "avatars").iterdir()]


def audit(root: Path) -> list[dict]:
    f = root / "audit.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


def video_arg(path: Path) -> dict:
    return {"video": handle_file(str(path))}


def local(file_value) -> Path:
    """The server-side path of a file output (same machine)."""
    if isinstance(file_value, dict):
        file_value = file_value.get("video") or file_value.get("path")
    if isinstance(file_value, dict):
        file_value = file_value["path"]
    return Path(file_value)


def assert_marked_mp4(path: Path) -> None:
    """An mp4 with an audio track, the statement in its metadata, and on every frame the
    black label box with white text in the bottom-left corner."""
    import av

    with av.open(str(path)) as c:
        assert c.streams.audio, "no audio track"
        meta = " ".join(str(v) for v in c.metadata.values())
        assert "AI-generated" in meta
        n = 0
        for frame in c.decode(video=0):
            img = frame.to_ndarray(format="rgb24").astype(int)
            h, w = img.shape[:2]
            corner = img[int(h * 0.75):, : int(w * 0.7)].mean(axis=2)
            assert (corner < 40).mean() > 0.05, f"frame {n}: no dark label box"
            assert (corner > 200).sum() >= 10, f"frame {n}: no white label text"
            n += 1
        assert n > 0


def run_with_progress(cl: Client, *args, api_name: str, timeout: float = 400):
    """Submit a job and collect the progress descriptions seen while it runs."""
    job = cl.submit(*args, api_name=api_name)
    seen: list[tuple[float, str]] = []
    t0 = time.time()
    while not job.done():
        st = job.status()
        for p in st.progress_data or []:
            if p.desc and (not seen or seen[-1][1] != p.desc):
                seen.append((p.progress, p.desc))
        assert time.time() - t0 < timeout, "job timed out"
        time.sleep(0.1)
    return job.result(), seen


def test_consent_unticked_refused_nothing_stored(server, clips_dir: Path) -> None:
    demo, url, root = server
    cl = client(url)
    with pytest.raises(AppError, match="tick the consent box"):
        cl.predict(video_arg(clips_dir / "may_5s.mp4"), False, "may", api_name="/create")
    assert stored_avatars(root) == []
    assert audit(root) == []
    _, _, table = cl.predict(api_name="/list_avatars")
    assert table["data"] == []


@pytest.fixture(scope="module")
def created(server, clips_dir: Path, audio_dir: Path):
    """One avatar created from a real clip through the API, with the progress seen; while
    it runs, a second session's job waits in the queue (one long job at a time)."""
    demo, url, root = server
    cl, second = client(url), client(url)
    t0 = time.time()
    job = cl.submit(video_arg(clips_dir / "may_5s.mp4"), True, "May", api_name="/create")
    while not (job.status().progress_data or job.done()):
        time.sleep(0.05)
    waiting = second.submit("0" * 32, handle_file(str(audio_dir / "en_kim.mp3")),
                            api_name="/talk")
    queued = []
    seen: list[tuple[float, str]] = []
    while not job.done():
        for p in job.status().progress_data or []:
            if p.desc and (not seen or seen[-1][1] != p.desc):
                seen.append((p.progress, p.desc))
        st = waiting.status()
        if st.code.name == "IN_QUEUE":
            queued.append((st.rank, st.queue_size))
        assert time.time() - t0 < 400, "create timed out"
        time.sleep(0.1)
    result = job.result()
    with pytest.raises(AppError, match="does not exist"):
        waiting.result()
    return cl, result, seen, time.time() - t0, queued


def test_create_avatar_with_progress(server, created) -> None:
    demo, url, root = server
    cl, (status, preview, pick, _, table), seen, seconds, queued = created
    assert "is ready" in status
    texts = [d for _, d in seen]
    assert len(texts) >= 5, texts
    assert any(t.startswith("Preprocessing") for t in texts)
    assert any(t.startswith("Adapting: face") and "left" in t for t in texts)
    assert any("mouth" in t for t in texts) and any("Preview" in t for t in texts)
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and 0 <= fracs[0] and fracs[-1] <= 1
    aid = pick["value"]
    assert len(aid) == 32 and [c[1] for c in pick["choices"]] == [aid]
    assert [r[4] for r in table["data"]] == [aid[:8]]
    assert_marked_mp4(local(preview))
    # on disk: avatar, consent record, audit entry
    folder = root / "avatars" / aid
    consent = json.loads((folder / "consent.json").read_text())
    from demo.store import STATEMENT_VERSION, sha256_file

    assert consent["statement_version"] == STATEMENT_VERSION
    assert consent["clip_sha256"] == sha256_file(folder / "clip.mp4")
    assert consent["time"].endswith("+00:00")
    assert (folder / "avatar" / "model.safetensors").is_file()
    assert not (folder / "work").exists() and not (folder / ".incomplete").exists()
    events = audit(root)
    assert [e["event"] for e in events] == ["created"] and events[0]["avatar"] == aid
    print(f"create: {seconds:.1f} s, {len(texts)} progress updates")


def test_second_user_sees_queue_place(created) -> None:
    *_, queued = created
    assert queued, "the second session's job never showed as queued"
    rank, size = queued[0]
    assert rank == 0 and size >= 1  # first in line (rank is 0-based) behind the running job


def test_talk_real_audio(server, created, audio_dir: Path) -> None:
    cl, (_, _, pick, _, _), *_ = created
    t0 = time.time()
    (video, file, status), seen = run_with_progress(
        cl, pick["value"], handle_file(str(audio_dir / "en_kim.mp3")), api_name="/talk")
    assert "frames" in status and any("Rendering" in d for _, d in seen)
    path = local(video)
    assert path.suffix == ".mp4" and local(file).read_bytes() == path.read_bytes()
    assert_marked_mp4(path)
    import av

    with av.open(str(path)) as c:
        dur = float(c.streams.audio[0].duration * c.streams.audio[0].time_base)
    assert 7.0 < dur < 7.9  # en_kim.mp3 is 7.4 s
    print(f"talk: {time.time() - t0:.1f} s")


def test_sessions_are_private(server, created, audio_dir: Path) -> None:
    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    aid = pick["value"]
    other = client(url)
    p1, p2, table = other.predict(api_name="/list_avatars")
    assert p1["choices"] == [] and table["data"] == []
    audio = handle_file(str(audio_dir / "en_kim.mp3"))
    with pytest.raises(AppError, match="does not exist in this browser session"):
        other.predict(aid, audio, api_name="/talk")
    with pytest.raises(AppError, match="does not exist in this browser session"):
        other.predict(aid, api_name="/delete_avatar")
    with pytest.raises(AppError, match="does not exist in this browser session"):
        other.predict("created avatar", aid, None, False, [3.0], ["loop"], api_name="/benchmark")
    with pytest.raises(AppError, match="does not exist"):  # not a path, not an id
        other.predict("../" + aid, api_name="/delete_avatar")
    assert (root / "avatars" / aid / "avatar").is_dir()
    assert [c[1] for c in owner.predict(api_name="/list_avatars")[0]["choices"]] == [aid]


def _synthetic_clip(path: Path, seconds: float, size: int = 64) -> Path:
    """A video with a tone and no face (made here; nothing from ../shared/data)."""
    from core.data.media import write_video

    n = int(seconds * 25)
    yy, xx = np.mgrid[0:size, 0:size]
    frames = (np.stack([(xx * 4 + t) % 256, (yy * 4) % 256, np.full_like(xx, 128)], -1)
              .astype(np.uint8) for t in range(n))
    t = np.arange(n * 640) / 16000
    return write_video(path, frames, fps=25.0, audio=0.2 * np.sin(2 * np.pi * 220 * t),
                       sample_rate=16000, preset="ultrafast")


def test_bad_uploads_give_specific_errors(server, short_dir: Path, tmp_path: Path) -> None:
    demo, url, root = server
    cl = client(url)
    before = stored_avatars(root)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    cases = {
        "no audio track": short_dir / "no_audio_10s.mp4",
        "only 3.0 s long": short_dir / "grid_3s.mpg",
        "the limit is 60 s": _synthetic_clip(tmp_path / "long_61s.mp4", 61.0),
        "No face was found": _synthetic_clip(tmp_path / "no_face_5s.mp4", 5.0),
        "notes.mp4": text,
    }
    for expected, path in cases.items():
        with pytest.raises(AppError) as e:
            cl.predict(video_arg(path), True, "", api_name="/create")
        msg = str(e.value)
        assert expected in msg, (path.name, msg)
        assert "Traceback" not in msg and "File \"" not in msg
    assert "Use a normal video file" in msg  # the fix is shown too
    assert stored_avatars(root) == before
    assert all(e["event"] in ("created", "create_failed") for e in audit(root))


def test_benchmark_on_created_avatar(server, created) -> None:
    owner, (_, _, pick, _, _), *_ = created
    try:
        import eval.benchmark  # noqa: F401
    except ImportError:
        with pytest.raises(AppError, match="benchmark harness"):
            owner.predict("created avatar", pick["value"], None, False, [3.0], ["loop"],
                          api_name="/benchmark")
        return
    with pytest.raises(AppError, match="at least 7 s"):  # 5 s clip: 5 s train + 2 s test
        owner.predict("created avatar", pick["value"], None, False, [5.0], ["loop"],
                      api_name="/benchmark")
    table, plots, csv_file = owner.predict("created avatar", pick["value"], None, False, [3.0],
                                           ["loop", "shifted"], api_name="/benchmark")
    assert "| method |" in table and "loop" in table
    assert plots and all(local(p["image"]).suffix == ".png" for p in plots)
    rows = local(csv_file).read_text().splitlines()
    assert len(rows) == 3 and "may_5s" in rows[1]


def test_benchmark_upload_needs_consent(server, created, clips_dir: Path) -> None:
    demo, url, root = server
    owner = created[0]
    pytest.importorskip("eval.benchmark")
    clip = video_arg(clips_dir / "woman_desk_5s.mp4")
    with pytest.raises(AppError, match="tick the consent box"):
        owner.predict("uploaded clip", None, clip, False, [3.0], ["loop"], api_name="/benchmark")
    table, _, _ = owner.predict("uploaded clip", None, clip, True, [3.0], ["loop"],
                                api_name="/benchmark")
    assert "woman_desk_5s" in table
    records = [json.loads(p.read_text()) for p in (root / "jobs").glob("*/consent.json")]
    assert len(records) == 1 and records[0]["clip_name"] == "woman_desk_5s.mp4"
    assert any(e["event"] == "benchmark_consent" and e["job"] == records[0]["job"]
               for e in audit(root))


def test_owner_deletes_avatar(server, created) -> None:
    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    aid = pick["value"]
    status, p1, _, table = owner.predict(aid, api_name="/delete_avatar")
    assert "Deleted" in status and p1["choices"] == [] and table["data"] == []
    assert not (root / "avatars" / aid).exists()
    jobs = [json.loads(p.read_text()) for p in (root / "jobs").glob("*/job.json")]
    assert jobs and all(j["avatar"] != aid for j in jobs)  # its benchmark outputs went too
    events = [e["event"] for e in audit(root) if e.get("avatar") == aid]
    assert events == ["created", "deleted"]


def test_store_expiry_and_ids(tmp_path: Path, clips_dir: Path) -> None:
    from demo.store import AvatarStore, NotFound

    store = AvatarStore(tmp_path, expiry_s=60)
    tok, other = store.new_token(), store.new_token()
    rec = store.begin(tok, clips_dir / "may_5s.mp4", "x")
    assert store.list(tok) == []  # incomplete avatars are not listed
    store.finish(rec)
    assert [r.id for r in store.list(tok)] == [rec.id] and store.list(other) == []
    assert tok not in (tmp_path / "audit.jsonl").read_text()  # only hashes on disk
    with pytest.raises(NotFound):
        store.get(other, rec.id)
    assert store.sweep(now=time.time() + 61) == 1
    assert store.list(tok) == [] and not store.folder(rec).exists()
    assert [e["event"] for e in audit(tmp_path)] == ["created", "expired"]


def test_prior_resolution_offline(tmp_path: Path) -> None:
    from demo.gpu import gpu
    from demo.weights import resolve_prior

    assert resolve_prior(AppConfig(data_root=tmp_path, preset="tiny", prior="none")) is None
    cfg = AppConfig(data_root=tmp_path, preset="tiny", prior=str(tmp_path / "absent.safetensors"),
                    prior_repo="instag-test/no-such-repo", prior_revision="0" * 40)
    with pytest.raises(InputError) as e:  # local cache only: no request leaves the machine
        resolve_prior(cfg)
    assert e.value.code == "wrong_weights" and "INSTAG_ALLOW_DOWNLOAD" in e.value.fix
    with pytest.raises(ValueError, match="unknown preset"):
        AppConfig(data_root=tmp_path, preset="huge").validate()
    assert gpu(60)(len) is len  # no `spaces` package here: a no-op
