"""The Gradio app: layout and callbacks. No model logic here: it calls ``core.*``, the
evaluation harness and :mod:`demo.store`.

API names (for ``gradio_client``): ``/create``, ``/list_avatars``, ``/talk``,
``/delete_avatar``, ``/benchmark``.
"""
from __future__ import annotations

import logging
import math
import secrets
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.errors import InputError
from core.progress import format_seconds
from demo.config import AppConfig
from demo.gpu import gpu
from demo.store import (
    CONSENT_STATEMENT,
    STATEMENT_VERSION,
    AvatarStore,
    NotFound,
    iso,
)
from demo.weights import resolve_prior

log = logging.getLogger("instag.app")

ABOUT = Path(__file__).with_name("about.md")
CLIP_TYPES = [".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg"]
NOT_FOUND = ("That avatar does not exist in this browser session (it may have been deleted "
             "or expired). Choose one of your avatars from the list.")
CONSENT_NEEDED = ("Nothing was processed: tick the consent box first (you must be the person "
                  "in the video or have their explicit permission).")
TITLES = {"no_audio": "No audio in the clip", "no_face": "No face found",
          "multiple_faces": "More than one face", "face_lost": "Face not tracked",
          "too_short": "Too short", "too_long": "Too long", "unreadable": "Not a usable file",
          "no_video": "Not a video", "wrong_weights": "Model weights missing",
          "corrupt": "Damaged avatar"}
#: rough seconds per adaptation step by resolution on CPU (for the job's time-left estimate)
_STEP_S = {96: 0.08, 128: 0.12, 256: 0.45, 512: 1.5}


def internal_error(job: str, message: str) -> tuple[str, gr.Error]:
    """Log the exception being handled under a short reference; return the reference and the
    UI error (``message`` may use ``{ref}``), which shows no stack trace."""
    ref = secrets.token_hex(4)
    log.error("%s failed (ref %s):\n%s", job, ref, traceback.format_exc())
    return ref, gr.Error(message.format(ref=ref), title="Internal error", print_exception=False)


def user_error(e: InputError) -> gr.Error:
    """An :class:`InputError` as a UI error: the problem and the fix, no stack trace."""
    return gr.Error(f"{e.problem} {e.fix}", title=TITLES.get(e.code, "Cannot use this file"),
                    duration=None, print_exception=False)


class JobProgress:
    """Maps ``core`` progress callbacks ``(text, fraction)`` onto one ``gr.Progress`` bar:
    each stage owns a slice of the bar; the description carries the stage's own steps and
    time left, or the job's estimated time left."""

    def __init__(self, progress: Any, min_interval: float = 0.2) -> None:
        self.progress = progress
        self.t0 = time.monotonic()
        self.frac = 0.0
        self.last = -1.0
        self.min_interval = min_interval

    def stage(self, lo: float, hi: float, label: str) -> Callable[[str, float], None]:
        """A ``progress(text, fraction)`` callback for the part ``[lo, hi]`` of the job."""

        def report(text: str, frac: float) -> None:
            overall = max(self.frac, lo + (hi - lo) * min(max(float(frac), 0.0), 1.0))
            now = time.monotonic()
            if now - self.last < self.min_interval and frac < 1.0:
                return
            self.last, self.frac = now, overall
            desc = f"{label}: {text}" if text else label
            if "left" not in text and overall > 0.03:
                el = now - self.t0
                desc += f" (about {format_seconds(el / overall * (1 - overall))} left)"
            if self.progress is not None:
                self.progress(overall, desc=desc)

        return report


