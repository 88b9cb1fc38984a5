"""The Gradio app through ``gradio_client``, launched in-process on 127.0.0.1 (tiny preset,
data root in a temp folder): consent, a real clip to an avatar with progress, Talk with real
audio, session privacy, and the specific errors for bad uploads."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# a private Gradio cache: the app's sweep and the URL checks see only this run's files
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="instag-test-gradio-"))

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from core.errors import InputError
from demo.config import AppConfig
from demo.jobs import waiting_jobs


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
                       PreprocessConfig(res=128, max_frames=75, full_frame=False))
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


#: The test servers listen on plain http on loopback: no client loads the system's CA bundle
#: (httpx builds a verifying SSL context for every request, about 25 ms of CPU each; the
#: suite's clients made several hundred).
LOOPBACK = {"ssl_verify": False}


def client(url: str) -> Client:
    return Client(url, verbose=False, download_files=False, **LOOPBACK)


class Visitor:
    """One API user: a gradio_client plus the owner token the server issued to it (what a
    browser keeps in localStorage)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.cl = client(url)
        self.token = token or self.cl.predict(None, api_name="/list_avatars")[0]

    def list(self):
        """(talk picker, benchmark picker, table)."""
        tok, *rest = self.cl.predict(self.token, api_name="/list_avatars")
        assert tok == self.token  # a valid token is kept, never replaced
        return rest

    def ids(self) -> list[str]:
        return [c[1] for c in self.list()[0]["choices"]]

    def predict(self, *args, api_name: str):
        tok, *rest = self.cl.predict(*args, self.token, api_name=api_name)
        assert tok == self.token
        return rest

    def submit(self, *args, api_name: str):
        return self.cl.submit(*args, self.token, api_name=api_name)


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


def fetch_status(url: str, path: str | Path) -> int:
    """HTTP status of ``/gradio_api/file=<path>`` for a client with no session at all."""
    import httpx

    return httpx.get(f"{url}gradio_api/file={path}", timeout=30, verify=False).status_code


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


def run_with_progress(job, timeout: float = 400):
    """Wait for a submitted job, collecting the progress descriptions seen while it runs."""
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


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM, MB); the test server runs in it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def test_consent_unticked_refused_nothing_stored(server, clips_dir: Path) -> None:
    demo, url, root = server
    v = Visitor(url)
    for not_true in (False, "false", "False", "no", 0, None):  # only a real True counts
        with pytest.raises(AppError, match="tick the consent box"):
            v.predict(video_arg(clips_dir / "may_5s.mp4"), not_true, "may", api_name="/create")
    assert stored_avatars(root) == []
    assert audit(root) == []
    _, _, table = v.list()
    assert table["data"] == []


def test_owner_tokens(server) -> None:
    """Server-issued tokens: >= 128 random bits plus a tag; a made-up or altered token is
    replaced by a fresh one (which owns nothing)."""
    demo, url, root = server
    owners = demo.instag.owners
    a, b = Visitor(url), Visitor(url)
    assert a.token != b.token and len(a.token) == 43
    assert owners.check(a.token) == a.token
    forged = a.token[:-2] + ("AA" if not a.token.endswith("AA") else "BB")
    for bad in (forged, "0" * 43, "x", "", 12, None):
        assert owners.check(bad) is None
        assert a.cl.predict(bad, api_name="/list_avatars")[0] not in (bad, a.token)
    assert "owner.key" in {p.name for p in root.iterdir()}
    assert (root / "owner.key").stat().st_mode & 0o077 == 0
    from demo.owners import OwnerTokens

    assert OwnerTokens(root).check(a.token) == a.token  # a restarted server still knows it


@pytest.fixture(scope="module")
def created(server, clips_dir: Path, audio_dir: Path, tmp_path_factory):
    """One avatar created from a real clip through the API, with the progress seen. While
    it runs, a second visitor's talk waits in the queue (one long job at a time) and a third
    visitor submits, with consent, a face-less clip that fails once it gets its turn."""
    from tests.test_media import make_tone_clip

    demo, url, root = server
    owner, second, third = Visitor(url), Visitor(url), Visitor(url)
    t0 = time.time()
    job = owner.submit(video_arg(clips_dir / "may_5s.mp4"), True, "May", api_name="/create")
    while not (job.status().progress_data or job.done()):
        time.sleep(0.05)
    waiting = second.submit("0" * 32, handle_file(str(audio_dir / "en_kim.mp3")),
                            api_name="/talk")
    no_face = make_tone_clip(tmp_path_factory.mktemp("noface") / "no_face_5s.mp4")
    t_third = time.time()
    late = third.submit(video_arg(no_face), True, "", api_name="/create")
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
    t_done = time.time()
    result = job.result()
    with pytest.raises(AppError, match="does not exist"):
        waiting.result()
    with pytest.raises(AppError, match="No face was found"):
        late.result()
    return owner, result[1:], seen, t_done - t0, queued, (third, t_third, t_done)


def test_create_avatar_with_progress(server, created) -> None:
    demo, url, root = server
    owner, (status, preview, pick, _, table), seen, seconds, queued, _ = created
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
    # on disk: avatar, consent record, audit entries
    folder = root / "avatars" / aid
    consent = json.loads((folder / "consent.json").read_text())
    from demo.store import STATEMENT_VERSION, sha256_file

    assert consent["statement_version"] == STATEMENT_VERSION
    assert consent["clip_sha256"] == sha256_file(folder / "clip.mp4")
    assert consent["time"].endswith("+00:00")
    assert (folder / "avatar" / "model.safetensors").is_file()
    assert not (folder / "work").exists() and not (folder / ".incomplete").exists()
    events = [e for e in audit(root) if e.get("avatar") == aid]
    assert [e["event"] for e in events] == ["consent", "created"]
    print(f"create: {seconds:.1f} s, {len(texts)} progress updates")


def test_consent_time_is_when_the_request_arrived(server, created) -> None:
    """The third visitor's job started only after the first create finished; its consent
    entry carries the time the server received the request, not the job's start."""
    from datetime import datetime

    demo, url, root = server
    *_, (third, t_submit, t_first_done) = created
    owner_key = demo.instag.store.owner_key(third.token)
    entries = [e for e in audit(root) if e.get("owner") == owner_key]
    assert [e["event"] for e in entries] == ["consent", "create_failed"]
    t = datetime.fromisoformat(entries[0]["consent_time"]).timestamp()
    # received just after submitting (the upload goes first), long before the job ran
    assert t_submit - 1.0 <= t <= t_submit + 10.0 and t < t_first_done - 10.0
    assert set(entries[0]) == {"avatar", "clip_bytes", "clip_sha256", "consent_time", "event",
                               "owner", "statement_version", "time"}  # no name, no file
    assert not (root / "avatars" / entries[0]["avatar"]).exists()  # nothing else kept


def test_second_user_sees_queue_place(created) -> None:
    queued = created[4]
    assert queued, "the second visitor's job never showed as queued"
    rank, size = queued[0]
    assert rank == 0 and size >= 1  # first in line (rank is 0-based) behind the running job


def test_talk_real_audio(server, created, audio_dir: Path) -> None:
    owner, (_, _, pick, _, _), *_ = created
    t0 = time.time()
    (_, video, file, status), seen = run_with_progress(
        owner.submit(pick["value"], handle_file(str(audio_dir / "en_kim.mp3")), api_name="/talk"))
    assert "frames" in status and any("Rendering" in d for _, d in seen)
    path = local(video)
    assert path.suffix == ".mp4" and local(file).read_bytes() == path.read_bytes()
    assert_marked_mp4(path)
    import av

    with av.open(str(path)) as c:
        dur = float(c.streams.audio[0].duration * c.streams.audio[0].time_base)
    assert 7.0 < dur < 7.9  # en_kim.mp3 is 7.4 s
    print(f"talk: {time.time() - t0:.1f} s")