# -- heavy work: module-level functions of picklable arguments (ZeroGPU runs them in a
# GPU worker process); ``progress`` is the event's gr.Progress ------------------------
def create_work(cfg: AppConfig, folder: Path, clip_file: str, prior: Path | None,
                progress: Any) -> Path:
    """Preprocess the clip, adapt the avatar into ``folder/avatar``, render the preview
    (the clip's own first seconds of audio) to ``folder/preview.mp4``."""
    from core.train.adapt import PRESETS, adapt
    from core.data.preprocess import PreprocessConfig, preprocess
    from core.synthesize import synthesize

    jp = JobProgress(progress)
    acfg = PRESETS[cfg.preset]
    clip, work = folder / clip_file, folder / "work"
    # stage shares of the bar from rough costs (preprocessing ~2.5 s per clip second at
    # 256 px on CPU; adaptation steps; preview frames)
    t_pre = 2.5 * acfg.seconds * (max(acfg.res, 256) / 256) ** 2
    t_adapt = acfg.total_steps * _STEP_S.get(acfg.res, 0.45 * (acfg.res / 256) ** 2)
    t_prev = cfg.preview_s * 25 * 0.05 * (acfg.res / 256) ** 2
    tot = t_pre + t_adapt + t_prev
    a, b = t_pre / tot, (t_pre + t_adapt) / tot
    pcfg = PreprocessConfig(res=max(acfg.res, 256), min_seconds=cfg.min_clip_s,
                            max_seconds=cfg.max_clip_s, max_frames=math.ceil(acfg.seconds * 25))
    processed = preprocess(clip, work / "clip", pcfg, overwrite=True,
                           progress=jp.stage(0.0, a, "Preprocessing"))
    avatar = adapt(processed, folder / "avatar", prior, acfg,
                   progress=jp.stage(a, b, "Adapting"), work=work / "adapt")
    synthesize(avatar, clip, folder / "preview.mp4", progress=jp.stage(b, 1.0, "Preview"),
               max_seconds=cfg.max_clip_s, duration=cfg.preview_s)
    shutil.rmtree(work, ignore_errors=True)
    return folder / "preview.mp4"


def talk_work(avatar_dir: Path, audio: Path, out: Path, max_seconds: float, progress: Any):
    """Render the avatar speaking ``audio`` (core.synthesize: marked frames and metadata)."""
    from core.synthesize import synthesize

    return synthesize(avatar_dir, audio, out, max_seconds=max_seconds,
                      progress=JobProgress(progress).stage(0.0, 1.0, "Rendering"))


def bench_work(clips: list[Path], train: list[float], methods: list[str], out: Path,
               prior: Path | None, progress: Any):
    """The evaluation harness in quick mode."""
    from eval.benchmark import run_benchmark

    return run_benchmark(clips, train, methods, out, prior, quick=True,
                         progress=JobProgress(progress).stage(0.0, 1.0, "Benchmark"))