def test_talk_typed_text(server, created) -> None:
    """/talk_text: the offline voice speaks the text, the avatar says it; the video lasts as
    long as the speech, the synthesized speech comes back beside it, and the mark and the
    metadata say the voice is synthetic."""
    import av

    from core.data.media import read_audio

    owner, (_, _, pick, _, _), *_ = created
    (_, video, file, said, status), seen = run_with_progress(owner.submit(
        pick["value"], "Good morning, this is my avatar speaking.", "joe", 1.0,
        api_name="/talk_text"))
    assert "synthetic voice joe" in status and any("Rendering" in d for _, d in seen)
    path = local(video)
    assert_marked_mp4(path)
    speech_s = len(read_audio(local(said))) / 16000
    assert 1.5 < speech_s < 5.0, speech_s
    with av.open(str(path)) as c:
        meta = " ".join(str(v) for v in c.metadata.values())
        frames = c.streams.video[0].frames
        dur = float(c.streams.audio[0].duration * c.streams.audio[0].time_base)
    assert "voice is synthetic" in meta and "joe" in meta
    assert frames == -(-round(speech_s * 16000) // 640) and abs(dur - frames / 25) < 0.05
    # a French voice from the picker's list
    (_, video_fr, *_), _ = run_with_progress(owner.submit(
        pick["value"], "Bonjour à tous.", "espeak-fr", 1.3, api_name="/talk_text"))
    assert_marked_mp4(local(video_fr))


def test_talk_text_bad_input_touches_nothing(server, created) -> None:
    """Empty, too long, unsayable text, an unknown voice, a bad rate: the specific message,
    no render folder, no served file, the avatar's files unchanged."""
    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    aid = pick["value"]
    folder = root / "avatars" / aid

    def snapshot() -> dict[str, int]:
        return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}

    before, cache = snapshot(), set(demo.instag.cache_root.iterdir())
    for text, voice, rate, words in (
            ("   ", "joe", 1.0, "no text to speak"),
            ("x" * 601, "joe", 1.0, "601 characters"),
            ("Hi \U0001F600 there", "joe", 1.0, "cannot say"),
            ("Привет", "joe", 1.0, "cyrillic letters")):
        with pytest.raises(AppError, match=words):
            owner.predict(aid, text, voice, rate, api_name="/talk_text")
    # a voice outside the picker's list or a rate outside the slider: Gradio refuses the
    # request itself, naming the value
    import httpx

    for voice, rate, words in (("hal-9000", 1.0, "hal-9000 is not in the list of choices"),
                               ("joe", 5.0, "greater than maximum value 2.0")):
        with pytest.raises(httpx.HTTPStatusError) as e:
            owner.predict(aid, "Hello", voice, rate, api_name="/talk_text")
        assert e.value.response.status_code == 400 and words in e.value.response.text
    assert snapshot() == before and set(demo.instag.cache_root.iterdir()) == cache


def test_sessions_are_private(server, created, audio_dir: Path) -> None:
    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    aid = pick["value"]
    other = Visitor(url)
    p1, p2, table = other.list()
    assert p1["choices"] == [] and table["data"] == []
    audio = handle_file(str(audio_dir / "en_kim.mp3"))
    with pytest.raises(AppError, match="does not exist in this browser"):
        other.predict(aid, audio, api_name="/talk")
    with pytest.raises(AppError, match="does not exist in this browser"):
        other.predict(aid, api_name="/delete_avatar")
    with pytest.raises(AppError, match="does not exist in this browser"):
        other.predict("created avatar", aid, None, False, [3.0], ["loop"], api_name="/benchmark")
    with pytest.raises(AppError, match="does not exist"):  # not a path, not an id
        other.predict("../" + aid, api_name="/delete_avatar")
    assert (root / "avatars" / aid / "avatar").is_dir()
    assert owner.ids() == [aid]


def test_session_hash_grants_nothing_token_survives_reload(server, created) -> None:
    """A client presenting the owner's Gradio session hash but not the token sees nothing;
    a new client (a reloaded page, another process) with the token sees the avatars."""
    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    thief = client(url)
    thief.session_hash = owner.cl.session_hash
    tok, p1, _, table = thief.predict(None, api_name="/list_avatars")
    assert tok != owner.token and p1["choices"] == [] and table["data"] == []
    with pytest.raises(AppError, match="does not exist in this browser"):
        thief.predict(pick["value"], tok, api_name="/delete_avatar")
    reloaded = Visitor(url, token=owner.token)  # what the page does after a reload
    assert reloaded.cl.session_hash != owner.cl.session_hash
    assert reloaded.ids() == [pick["value"]]


def test_bad_uploads_give_specific_errors(server, short_dir: Path, tmp_path: Path) -> None:
    from tests.test_media import (
        make_huge_frames,
        make_timestamp_bomb,
        make_tone_clip,
        make_truncated_mp4,
        make_zip_as_mp4,
    )

    demo, url, root = server
    v = Visitor(url)
    before = stored_avatars(root)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    cases = {
        "no audio track": short_dir / "no_audio_10s.mp4",
        "only 3.0 s long": short_dir / "grid_3s.mpg",
        "the limit is 60 s": make_tone_clip(tmp_path / "long_61s.mp4", 61.0),
        "No face was found": make_tone_clip(tmp_path / "no_face_5s.mp4", 5.0),
        "notes.mp4 is a text file": text,
        "audio starts 36000 s (10 h 0 min) after its video": make_timestamp_bomb(
            tmp_path / "bomb.mkv"),
        "frames of 10000x10000 pixels": make_huge_frames(tmp_path / "huge.mov"),
        "cut short": make_truncated_mp4(tmp_path / "cut.mp4", make_tone_clip(
            tmp_path / "whole_8s.mp4", 8.0), keep=0.5),
        "is a ZIP archive": make_zip_as_mp4(tmp_path / "archive.mp4"),
    }
    for expected, path in cases.items():
        with pytest.raises(AppError) as e:
            v.predict(video_arg(path), True, "", api_name="/create")
        msg = str(e.value)
        assert expected in msg, (path.name, msg)
        assert "Traceback" not in msg and "File \"" not in msg
    assert "Use a normal video file" in msg  # the fix is shown too
    assert stored_avatars(root) == before
    cache = Path(os.environ["GRADIO_TEMP_DIR"])  # unusable uploads are not kept either
    assert not [p.name for path in cases.values() for p in cache.rglob(path.name)]
    assert all(e["event"] in ("consent", "created", "create_failed") for e in audit(root))


def test_hostile_talk_audio_bounded(server, created, tmp_path: Path) -> None:
    """Talk with the timestamp bomb, an hour of silence and a 10000x10000 mov: each gets its
    specific error from the headers; memory does not grow; no render folder is left."""
    from tests.test_media import (
        make_hour_of_silence,
        make_huge_frames,
        make_timestamp_bomb,
    )

    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    aid = pick["value"]
    cases = {
        "audio starts 36000 s (10 h 0 min) after its video": make_timestamp_bomb(
            tmp_path / "bomb.mkv"),
        "3600 s (1 h 0 min) long; the limit is 120 s": make_hour_of_silence(
            tmp_path / "hour.flac"),
        "frames of 10000x10000 pixels": make_huge_frames(tmp_path / "huge.mov"),
    }
    renders = root / "avatars" / aid / "renders"
    before = sorted(renders.iterdir()) if renders.is_dir() else []
    peak0 = peak_rss_mb()
    for expected, path in cases.items():
        assert path.stat().st_size < 2_000_000
        with pytest.raises(AppError) as e:
            owner.predict(aid, handle_file(str(path)), api_name="/talk")
        assert expected in str(e.value), str(e.value)
    # the bomb alone used to pad 576 M samples (2.3 GB) before any check
    assert peak_rss_mb() - peak0 < 400
    assert (sorted(renders.iterdir()) if renders.is_dir() else []) == before


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
        owner.predict("uploaded clip", None, clip, "true", [3.0], ["loop"], api_name="/benchmark")
    table, _, _ = owner.predict("uploaded clip", None, clip, True, [3.0], ["loop"],
                                api_name="/benchmark")
    assert "woman_desk_5s" in table
    records = [json.loads(p.read_text()) for p in (root / "jobs").glob("*/consent.json")]
    assert len(records) == 1 and records[0]["clip_name"] == "woman_desk_5s.mp4"
    assert any(e["event"] == "consent" and e.get("job") == records[0]["job"]
               for e in audit(root))