@dataclass
class App:
    """The app's state shared by all sessions: config, store and the serving folder."""

    cfg: AppConfig
    store: AvatarStore
    serve_root: Path

    def __post_init__(self) -> None:
        # ZeroGPU wants its GPU functions decorated once, before launch
        from core.train.adapt import PRESETS

        steps = PRESETS[self.cfg.preset].total_steps
        self._create_gpu = gpu(duration=int(min(3600, 120 + steps * 0.1)))(create_work)
        self._talk_gpu = gpu(duration=120)(talk_work)
        self._bench_gpu = gpu(duration=600)(bench_work)

    # -- helpers ----------------------------------------------------------------------
    def serve(self, path: Path) -> str:
        """Copy a private file to a fresh random folder Gradio may serve from (it copies it
        into its own cache; these copies are swept with the rest)."""
        d = Path(tempfile.mkdtemp(prefix="job-", dir=self.serve_root))
        dst = d / path.name
        shutil.copyfile(path, dst)
        return str(dst)

    def sweep(self) -> None:
        """Remove expired avatars and jobs, and served copies older than an hour."""
        try:
            n = self.store.sweep()
            cutoff = time.time() - min(3600.0, self.cfg.expiry_s)
            for d in self.serve_root.iterdir():
                if d.stat().st_mtime < cutoff:
                    shutil.rmtree(d, ignore_errors=True)
            if n:
                log.info("expiry sweep removed %d folders", n)
        except Exception:  # never let the sweeper die
            log.exception("expiry sweep failed")

    def avatar_choices(self, token: str | None) -> list[tuple[str, str]]:
        out = []
        for r in self.store.list(token):
            left_h = max(0.0, (r.expires - time.time()) / 3600)
            out.append((f"{r.name} (created {iso(r.created)[11:16]} UTC, expires in "
                        f"{left_h:.1f} h)", r.id))
        return out

    def avatar_table(self, token: str | None) -> list[list[str]]:
        return [[r.name, iso(r.created), iso(r.expires), r.source_name, r.id[:8]]
                for r in self.store.list(token)]

    def _pick_updates(self, token: str | None, select: str | None = None) -> tuple:
        choices = self.avatar_choices(token)
        ids = [c[1] for c in choices]
        value = select if select in ids else (ids[-1] if ids else None)
        return (gr.update(choices=choices, value=value), gr.update(choices=choices, value=value),
                self.avatar_table(token))

    # -- callbacks --------------------------------------------------------------------
    def refresh(self, token: str | None):
        """Page load / refresh: (token, talk picker, benchmark picker, table)."""
        token = token or self.store.new_token()
        return (token, *self._pick_updates(token))

    def create(self, video: str | None, consent: bool, name: str, token: str | None,
               progress=gr.Progress()):
        """Create tab: consent, cheap checks, preprocessing, adaptation, preview."""
        from core.data.preprocess import PreprocessConfig, check_media

        token = token or self.store.new_token()
        if not consent:
            raise gr.Error(CONSENT_NEEDED, title="Consent needed", duration=None,
                           print_exception=False)
        if not video:
            raise gr.Error("Upload or record a video clip first.", title="No clip",
                           print_exception=False)
        clip = Path(video)
        size_mb = clip.stat().st_size / 2**20 if clip.is_file() else 0.0
        if size_mb > self.cfg.max_upload_mb:
            raise gr.Error(f"The file is {size_mb:.0f} MB; the limit is {self.cfg.max_upload_mb} MB. "
                           "Trim or re-export it.", title="Too large", print_exception=False)
        try:
            check_media(clip, PreprocessConfig(min_seconds=self.cfg.min_clip_s,
                                               max_seconds=self.cfg.max_clip_s))
            prior = resolve_prior(self.cfg)
        except InputError as e:
            raise user_error(e) from None
        try:
            rec = self.store.begin(token, clip, name or "", preset=self.cfg.preset)
        except PermissionError as e:
            raise gr.Error(str(e), title="Too many avatars", print_exception=False) from None
        try:
            preview = self._create_gpu(self.cfg, self.store.folder(rec), rec.clip_file, prior,
                                       progress)
        except InputError as e:
            self.store.abort(rec, e.code)
            raise user_error(e) from None
        except Exception:
            ref, err = internal_error("create", "Creating the avatar failed unexpectedly "
                                      "(reference {ref}). Nothing was kept; try again or "
                                      "with another clip.")
            self.store.abort(rec, f"internal error {ref}")
            raise err from None
        self.store.finish(rec)
        status = (f"**Avatar “{rec.name}” is ready.** It expires at {iso(rec.expires)} "
                  f"(or delete it in the Talk tab). The preview re-speaks the first "
                  f"{self.cfg.preview_s:g} s of your clip's audio.")
        return (token, status, self.serve(preview), *self._pick_updates(token, rec.id))

    def talk(self, avatar_id: str | None, audio: str | None, token: str | None,
             progress=gr.Progress()):
        """Talk tab: render the chosen avatar speaking the audio."""
        token = token or self.store.new_token()
        if not audio:
            raise gr.Error("Upload or record some audio first.", title="No audio",
                           print_exception=False)
        if not avatar_id:
            raise gr.Error("Choose one of your avatars (make one in the Create avatar tab).",
                           title="No avatar chosen", print_exception=False)
        try:
            rec = self.store.get(token, avatar_id)
        except NotFound:
            raise gr.Error(NOT_FOUND, title="Avatar not found", print_exception=False) from None
        out = self.store.render_path(rec)  # inside the avatar: deleted with it
        try:
            res = self._talk_gpu(self.store.folder(rec) / "avatar", Path(audio), out,
                                 self.cfg.max_audio_s, progress)
        except InputError as e:
            raise user_error(e) from None
        except Exception:
            raise internal_error("talk", "Rendering failed unexpectedly (reference {ref}).")[1] from None
        served = self.serve(res.path)
        status = (f"{res.frames} frames ({res.seconds:.1f} s of audio), rendered at "
                  f"{res.render_fps:.1f} frames/s. Every frame is marked “AI-generated”; "
                  "so is the file's metadata.")
        return token, served, served, status

    def delete(self, avatar_id: str | None, token: str | None):
        """Delete one of this session's avatars and all its files."""
        token = token or self.store.new_token()
        try:
            rec = self.store.delete(token, avatar_id)
        except NotFound:
            raise gr.Error(NOT_FOUND, title="Avatar not found", print_exception=False) from None
        return (token, f"Deleted “{rec.name}” and all its files.", *self._pick_updates(token))

    def benchmark(self, source: str, avatar_id: str | None, clip: str | None, consent: bool,
                  seconds: list, methods: list, token: str | None, progress=gr.Progress()):
        """Benchmark tab: the evaluation harness in quick mode."""
        from core.data.preprocess import PreprocessConfig, check_media

        token = token or self.store.new_token()
        if source == "created avatar":
            try:
                rec = self.store.get(token, avatar_id)
            except NotFound:
                raise gr.Error(NOT_FOUND, title="Avatar not found",
                               print_exception=False) from None
            path, stem = self.store.folder(rec) / rec.clip_file, Path(rec.source_name).stem
            linked: str | None = rec.id
        else:
            if not consent:
                raise gr.Error(CONSENT_NEEDED, title="Consent needed", duration=None,
                               print_exception=False)
            if not clip:
                raise gr.Error("Upload a clip first.", title="No clip", print_exception=False)
            path, stem, linked = Path(clip), Path(clip).stem, None
        if not methods or not seconds:
            raise gr.Error("Choose at least one method and one training length.",
                           title="Nothing to run", print_exception=False)
        try:
            from eval.benchmark import BenchmarkConfig
        except ImportError:
            raise gr.Error("The benchmark harness (eval.benchmark) is not available in this "
                           "installation yet.", title="Benchmark harness not available",
                           print_exception=False) from None
        train = sorted(float(s) for s in seconds)
        test_s = float(BenchmarkConfig(quick=True).test_seconds or 2.0)
        try:
            # quick mode scores the seconds after the longest training part
            check_media(path, PreprocessConfig(min_seconds=max(self.cfg.min_clip_s,
                                                               train[-1] + test_s),
                                               max_seconds=self.cfg.max_clip_s))
            prior = resolve_prior(self.cfg)
        except InputError as e:
            if e.code == "too_short":
                e.fix = (f"Training on {train[-1]:g} s and scoring {test_s:g} s held out needs "
                         f"a clip of at least {train[-1] + test_s:g} s: choose fewer training "
                         "seconds or a longer clip.")
            raise user_error(e) from None
        out = self.store.job_dir(token, "benchmark", avatar=linked)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:40] or "clip"
        work_clip = out / f"{safe}{path.suffix.lower() or '.mp4'}"
        shutil.copyfile(path, work_clip)
        if linked is None:  # consent for an uploaded clip, kept with its results
            digest = self.store.write_consent(out, self.store.owner_of(out), work_clip,
                                              path.name, job=out.name)
            self.store.audit("benchmark_consent", job=out.name, owner=self.store.owner_of(out),
                             clip_sha256=digest, statement_version=STATEMENT_VERSION)
        try:
            res = self._bench_gpu([work_clip], train, list(methods), out / "results", prior,
                                  progress)
        except InputError as e:
            raise user_error(e) from None
        except Exception:
            raise internal_error("benchmark", "The benchmark failed unexpectedly "
                                 "(reference {ref}).")[1] from None
        finally:
            work_clip.unlink(missing_ok=True)
        plots = [self.serve(Path(p)) for p in res.plots]
        return token, res.table_md, plots, self.serve(Path(res.csv_path))