def test_fair_queue(server, created, audio_dir: Path) -> None:
    """One visitor may have at most max_waiting (2) jobs waiting; the next is refused at
    once with a message, while another visitor still gets in."""
    from gradio_client.exceptions import ValidationError

    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    assert demo.instag.cfg.max_waiting == 2
    audio = handle_file(str(audio_dir / "en_kim.mp3"))
    # the running job renders a minute of speech on a twin avatar, so the two jobs behind it
    # wait long enough to be seen waiting however loaded the machine is; deleting the twin
    # stops it at the end
    twin = twin_avatar(demo, owner, pick["value"])
    running = owner.submit(twin, handle_file(str(audio_dir / "en_eng.wav")), api_name="/talk")
    waiting, later = [], []
    try:
        deadline = time.monotonic() + 300
        while running.status().code.name not in ("PROCESSING", "PROGRESS", "FINISHED"):
            assert time.monotonic() < deadline, "the first Talk never started"
            time.sleep(0.05)
        waiting = [owner.submit("0" * 32, audio, api_name="/talk") for _ in range(2)]
        deadline = time.monotonic() + 120     # the server's own count of this visitor's queue
        while waiting_jobs(demo.instag.blocks, demo.instag.token_block, owner.token) < 2:
            assert time.monotonic() < deadline, (
                f"the two jobs never waited together: {[w.status().code.name for w in waiting]}, "
                f"first Talk {running.status().code.name}")
            time.sleep(0.05)
        with pytest.raises(ValidationError, match=r"already have 2 jobs waiting .*limit is 2"):
            owner.predict("0" * 32, audio, api_name="/talk")
        other = Visitor(url)
        later = [other.submit("0" * 32, audio, api_name="/talk")]  # not refused
    finally:  # stop the minute of rendering even when a check failed: nothing waits behind it
        status, *_ = owner.predict(twin, api_name="/delete_avatar")
    assert "Deleted" in status
    with pytest.raises(AppError, match="stopped: the avatar was deleted|does not exist"):
        running.result()
    for job in waiting + later:
        with pytest.raises(AppError, match="does not exist"):
            job.result()


def twin_avatar(demo, owner: Visitor, aid: str) -> str:
    """A second complete avatar of ``owner``: the store's own steps with a copy of avatar
    ``aid``'s model (no second adaptation)."""
    import shutil

    store = demo.instag.store
    src = store.folder(aid)
    rec = store.begin(owner.token, src / "clip.mp4", "twin")
    shutil.copytree(src / "avatar", store.folder(rec) / "avatar")
    store.finish(rec)
    return rec.id


def test_delete_during_talk_stops_it(server, created, audio_dir: Path) -> None:
    """Delete while the avatar renders: the render is stopped first and says so, the folder
    stays gone (nothing re-created by the writer), no half-written file remains."""
    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    aid = twin_avatar(demo, owner, pick["value"])
    job = owner.submit(aid, handle_file(str(audio_dir / "en_eng.wav")), api_name="/talk")
    while not any("Rendering" in (p.desc or "") for p in job.status().progress_data or []):
        assert not job.done(), job.result()
        time.sleep(0.1)
    status, p1, _, table = owner.predict(aid, api_name="/delete_avatar")
    assert "Deleted" in status and "1 running job(s) on it were stopped first" in status
    with pytest.raises(AppError, match="stopped: the avatar was deleted"):
        job.result()
    time.sleep(1.0)
    assert not (root / "avatars" / aid).exists()
    assert [c[1] for c in p1["choices"]] == [pick["value"]]
    events = [e["event"] for e in audit(root) if e.get("avatar") == aid]
    assert events == ["consent", "created", "deleted"]


def test_streamed_talk_plays_segments_and_a_closed_stream_frees_the_avatar(
        server, created, audio_dir: Path, tmp_path: Path) -> None:
    """The Talk button's streamed render: short segments come out while it renders; when
    the page goes away (Gradio closes the generator) the render stops, the avatar is free
    again and no render folder is left."""
    import threading

    demo, url, root = server
    owner, (_, _, pick, _, _), *_ = created
    app = demo.instag
    aid = twin_avatar(demo, owner, pick["value"])
    audio = tmp_path / "upload" / "en_eng.wav"  # an upload folder of its own (attached)
    audio.parent.mkdir()
    shutil.copy(audio_dir / "en_eng.wav", audio)
    renders = root / "avatars" / aid / "renders"
    talk = app.talk_stream(aid, str(audio), owner.token, None)
    token, seg, *_ = next(talk)
    assert token == owner.token and seg.endswith("segment_00000.ts") and Path(seg).is_file()
    assert app.locks.in_use(aid) and len(list(renders.iterdir())) == 1
    talk.close()  # what Gradio does when the client disconnects
    assert not app.locks.in_use(aid)
    assert not [t for t in threading.enumerate() if t.name in ("synthesis", "encoder")]
    assert not renders.exists() or not list(renders.iterdir())


def test_delete_removes_every_file(server, created, audio_dir: Path, tmp_path: Path) -> None:
    """After Delete, every URL tied to the avatar (uploaded clip, preview, uploaded audio,
    Talk render, benchmark outputs) is refused to a client with no session, and the
    files are gone from Gradio's cache."""
    demo, url, root = server
    owner, (_, preview, pick, _, _), *_ = created
    aid = pick["value"]
    from tests.test_media import make_short_speech

    speech = make_short_speech(audio_dir, tmp_path / "short_speech.wav")
    video, file, _ = owner.predict(aid, handle_file(str(speech)), api_name="/talk")
    ext = [Path(d) for d in json.loads((root / "avatars" / aid / "external.json").read_text())]
    upload = next(d for d in ext if (d / "may_5s.mp4").is_file()) / "may_5s.mp4"
    audio_up = next(d for d in ext if (d / speech.name).is_file()) / speech.name
    paths = [upload, local(preview), audio_up, local(video), local(file)]
    jobs = [d for d in (root / "jobs").iterdir()
            if json.loads((d / "job.json").read_text())["avatar"] == aid]
    for d in jobs:  # the benchmark tests' outputs, served from the cache
        if (d / "external.json").is_file():
            paths += [f for e in json.loads((d / "external.json").read_text())
                      for f in Path(e).iterdir()]
    assert [fetch_status(url, p) for p in paths] == [200] * len(paths)
    status, *_ = owner.predict(aid, api_name="/delete_avatar")
    assert status.startswith("Deleted “May” and all its files.")
    assert [fetch_status(url, p) for p in paths] == [403] * len(paths)
    assert not any(p.exists() for p in paths)
    assert not (root / "avatars" / aid).exists() and not any(d.exists() for d in jobs)
    events = [e["event"] for e in audit(root) if e.get("avatar") == aid]
    assert events == ["consent", "created", "deleted"]


def test_owner_deletes_avatar(server, tmp_path: Path) -> None:
    """Delete through the API removes the avatar's benchmark jobs and logs it."""
    demo, url, root = server
    store = demo.instag.store
    v = Visitor(url)
    from tests.test_media import make_tone_clip

    rec = store.begin(v.token, make_tone_clip(tmp_path / "c.mp4", 1.0), "x")
    store.finish(rec)
    job = store.job_dir(v.token, "benchmark", avatar=rec.id)
    status, p1, _, table = v.predict(rec.id, api_name="/delete_avatar")
    assert "Deleted" in status and p1["choices"] == [] and table["data"] == []
    assert not store.folder(rec).exists() and not job.exists()
    events = [e["event"] for e in audit(root) if e.get("avatar") == rec.id]
    assert events == ["consent", "created", "deleted"]


def test_store_expiry_and_ids(tmp_path: Path, clips_dir: Path) -> None:
    from demo.owners import OwnerTokens
    from demo.store import AvatarStore, NotFound

    store = AvatarStore(tmp_path, expiry_s=60)
    tok, other = OwnerTokens(tmp_path).issue(), OwnerTokens(tmp_path).issue()
    rec = store.begin(tok, clips_dir / "may_5s.mp4", "x")
    assert store.list(tok) == []  # incomplete avatars are not listed
    store.finish(rec)
    assert [r.id for r in store.list(tok)] == [rec.id] and store.list(other) == []
    assert tok not in (tmp_path / "audit.jsonl").read_text()  # only hashes on disk
    with pytest.raises(NotFound):
        store.get(other, rec.id)
    assert store.sweep(now=time.time() + 61, in_use=lambda aid: aid == rec.id) == 0  # busy
    assert store.sweep(now=time.time() + 61) == 1
    assert store.list(tok) == [] and not store.folder(rec).exists()
    assert [e["event"] for e in audit(tmp_path)] == ["consent", "created", "expired"]