def _benchmark_options() -> tuple[list[str], list[float]]:
    """Methods and training lengths offered in the Benchmark tab (from the harness when
    it declares them)."""
    methods, seconds = ["instag", "scratch"], [3.0, 5.0, 10.0]
    try:
        import eval.benchmark as b

        methods = list(getattr(b, "METHODS", methods))
        seconds = [float(s) for s in getattr(b, "TRAIN_SECONDS", seconds)]
    except Exception:
        pass
    return methods, seconds


def build_app(cfg: AppConfig | None = None, start_sweeper: bool = True) -> gr.Blocks:
    """The ``gr.Blocks`` app with its queue configured (launch it with ``.launch()``)."""
    cfg = cfg or AppConfig.from_env()
    store = AvatarStore(cfg.data_root, cfg.expiry_s, cfg.max_avatars)
    serve_root = Path(tempfile.gettempdir()) / "instag-app-serve"
    serve_root.mkdir(mode=0o700, exist_ok=True)
    app = App(cfg, store, serve_root)
    app.sweep()
    if start_sweeper:
        def loop() -> None:
            while True:
                time.sleep(cfg.sweep_minutes * 60)
                app.sweep()

        threading.Thread(target=loop, name="instag-expiry", daemon=True).start()

    from core.train.adapt import PRESETS

    acfg = PRESETS[cfg.preset]
    methods, train_seconds = _benchmark_options()
    limits = (f"**Clip:** {cfg.min_clip_s:g}–{cfg.max_clip_s:g} s, at most {cfg.max_upload_mb} MB, "
              f"{', '.join(t.lstrip('.') for t in CLIP_TYPES[:5])} or mpg. One face, looking at "
              f"the camera, speaking; only the first {acfg.seconds:g} s are used. "
              f"Preset **{cfg.preset}** ({acfg.res} px, {acfg.total_steps} steps). "
              f"Avatars expire after {cfg.expiry_hours:g} h.")
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    sweep_s = int(cfg.sweep_minutes * 60)
    with gr.Blocks(title="InsTaG talking head", theme=theme, analytics_enabled=False,
                   delete_cache=(sweep_s, int(cfg.expiry_s))) as demo:
        token = gr.State(None)
        gr.Markdown("# InsTaG: your talking head from a few seconds of video\n"
                    "Create an avatar from a short clip of yourself, then make it say anything. "
                    "Everything it renders is marked **AI-generated**.")
        with gr.Tabs():
            with gr.Tab("Create avatar", id="create"):
                gr.Markdown(limits, elem_id="limits")
                with gr.Row():
                    with gr.Column():
                        video = gr.Video(label="Your clip (upload or record)",
                                         sources=["upload", "webcam"], include_audio=True,
                                         elem_id="create-video")
                        name = gr.Textbox(label="Avatar name (optional)", max_lines=1,
                                          elem_id="create-name")
                        consent = gr.Checkbox(label=CONSENT_STATEMENT, value=False,
                                              elem_id="create-consent")
                        gr.Markdown(f"<small>Consent statement version {STATEMENT_VERSION}; "
                                    "the time, this version and the clip's hash are stored with "
                                    "the avatar.</small>")
                        create_btn = gr.Button("Create avatar", variant="primary",
                                               elem_id="create-btn")
                    with gr.Column():
                        status = gr.Markdown(elem_id="create-status")
                        preview = gr.Video(label="Preview", interactive=False,
                                           elem_id="create-preview")
            with gr.Tab("Talk", id="talk"):
                with gr.Row():
                    with gr.Column():
                        pick = gr.Dropdown(label="Your avatar", choices=[],
                                           allow_custom_value=True, elem_id="talk-avatar")
                        audio = gr.Audio(label="Audio (upload or record, at most "
                                         f"{cfg.max_audio_s:g} s)", sources=["upload", "microphone"],
                                         type="filepath", format=None, elem_id="talk-audio")
                        talk_btn = gr.Button("Render", variant="primary", elem_id="talk-btn")
                        with gr.Row():
                            refresh_btn = gr.Button("Refresh list", size="sm")
                            delete_btn = gr.Button("Delete this avatar", variant="stop", size="sm",
                                                   elem_id="delete-btn")
                        talk_status = gr.Markdown(elem_id="talk-status")
                    with gr.Column():
                        talk_video = gr.Video(label="Result (AI-generated)", interactive=False,
                                              elem_id="talk-video")
                        talk_file = gr.File(label="Download mp4", interactive=False,
                                            elem_id="talk-file")
                table = gr.Dataframe(headers=["name", "created (UTC)", "expires (UTC)",
                                              "source clip", "id"], label="Your avatars",
                                     interactive=False, elem_id="avatar-table")
            with gr.Tab("Benchmark", id="benchmark"):
                gr.Markdown("Runs the evaluation harness in **quick** mode: each chosen method "
                            "is trained on the first seconds of the clip and scored on the "
                            "2 s after the longest training part (PSNR, SSIM, LPIPS, landmark "
                            "and lip-sync scores). The clip must be that long.")
                with gr.Row():
                    with gr.Column():
                        source = gr.Radio(["created avatar", "uploaded clip"],
                                          value="created avatar", label="Clip",
                                          elem_id="bench-source")
                        bench_pick = gr.Dropdown(label="Avatar (its source clip)", choices=[],
                                                 allow_custom_value=True, elem_id="bench-avatar")
                        bench_clip = gr.Video(label="Clip", sources=["upload"], include_audio=True,
                                              visible=False, elem_id="bench-clip")
                        bench_consent = gr.Checkbox(label=CONSENT_STATEMENT, value=False,
                                                    visible=False, elem_id="bench-consent")
                    with gr.Column():
                        default_s = [3.0] if 3.0 in train_seconds else train_seconds[:1]
                        bench_seconds = gr.CheckboxGroup(train_seconds, value=default_s,
                                                         label="Training seconds",
                                                         elem_id="bench-seconds")
                        bench_methods = gr.CheckboxGroup(methods, value=methods,
                                                         label="Methods", elem_id="bench-methods")
                        bench_btn = gr.Button("Run benchmark (quick)", variant="primary",
                                              elem_id="bench-btn")
                bench_table = gr.Markdown(elem_id="bench-table")
                with gr.Row():
                    bench_plots = gr.Gallery(label="Plots", columns=2, height="auto",
                                             object_fit="contain", elem_id="bench-plots")
                bench_csv = gr.File(label="Results (CSV)", interactive=False, elem_id="bench-csv")
            with gr.Tab("About / responsible use", id="about"):
                gr.Markdown(ABOUT.read_text(encoding="utf-8"))
                gr.Markdown(f"**This server:** avatars and uploads expire after "
                            f"{cfg.expiry_hours:g} h; {cfg.concurrency} long job(s) run at a time "
                            f"(others wait in a queue that shows your place); adaptation preset "
                            f"`{cfg.preset}`.")

        picks = [pick, bench_pick, table]
        heavy = dict(concurrency_limit=cfg.concurrency, concurrency_id="heavy")
        demo.load(app.refresh, [token], [token, *picks], api_name=False, queue=False)
        refresh_btn.click(app.refresh, [token], [token, *picks], api_name="list_avatars",
                          queue=False)
        create_btn.click(app.create, [video, consent, name, token],
                         [token, status, preview, *picks], api_name="create", **heavy)
        talk_btn.click(app.talk, [pick, audio, token], [token, talk_video, talk_file, talk_status],
                       api_name="talk", **heavy)
        delete_btn.click(app.delete, [pick, token], [token, talk_status, *picks],
                         api_name="delete_avatar", queue=False)
        source.change(lambda src: (gr.update(visible=src == "created avatar"),
                                   gr.update(visible=src != "created avatar"),
                                   gr.update(visible=src != "created avatar")),
                      [source], [bench_pick, bench_clip, bench_consent], api_name=False,
                      queue=False)
        bench_btn.click(app.benchmark, [source, bench_pick, bench_clip, bench_consent,
                                        bench_seconds, bench_methods, token],
                        [token, bench_table, bench_plots, bench_csv], api_name="benchmark", **heavy)
    demo.queue(max_size=cfg.max_queue, default_concurrency_limit=cfg.concurrency)
    demo.instag = app  # type: ignore[attr-defined]  # for tests and tooling
    return demo


def launch(demo: gr.Blocks, cfg: AppConfig, **kwargs: Any) -> Any:
    """Launch with the app's limits (upload size) and no outbound requests. ``kwargs``
    override (e.g. ``server_name``, ``server_port``, ``prevent_thread_lock``)."""
    opts: dict[str, Any] = dict(max_file_size=f"{cfg.max_upload_mb}mb", ssr_mode=False,
                                show_api=True, share=False)
    opts.update(kwargs)
    try:
        prior = resolve_prior(cfg)
        log.warning("InsTaG app: preset %s, prior %s, data in %s", cfg.preset,
                    prior or "none (from scratch)", cfg.data_root)
    except InputError as e:
        log.warning("InsTaG app: %s Creating avatars fails until this is fixed.", e)
    return demo.launch(**opts)