def test_sweep_removes_old_cache_folders(tmp_path: Path, clips_dir: Path) -> None:
    """The app's own sweep: cache folders older than the expiry go (counted from their last
    change: a copy keeps its source's mtime), newer ones stay; files tied to an expired
    avatar go with it; nothing outside the cache root is touched."""
    import shutil

    from demo.owners import OwnerTokens
    from demo.store import AvatarStore

    cache, outside = tmp_path / "cache", tmp_path / "outside"
    for d in (cache / "old", cache / "new", cache / "tied", outside):
        d.mkdir(parents=True)
    src = Path(shutil.copy(clips_dir / "may_5s.mp4", tmp_path / "src.mp4"))
    os.utime(src, (time.time() - 7200,) * 2)
    for d in (cache / "old", cache / "new", cache / "tied", outside):
        shutil.copy2(src, d / "clip.mp4")  # keeps the source's (two hours old) mtime
    store = AvatarStore(tmp_path / "store", expiry_s=3600, external_roots=[cache])
    tok = OwnerTokens(tmp_path / "store").issue()
    rec = store.begin(tok, clips_dir / "may_5s.mp4", "x")
    store.finish(rec)
    store.attach(store.folder(rec), cache / "tied" / "clip.mp4")
    store.attach(store.folder(rec), outside / "clip.mp4")  # ignored: not under a root
    now = time.time()
    assert (cache / "old" / "clip.mp4").stat().st_mtime < now - 3600  # copy2 kept it
    assert store.sweep_external(now) == 0  # all just made (st_ctime), whatever the mtime
    assert store.sweep_external(now + 3600 + 10) == 3  # an hour later: old, new, tied
    assert not any(cache.iterdir()) and (outside / "clip.mp4").is_file()
    (cache / "tied").mkdir()
    (cache / "tied" / "clip.mp4").write_bytes(b"x")
    assert store.sweep(now=rec.expires + 1) == 1
    assert not (cache / "tied").exists() and (outside / "clip.mp4").is_file()


def test_shared_upload_folder_outlives_a_refusal_until_its_last_request(tmp_path: Path) -> None:
    """Identical uploads share one cache folder: a request that refuses the file must not
    pull it from under another request still using it; the last one out removes it, and a
    folder an avatar has attached is never removed by a refusal."""
    import threading

    from demo.store import AvatarStore

    cache = tmp_path / "cache"
    (cache / "same").mkdir(parents=True)
    (cache / "same" / "clip.mp4").write_bytes(b"same bytes")
    clip = cache / "same" / "clip.mp4"
    store = AvatarStore(tmp_path / "store", expiry_s=3600, external_roots=[cache])
    with store.holding(clip):                   # request A, still working with the file
        with store.holding(str(clip)):          # request B: same bytes, same folder
            store.discard_external(clip)        # B refuses its upload
        assert clip.read_bytes() == b"same bytes"   # A can still read it
    assert not (cache / "same").exists()        # A was the last: the refusal is carried out
    # unheld: removed at once; outside the roots or None: nothing happens
    (cache / "now").mkdir()
    (cache / "now" / "clip.mp4").write_bytes(b"x")
    store.discard_external(cache / "now" / "clip.mp4")
    assert not (cache / "now").exists()
    with store.holding(None), store.holding(tmp_path / "elsewhere.mp4"):
        pass
    # attached to an avatar's folder by the surviving request: it stays with the avatar
    (cache / "kept").mkdir()
    (cache / "kept" / "clip.mp4").write_bytes(b"y")
    owner_folder = tmp_path / "store" / "avatars" / ("a" * 32)
    owner_folder.mkdir(parents=True)
    with store.holding(cache / "kept" / "clip.mp4"):
        store.discard_external(cache / "kept" / "clip.mp4")
        store.attach(owner_folder, cache / "kept" / "clip.mp4")
    assert (cache / "kept" / "clip.mp4").is_file()
    # many threads holding and refusing the same folder: every reader finds the file
    (cache / "busy").mkdir()
    (cache / "busy" / "clip.mp4").write_bytes(b"z" * 1000)
    seen, gate = [], threading.Barrier(8)

    def request() -> None:
        with store.holding(cache / "busy" / "clip.mp4"):
            gate.wait(timeout=10)
            store.discard_external(cache / "busy" / "clip.mp4")
            gate.wait(timeout=10)
            seen.append((cache / "busy" / "clip.mp4").stat().st_size)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert seen == [1000] * 8 and not (cache / "busy").exists()


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


def test_zero_gpu_only_gpu_work_inside(tmp_path: Path, monkeypatch) -> None:
    """With ``spaces`` (a stand-in recording what it is given): the short ``zerogpu`` preset
    is chosen, only adaptation, rendering and the benchmark are GPU calls, each asks for at
    most the per-call maximum, and a user error raised inside comes out as a gr.Error whose
    message survives pickling (the worker boundary)."""
    import pickle
    import sys
    import types

    import gradio as gr

    from core.train.adapt import PRESETS
    from demo.config import ZERO_GPU_MAX_S, ZERO_GPU_PRESET, app_presets, default_preset

    asked: dict[str, int] = {}
    fake = types.ModuleType("spaces")

    def GPU(duration: int = 60):
        def wrap(fn):
            asked[fn.__name__] = duration
            return fn
        return wrap

    fake.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert default_preset() == ZERO_GPU_PRESET
    short, full = app_presets()[ZERO_GPU_PRESET], PRESETS["gpu"]
    assert short.res == full.res and short.total_steps <= full.total_steps / 5
    monkeypatch.delenv("INSTAG_PRESET", raising=False)
    cfg = AppConfig.from_env(data_root=tmp_path / "data")
    assert cfg.preset == ZERO_GPU_PRESET
    from demo.ui import build_app

    demo = build_app(cfg, start_sweeper=False)
    assert demo.instag.zero_gpu
    # no tracking, no I/O; a streamed render is a GPU call of its own
    assert set(asked) == {"adapt_gpu", "render_gpu", "render_stream_gpu", "bench_gpu"}
    assert max(asked.values()) <= ZERO_GPU_MAX_S
    with pytest.raises(ValueError, match="refused by ZeroGPU"):
        AppConfig(data_root=tmp_path, preset="tiny", gpu_adapt_s=2320).validate()
    from demo.gpu import gpu_task

    def bad_audio() -> None:
        raise InputError("too_long", "a.wav is 3600 s long; the limit is 120 s.", "Trim it.")

    with pytest.raises(gr.Error) as e:
        gpu_task(60)(bad_audio)()
    back = pickle.loads(pickle.dumps(e.value))
    assert isinstance(back, gr.Error) and "3600 s long" in str(back) and "Trim it." in str(back)


PY310_CHECK = r"""
import sys, tempfile
assert sys.version_info[:2] == (3, 10), sys.version
import app                                   # builds the UI (tiny preset from the env)
import gradio
assert isinstance(app.demo, gradio.Blocks) and app.demo.instag.cfg.preset == "tiny"
import core.adapt, core.preprocess, core.synthesize, eval.benchmark  # the lazy imports
from core.data.speech import speak          # Piper and onnxruntime wheels for 3.10
assert speak("Hello there.").seconds > 0.3
print("py310 ok", sys.version.split()[0])
"""


def test_app_imports_on_python_310(tmp_path: Path) -> None:
    """ZeroGPU runs Python 3.10: the app imports and builds its UI there. ``.ci/run`` makes
    a 3.10 environment when the machine has a 3.10 interpreter and sets INSTAG_PY310."""
    import subprocess

    py = os.environ.get("INSTAG_PY310")
    if not py:
        pytest.skip("no Python 3.10 environment (INSTAG_PY310 unset; .ci/run sets it)")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "INSTAG_PRESET": "tiny", "INSTAG_APP_DATA": str(tmp_path),
           "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([py, "-c", PY310_CHECK], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "py310 ok 3.10." in r.stdout


def test_benchmark_metrics_import_on_python_310(tmp_path: Path) -> None:
    import subprocess

    py = os.environ.get("INSTAG_PY310")
    if not py:
        pytest.skip("no Python 3.10 environment (INSTAG_PY310 unset; .ci/run sets it)")
    r = subprocess.run([py, "-c", "import eval.metrics.frames"], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
