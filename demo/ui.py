"""The Gradio app: layout and callbacks. No model logic here: it calls ``core.*``, the
evaluation harness and :mod:`demo.store`.

API names (for ``gradio_client``): ``/list_avatars``, ``/create``, ``/talk``,
``/talk_text`` (avatar, text, voice name, speaking rate: an offline voice speaks the text,
:mod:`core.data.speech`), ``/delete_avatar``, ``/refine_avatar``, ``/benchmark``. Every
endpoint takes the owner token as its last input and returns it first (:mod:`demo.owners`);
call ``/list_avatars`` with ``None`` for one.

Files: served copies are written straight into Gradio's cache folder (one random folder
each), so Gradio serves them without another copy; they and the uploads a job used are
tied to their avatar or job (:meth:`demo.store.AvatarStore.attach`) and removed with it.
The app's own sweep removes expired avatars, jobs and cache folders (Gradio 5.49's
``delete_cache`` compares ages with ``timedelta.seconds`` and never removes files older
than a day, so it is not used).
"""
from __future__ import annotations

import contextlib
import logging
import math
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from core.data import speech
from core.errors import InputError
from core.progress import format_seconds
from demo.config import AppConfig, app_presets, on_zero_gpu, refine_target
from demo.errors import internal_error, user_error
from demo.gpu import gpu_task
from demo.jobs import AvatarLocks, Busy, Cancelled, Refused, cancellable, waiting_jobs
from demo.owners import OwnerTokens
from demo.store import (
    CONSENT_STATEMENT,
    STATEMENT_VERSION,
    AvatarRecord,
    AvatarStore,
    NotFound,
    iso,
)
from demo.streaming import SegmentVideo
from demo.weights import resolve_prior

log = logging.getLogger("instag.app")

ABOUT = Path(__file__).with_name("about.md")
CLIP_TYPES = [".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg"]
NOT_FOUND = ("That avatar does not exist in this browser (it may have been deleted or "
             "expired). Choose one of your avatars from the list.")
CONSENT_NEEDED = ("Nothing was processed: tick the consent box first (you must be the person "
                  "in the video or have their explicit permission).")
BEING_DELETED = "That avatar is being deleted; nothing was started."
#: rough seconds per adaptation step by resolution on CPU (for the job's time-left estimate)
_STEP_S = {96: 0.08, 128: 0.12, 256: 0.45, 512: 1.5}


class JobProgress:
    """Maps ``core`` progress callbacks ``(text, fraction)`` onto one ``gr.Progress`` bar:
    each stage owns a slice of the bar; the description carries the stage's own steps and
    time left, or the job's estimated time left (from ``t0``, a ``time.time()``)."""

    def __init__(self, progress: Any, t0: float | None = None, min_interval: float = 0.2) -> None:
        self.progress = progress
        self.t0 = time.time() if t0 is None else t0
        self.frac = 0.0
        self.last = -1.0
        self.min_interval = min_interval

    def stage(self, lo: float, hi: float, label: str,
              stop: threading.Event | None = None) -> Callable[[str, float], None]:
        """A ``progress(text, fraction)`` callback for the part ``[lo, hi]`` of the job;
        it raises :class:`demo.jobs.Cancelled` once ``stop`` is set."""

        def report(text: str, frac: float) -> None:
            overall = max(self.frac, lo + (hi - lo) * min(max(float(frac), 0.0), 1.0))
            now = time.time()
            if now - self.last < self.min_interval and frac < 1.0:
                return
            self.last, self.frac = now, overall
            desc = f"{label}: {text}" if text else label
            if "left" not in text and overall > 0.03:
                el = now - self.t0
                desc += f" (about {format_seconds(el / overall * (1 - overall))} left)"
            if self.progress is not None:
                self.progress(overall, desc=desc)

        return report if stop is None else cancellable(report, stop)


# -- work: module-level functions of picklable arguments. The *_gpu ones are the only
# work inside a GPU call (ZeroGPU runs them in a worker process, where ``stop`` is None:
# an Event cannot cross); ``progress`` is the event's gr.Progress ------------------------
def stage_shares(cfg: AppConfig) -> tuple[float, float]:
    """Where preprocessing ends and adaptation ends on the create bar (rough costs:
    ~2.5 s per clip second at 256 px, adaptation steps, preview frames)."""
    acfg = app_presets()[cfg.preset]
    t_pre = 2.5 * acfg.seconds * (max(acfg.res, 256) / 256) ** 2
    t_adapt = acfg.total_steps * _STEP_S.get(acfg.res, 0.45 * (acfg.res / 256) ** 2)
    t_prev = cfg.preview_s * 25 * 0.05 * (acfg.res / 256) ** 2
    tot = t_pre + t_adapt + t_prev
    return t_pre / tot, (t_pre + t_adapt) / tot


def preprocess_work(cfg: AppConfig, clip: Path, out: Path,
                    progress: Callable[[str, float], None]) -> Path:
    """Face tracking, masks and audio features of the clip (CPU; MediaPipe)."""
    from core.data.preprocess import PreprocessConfig
    from core.preprocess import preprocess_clip

    acfg = app_presets()[cfg.preset]
    pcfg = PreprocessConfig(res=max(acfg.res, 256), min_seconds=cfg.min_clip_s,
                            max_seconds=cfg.max_clip_s, max_frames=math.ceil(acfg.seconds * 25))
    return preprocess_clip(clip, out, pcfg, overwrite=True, progress=progress)


def adapt_gpu(processed: Path, out: Path, prior: Path | None, preset: str, work: Path,
              progress: Any, t0: float, lo: float, hi: float,
              stop: threading.Event | None, device: str = "auto") -> Path:
    """Adapt the prior to the processed clip (the GPU part of creating an avatar) on
    ``device``; the avatar comes back as device-free files."""
    from core.train.adapt import adapt

    return adapt(processed, out, prior, app_presets()[preset],
                 progress=JobProgress(progress, t0).stage(lo, hi, "Adapting", stop), work=work,
                 device=device)


def refine_work(processed: Path, avatar: Path, prior: Path | None, preset: str, work: Path,
                progress: Callable[[str, float], None]) -> Path:
    """Continue the avatar folder ``avatar`` (a copy; see :meth:`App.refine`) to ``preset``'s
    schedule (``core.adapt`` with ``resume``: each stage goes on from the step it reached)."""
    from core.train.adapt import adapt

    return adapt(processed, avatar, prior, app_presets()[preset], progress=progress,
                 resume=True, work=work)


def render_gpu(avatar_dir: Path, audio: Path, out: Path, max_seconds: float,
               duration: float | None, progress: Any, t0: float, lo: float, hi: float,
               label: str, stop: threading.Event | None, device: str = "auto",
               synthetic_voice: str | None = None):
    """Render the avatar speaking ``audio`` (core.synthesize: marked frames and metadata) on
    ``device``; frames come back to the CPU for encoding. ``synthetic_voice``: the audio was
    synthesized from text by that voice, and the mark and metadata say so."""
    from core.synthesize import synthesize

    return synthesize(avatar_dir, audio, out, max_seconds=max_seconds, duration=duration,
                      progress=JobProgress(progress, t0).stage(lo, hi, label, stop),
                      device=device, synthetic_voice=synthetic_voice)


def render_stream_gpu(avatar_dir: Path, audio: Path, out: Path, stream_dir: Path,
                      max_seconds: float, progress: Any, t0: float, lo: float, hi: float,
                      label: str, stop: threading.Event | None, device: str = "auto"):
    """:func:`render_gpu`, streamed: yields each short segment's path as soon as it is
    written, then the result (core.synthesize.stream_synthesis). Closing it stops the
    rendering."""
    from core.synthesize import stream_synthesis

    yield from stream_synthesis(avatar_dir, audio, out, stream_dir, max_seconds=max_seconds,
                                progress=JobProgress(progress, t0).stage(lo, hi, label, stop),
                                device=device)


def frame_words(res: Any) -> str:
    """What a render's frames are, for the status line: ``1920x1080 (your full frame)`` or
    the crop, with the reason when a full frame could not be made."""
    w, h = res.size
    if res.frame == "full":
        return f"{w}x{h} (your full frame)"
    why = f"; {res.note}" if res.note else ""
    return f"{w}x{h} (the face crop{why})"


def need_avatar(avatar_id: str | None) -> None:
    """Refuse a Talk request that names no avatar, with what to do instead."""
    if not avatar_id:
        raise gr.Error("Choose one of your avatars (make one in the Create avatar tab).",
                       title="No avatar chosen", print_exception=False)


def render_error(e: Exception, where: str) -> Exception:
    """What a Talk render's failure shows the visitor: the avatar gone or being deleted, a
    refused input, a render stopped by Delete, or an internal error logged under ``where``
    with a reference."""
    if isinstance(e, NotFound):
        return gr.Error(NOT_FOUND, title="Avatar not found", print_exception=False)
    if isinstance(e, Busy):
        return gr.Error(BEING_DELETED, title="Avatar being deleted", print_exception=False)
    if isinstance(e, InputError):
        return user_error(e)
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, Cancelled):
        return gr.Error("Rendering was stopped: the avatar was deleted.", title="Stopped",
                        print_exception=False)
    return internal_error(where, "Rendering failed unexpectedly (reference {ref}).")[1]


def bench_gpu(clips: list[Path], train: list[float], methods: list[str], out: Path,
              prior: Path | None, progress: Any, stop: threading.Event | None,
              device: str = "auto"):
    """The evaluation harness in quick mode, on ``device``."""
    from eval.benchmark import run_benchmark
    from eval.bench.cells import BenchmarkConfig

    return run_benchmark(clips, train, methods, out, prior, quick=True,
                         progress=JobProgress(progress).stage(0.0, 1.0, "Benchmark", stop),
                         config=BenchmarkConfig(quick=True, device=device))


@dataclass
class App:
    """The app's state shared by all visitors: config, store, owner tokens, job locks and
    Gradio's cache folder (where served copies go)."""

    cfg: AppConfig
    store: AvatarStore
    owners: OwnerTokens
    cache_root: Path
    locks: AvatarLocks = field(default_factory=AvatarLocks)
    blocks: Any = None          # the gr.Blocks, for the fair-queue count
    token_block: Any = None     # its gr.BrowserState holding the owner token
    _received: dict[tuple[str, str], float] = field(default_factory=dict)
    refines: dict[str, str] = field(default_factory=dict)  # avatar id -> refine state shown

    def __post_init__(self) -> None:
        # ZeroGPU wants its GPU functions decorated once, before launch
        self.zero_gpu = on_zero_gpu()
        self._adapt_gpu = gpu_task(self.cfg.gpu_adapt_s)(adapt_gpu)
        self._render_gpu = gpu_task(self.cfg.gpu_render_s)(render_gpu)
        self._render_stream_gpu = gpu_task(self.cfg.gpu_render_s)(render_stream_gpu)
        self._bench_gpu = gpu_task(self.cfg.gpu_bench_s)(bench_gpu)

    # -- helpers ----------------------------------------------------------------------
    def owner(self, token: Any) -> str:
        """The caller's token if this server issued it, else a fresh one (which owns
        nothing yet)."""
        return self.owners.check(token) or self.owners.issue()

    def _stop_arg(self, stop: threading.Event) -> threading.Event | None:
        return None if self.zero_gpu else stop

    def serve(self, path: Path, tie_to: Path) -> str:
        """Copy a private file into a fresh random folder in Gradio's cache (served from
        there as is) and tie that folder to the avatar or job folder ``tie_to``."""
        d = self.cache_root / f"instag-{secrets.token_hex(16)}"
        d.mkdir(mode=0o700, parents=True)
        dst = d / path.name
        shutil.copyfile(path, dst)
        self.store.attach(tie_to, dst)
        return str(dst)

    def sweep(self) -> None:
        """Remove expired avatars and jobs (skipping avatars a job is using) with their
        copies in the cache, and cache folders older than the expiry."""
        try:
            n = self.store.sweep(in_use=self.locks.in_use) + self.store.sweep_external()
            cutoff = time.time() - 86400.0  # admission stamps never used (job refused)
            for k, t in list(self._received.items()):
                if t < cutoff:
                    self._received.pop(k, None)
            if n:
                log.info("expiry sweep removed %d folders", n)
        except Exception:  # never let the sweeper die
            log.exception("expiry sweep failed")

    def avatar_choices(self, token: str | None) -> list[tuple[str, str]]:
        out = []
        for r in self.store.list(token):
            left_h = max(0.0, (r.expires - time.time()) / 3600)
            state = self.refines.get(r.id) or r.preset or "?"
            out.append((f"{r.name} ({state}; created {iso(r.created)[11:16]} UTC, expires in "
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

    # -- admission (runs when a job is submitted, before it is queued) -------------------
    def _admit(self, token: Any, n_inputs: int, stamp: str | None = None) -> list[dict]:
        """Refuse a job when the owner already has ``cfg.max_waiting`` jobs waiting;
        remember when the request arrived (the consent time of ``stamp``'s upload)."""
        now = time.time()
        ok = [gr.validate(True, "")] * n_inputs
        owner = self.owners.check(token)
        if owner and stamp:
            self._received[(owner, stamp)] = now
        if self.blocks is not None and self.token_block is not None:
            n = waiting_jobs(self.blocks, self.token_block, token)
            if n >= self.cfg.max_waiting:
                ok[0] = gr.validate(False, f"You already have {n} jobs waiting in the queue "
                                    f"(the limit is {self.cfg.max_waiting} per visitor). "
                                    "Wait for one to start, then submit again.")
        return ok

    def admit_create(self, video: Any, consent: Any, name: Any, token: Any) -> list[dict]:
        return self._admit(token, 4, str(video) if consent is True and video else None)

    def admit_talk(self, avatar_id: Any, audio: Any, token: Any) -> list[dict]:
        return self._admit(token, 3)

    def admit_talk_text(self, avatar_id: Any, text: Any, voice: Any, rate: Any,
                        token: Any) -> list[dict]:
        return self._admit(token, 5)

    def admit_benchmark(self, source: Any, avatar_id: Any, clip: Any, consent: Any,
                        seconds: Any, methods: Any, token: Any) -> list[dict]:
        return self._admit(token, 7, str(clip) if consent is True and clip else None)

    def _consent_time(self, token: str, upload: str) -> float:
        """When the request with this upload and consent reached the server (now if the
        admission step did not see it)."""
        return self._received.pop((token, upload), time.time())

    # -- callbacks --------------------------------------------------------------------
    def refresh(self, token: Any):
        """Page load / refresh: (token, talk picker, benchmark picker, table)."""
        token = self.owner(token)
        return (token, *self._pick_updates(token))

    def create(self, video: str | None, consent: Any, name: str, token: Any,
               progress=gr.Progress()):
        """Create tab: consent, cheap checks, preprocessing (CPU), adaptation (GPU),
        preview (GPU). The upload's cache folder is held for the request (identical uploads
        share it; see ``AvatarStore.holding``)."""
        with self.store.holding(video):
            return self._create(video, consent, name, token, progress)

    def _create(self, video: str | None, consent: Any, name: str, token: Any, progress: Any):
        from core.data.preprocess import PreprocessConfig, check_media

        token = self.owner(token)
        if consent is not True:  # only a real True: the strings "false", "no" do not count
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
        consent_time = self._consent_time(token, str(video))
        try:
            check_media(clip, PreprocessConfig(min_seconds=self.cfg.min_clip_s,
                                               max_seconds=self.cfg.max_clip_s))
        except InputError as e:
            self.store.discard_external(clip)  # an unusable upload is not kept
            raise user_error(e) from None
        try:
            prior = resolve_prior(self.cfg)
        except InputError as e:
            raise user_error(e) from None
        try:
            rec = self.store.begin(token, clip, name or "", preset=self.cfg.preset,
                                   consent_time=consent_time)
        except PermissionError as e:
            raise gr.Error(str(e), title="Too many avatars", print_exception=False) from None
        folder = self.store.folder(rec)
        self.store.attach(folder, clip)  # the upload's cached copy goes with the avatar
        with self.locks.use(rec.id) as stop:
            try:
                jp = JobProgress(progress)
                a, b = stage_shares(self.cfg)
                work = folder / "work"
                processed = preprocess_work(self.cfg, folder / rec.clip_file, folder / "clip",
                                            jp.stage(0.0, a, "Preprocessing", stop))
                avatar = self._adapt_gpu(processed, folder / "avatar", prior, self.cfg.preset,
                                         work / "adapt", progress, jp.t0, a, b,
                                         self._stop_arg(stop), self.cfg.device)
                self._render_gpu(avatar, folder / rec.clip_file, folder / "preview.mp4",
                                 self.cfg.max_clip_s, self.cfg.preview_s, progress, jp.t0, b,
                                 1.0, "Preview", self._stop_arg(stop), self.cfg.device)
                shutil.rmtree(work, ignore_errors=True)
            except InputError as e:
                self.store.abort(rec, e.code)
                raise user_error(e) from None
            except gr.Error as e:  # a user error raised inside a GPU call
                self.store.abort(rec, "input")
                raise e from None
            except Cancelled:
                self.store.abort(rec, "stopped")
                raise gr.Error("Creating the avatar was stopped; nothing was kept.",
                               title="Stopped", print_exception=False) from None
            except Exception:
                ref, err = internal_error("create", "Creating the avatar failed unexpectedly "
                                          "(reference {ref}). Nothing was kept; try again or "
                                          "with another clip.")
                self.store.abort(rec, f"internal error {ref}")
                raise err from None
            self.store.finish(rec)
            preview = self.serve(folder / "preview.mp4", folder)
        status = (f"**Avatar “{rec.name}” is ready.** It expires at {iso(rec.expires)} "
                  f"(or delete it in the Talk tab). The preview re-speaks the first "
                  f"{self.cfg.preview_s:g} s of your clip's audio.")
        if refine_target(rec.preset):
            status += (f" It was made with the short `{rec.preset}` schedule; **Refine** in the "
                       f"Talk tab continues it to the full `{refine_target(rec.preset)}` "
                       "schedule in the background while you use it.")
        return (token, status, preview, *self._pick_updates(token, rec.id))

    def talk(self, avatar_id: str | None, audio: str | None, token: Any,
             progress=gr.Progress()):
        """``/talk`` (API): render the chosen avatar speaking the audio; returns the whole
        mp4 (video and download) once it is written."""
        for item in self._talk(avatar_id, audio, token, progress, streamed=False):
            if not isinstance(item, Path):
                token, served, status = item
        return token, served, served, status

    def talk_stream(self, avatar_id: str | None, audio: str | None, token: Any,
                    progress=gr.Progress()):
        """Talk tab's Render button: the same render, streamed. Yields (token, segment for
        the streaming player :class:`demo.streaming.SegmentVideo`, whole-mp4 player,
        download, status): each short segment as it is written, the whole mp4 last (player
        and download). A client that goes away closes this generator, which stops the
        rendering and frees the avatar."""
        # Gradio ends the player's stream on the pass after the last yield
        with contextlib.closing(self._talk(avatar_id, audio, token, progress)) as items:
            for item in items:
                if isinstance(item, Path):
                    yield token, str(item), gr.update(), gr.update(), gr.update()
                else:
                    token, served, status = item
                    yield token, gr.update(), served, served, status

    def _talk(self, avatar_id: str | None, audio: str | None, token: Any, progress: Any,
              streamed: bool = True):
        """Yields each stream segment's path (``streamed``), then (token, served mp4,
        status)."""
        token = self.owner(token)
        if not audio:
            raise gr.Error("Upload or record some audio first.", title="No audio",
                           print_exception=False)
        need_avatar(avatar_id)
        try:
            rec = self.store.get(token, avatar_id)
            with self.locks.use(rec.id) as stop:
                folder = self.store.folder(rec)
                self.store.attach(folder, audio)  # the upload goes with the avatar
                out = self.store.render_path(rec)  # inside the avatar: deleted with it
                done = False

                def whole():
                    yield self._render_gpu(folder / "avatar", Path(audio), out,
                                           self.cfg.max_audio_s, None, progress, time.time(),
                                           0.0, 1.0, "Rendering", self._stop_arg(stop),
                                           self.cfg.device)

                stream = self._render_stream_gpu(
                    folder / "avatar", Path(audio), out, out.parent / "stream",
                    self.cfg.max_audio_s, progress, time.time(), 0.0, 1.0, "Rendering",
                    self._stop_arg(stop), self.cfg.device) if streamed else whole()
                try:
                    for item in stream:
                        if isinstance(item, Path):
                            yield item
                        else:
                            res = item
                    served = self.serve(res.path, folder)
                    done = True
                finally:
                    stream.close()  # a closed talk (client gone) stops the rendering here
                    if not done:  # failed or closed: no half-made render folder
                        shutil.rmtree(out.parent, ignore_errors=True)
        except Exception as e:
            raise render_error(e, "talk") from None
        status = (f"{res.frames} frames of {frame_words(res)} ({res.seconds:.1f} s of audio), "
                  f"rendered at {res.render_fps:.1f} frames/s. Every frame is marked "
                  "“AI-generated”; so is the file's metadata.")
        yield token, served, status

    def talk_text(self, avatar_id: str | None, text: Any, voice: Any, rate: Any, token: Any,
                  progress=gr.Progress()):
        """Talk tab, typed text: an offline voice speaks it (in the app process, before the
        avatar is touched: bad text, voice or rate is refused with nothing written), then
        the avatar is rendered speaking that audio. Returns the video, its download and the
        synthesized speech."""
        token = self.owner(token)
        try:
            said = speech.speak(text, str(voice) if voice else None, rate=rate if rate is not None
                                else 1.0)
        except InputError as e:
            raise user_error(e) from None
        need_avatar(avatar_id)
        try:
            rec = self.store.get(token, avatar_id)
            with self.locks.use(rec.id) as stop:
                folder = self.store.folder(rec)
                out = self.store.render_path(rec)  # inside the avatar: deleted with it
                try:
                    wav = said.write_wav(out.with_name("speech.wav"))
                    res = self._render_gpu(folder / "avatar", wav, out, self.cfg.max_audio_s,
                                           None, progress, time.time(), 0.0, 1.0, "Rendering",
                                           self._stop_arg(stop), self.cfg.device,
                                           synthetic_voice=said.voice.description)
                    served = self.serve(res.path, folder)
                    served_speech = self.serve(wav, folder)
                except BaseException:
                    shutil.rmtree(out.parent, ignore_errors=True)  # no half-made renders
                    raise
        except Exception as e:
            raise render_error(e, "talk_text") from None
        status = (f"{res.frames} frames of {frame_words(res)} ({res.seconds:.1f} s of speech "
                  "by the synthetic voice "
                  f"{said.voice.name}, {said.voice.language}), rendered at "
                  f"{res.render_fps:.1f} frames/s. Every frame is marked “AI-generated, "
                  "synthetic voice”; so is the file's metadata.")
        return token, served, served, served_speech, status

    def delete(self, avatar_id: str | None, token: Any):
        """Delete one of this owner's avatars and all its files, after stopping (and
        waiting for) any job using it."""
        token = self.owner(token)
        try:
            rec = self.store.get(token, avatar_id)
            with self.locks.exclusive(rec.id, self.cfg.delete_wait_s) as stopped:
                rec = self.store.delete(token, avatar_id)
                self.refines.pop(rec.id, None)
        except NotFound:
            raise gr.Error(NOT_FOUND, title="Avatar not found", print_exception=False) from None
        except Busy:
            raise gr.Error("That avatar is still busy with a job that could not be stopped "
                           f"within {self.cfg.delete_wait_s:g} s; nothing was deleted. Try "
                           "again in a minute.", title="Avatar busy",
                           print_exception=False) from None
        note = (f" {stopped} running job(s) on it were stopped first." if stopped else "")
        return (token, f"Deleted “{rec.name}” and all its files.{note}",
                *self._pick_updates(token))

    def refine(self, avatar_id: str | None, token: Any):
        """Talk tab: continue the chosen avatar to the full schedule in the background
        (:meth:`_refine_job`). Refused with a message when it already runs, is not
        refinable, or the avatar is being deleted; returns at once."""
        from contextlib import ExitStack

        token = self.owner(token)
        try:
            rec = self.store.get(token, avatar_id)
        except NotFound:
            raise gr.Error(NOT_FOUND, title="Avatar not found", print_exception=False) from None
        target = refine_target(rec.preset)
        if target is None:
            raise gr.Error(f"“{rec.name}” was made with the `{rec.preset or 'unknown'}` "
                           "schedule, which has nothing left to refine (Refine continues "
                           "avatars made with a short schedule such as `fast`).",
                           title="Nothing to refine", print_exception=False)
        if self.zero_gpu:
            raise gr.Error("Refine runs in the background on a CPU server; this server "
                           "adapts on ZeroGPU.", title="Not available here",
                           print_exception=False)
        job = ExitStack()
        try:
            stop = job.enter_context(self.locks.use(rec.id))
            job.enter_context(self.locks.refining(rec.id, self.cfg.max_refines))
        except Busy:
            job.close()
            raise gr.Error(BEING_DELETED, title="Avatar being deleted",
                           print_exception=False) from None
        except Refused as e:
            job.close()
            raise gr.Error(str(e), title="Refine not started", print_exception=False) from None
        self.refines[rec.id] = f"{rec.preset}, refining"
        threading.Thread(target=self._refine_job, args=(rec, target, stop, job),
                         name=f"instag-refine-{rec.id[:8]}", daemon=True).start()
        status = (f"Refining “{rec.name}” to the `{target}` schedule in the background. It "
                  "keeps working meanwhile (Talk uses the current version until the refined "
                  "one is complete); Refresh the list to see how far it is.")
        return (token, status, *self._pick_updates(token, rec.id))

    def _refine_job(self, rec: AvatarRecord, target: str, stop: threading.Event,
                    job: Any) -> None:
        """The background part of :meth:`refine` (holds the avatar's use and refine slot
        until it ends). The avatar is copied to ``refine/avatar``, continued there, and put
        in place of ``avatar/`` only when complete, while no job reads it; a refine that is
        stopped (Delete) or fails leaves the avatar as it was and removes its work."""
        folder = self.store.folder(rec)
        rdir = folder / "refine"
        try:
            shutil.rmtree(rdir, ignore_errors=True)
            rdir.mkdir()

            def progress(text: str, frac: float) -> None:
                if stop.is_set():
                    raise Cancelled("stopped: the avatar is being deleted")
                self.refines[rec.id] = f"{rec.preset}, refining {100 * frac:.0f} %"

            processed = folder / "clip"
            if not (processed / "manifest.json").is_file():  # avatars made before it was kept
                processed = preprocess_work(self.cfg, folder / rec.clip_file, rdir / "clip",
                                            progress)
            shutil.copytree(folder / "avatar", rdir / "avatar")
            refine_work(processed, rdir / "avatar", resolve_prior(self.cfg), target,
                        rdir / "work", progress)
            with self.locks.swapping(rec.id, self.cfg.delete_wait_s):
                self.store.replace_avatar(rec, rdir / "avatar", target)
            self.refines.pop(rec.id, None)
        except Cancelled:
            self.refines.pop(rec.id, None)
        except Busy:
            self.refines[rec.id] = (f"{rec.preset}; refine not applied: the avatar stayed "
                                    "busy, try again")
        except InputError as e:
            self.refines[rec.id] = f"{rec.preset}; refine failed: {e.problem}"
        except Exception:
            ref, _ = internal_error("refine", "")
            self.refines[rec.id] = f"{rec.preset}; refine failed (reference {ref})"
        finally:
            shutil.rmtree(rdir, ignore_errors=True)
            job.close()

    def benchmark(self, source: str, avatar_id: str | None, clip: str | None, consent: Any,
                  seconds: list, methods: list, token: Any, progress=gr.Progress()):
        """Benchmark tab: the evaluation harness in quick mode."""
        token = self.owner(token)
        if source == "created avatar":
            try:
                rec = self.store.get(token, avatar_id)
                with self.locks.use(rec.id) as stop:
                    return self._benchmark(self.store.folder(rec) / rec.clip_file,
                                           Path(rec.source_name).stem, rec.id, None, seconds,
                                           methods, token, progress, stop)
            except NotFound:
                raise gr.Error(NOT_FOUND, title="Avatar not found",
                               print_exception=False) from None
            except Busy:
                raise gr.Error(BEING_DELETED, title="Avatar being deleted",
                               print_exception=False) from None
        if consent is not True:
            raise gr.Error(CONSENT_NEEDED, title="Consent needed", duration=None,
                           print_exception=False)
        if not clip:
            raise gr.Error("Upload a clip first.", title="No clip", print_exception=False)
        with self.store.holding(clip):
            return self._benchmark(Path(clip), Path(clip).stem, None,
                                   self._consent_time(token, str(clip)), seconds, methods,
                                   token, progress, threading.Event())

    def _benchmark(self, path: Path, stem: str, linked: str | None, consent_time: float | None,
                   seconds: list, methods: list, token: str, progress: Any,
                   stop: threading.Event):
        from core.data.preprocess import PreprocessConfig, check_media

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
            if linked is None and e.code not in ("wrong_weights", "too_short"):
                self.store.discard_external(path)  # an unusable upload is not kept
            if e.code == "too_short":
                e.fix = (f"Training on {train[-1]:g} s and scoring {test_s:g} s held out needs "
                         f"a clip of at least {train[-1] + test_s:g} s: choose fewer training "
                         "seconds or a longer clip.")
            raise user_error(e) from None
        out = self.store.job_dir(token, "benchmark", avatar=linked)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:40] or "clip"
        work_clip = out / f"{safe}{path.suffix.lower() or '.mp4'}"
        try:
            shutil.copyfile(path, work_clip)
            if linked is None:  # an upload: its cached copy and consent go with the job
                self.store.attach(out, path)
                self.store.write_consent(out, self.store.owner_of(out), work_clip, path.name,
                                         consent_time, job=out.name)
            res = self._bench_gpu([work_clip], train, list(methods), out / "results", prior,
                                  progress, self._stop_arg(stop), self.cfg.device)
            work_clip.unlink(missing_ok=True)
            plots = [self.serve(Path(p), out) for p in res.plots]
            csv = self.serve(Path(res.csv_path), out)
        except BaseException as e:
            self.store.discard_job(out)  # a failed job leaves nothing behind
            if isinstance(e, InputError):
                raise user_error(e) from None
            if isinstance(e, (gr.Error, KeyboardInterrupt, SystemExit)):
                raise
            if isinstance(e, Cancelled):
                raise gr.Error("The benchmark was stopped: the avatar was deleted.",
                               title="Stopped", print_exception=False) from None
            raise internal_error("benchmark", "The benchmark failed unexpectedly "
                                 "(reference {ref}).")[1] from None
        return token, res.table_md, plots, csv


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
    from gradio.utils import get_upload_folder

    cfg = cfg or AppConfig.from_env()
    cache_root = Path(get_upload_folder()).resolve()  # Gradio's uploads and served files
    cache_root.mkdir(parents=True, exist_ok=True)
    store = AvatarStore(cfg.data_root, cfg.expiry_s, cfg.max_avatars,
                        external_roots=[cache_root])
    app = App(cfg, store, OwnerTokens(store.root), cache_root)
    app.sweep()
    if start_sweeper:
        def loop() -> None:
            while True:
                time.sleep(cfg.sweep_minutes * 60)
                app.sweep()

        threading.Thread(target=loop, name="instag-expiry", daemon=True).start()

    acfg = app_presets()[cfg.preset]
    methods, train_seconds = _benchmark_options()
    limits = (f"**Clip:** {cfg.min_clip_s:g}–{cfg.max_clip_s:g} s, at most {cfg.max_upload_mb} MB, "
              f"{', '.join(t.lstrip('.') for t in CLIP_TYPES[:5])} or mpg. One face, looking at "
              f"the camera, speaking; only the first {acfg.seconds:g} s are used. "
              f"Preset **{cfg.preset}** ({acfg.res} px, {acfg.total_steps} steps). "
              f"Avatars expire after {cfg.expiry_hours:g} h.")
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="InsTaG talking head", theme=theme, analytics_enabled=False) as demo:
        token = gr.BrowserState(None, storage_key="instag-owner",
                                secret=app.owners.browser_secret())
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
                                    "the time the server received it, this version and the "
                                    "clip's hash are stored with the avatar, and a minimal "
                                    "entry stays in the log after deletion.</small>")
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
                        text = gr.Textbox(label=f"…or type what it says (at most "
                                          f"{speech.MAX_CHARS} characters; an offline "
                                          "synthetic voice speaks it)", lines=3,
                                          max_length=speech.MAX_CHARS, elem_id="talk-text")
                        with gr.Row():
                            voice_names = speech.voices() or [speech.VOICES[speech.DEFAULT_VOICE]]
                            voice = gr.Dropdown(label="Voice / language",
                                                choices=[(v.label, v.name) for v in voice_names],
                                                value=voice_names[0].name, elem_id="talk-voice")
                            rate = gr.Slider(speech.MIN_RATE, speech.MAX_RATE, value=1.0,
                                             step=0.05, label="Speaking rate (1 = normal)",
                                             elem_id="talk-rate")
                        say_btn = gr.Button("Render from text", variant="primary",
                                            elem_id="talk-text-btn")
                        with gr.Row():
                            refresh_btn = gr.Button("Refresh list", size="sm")
                            delete_btn = gr.Button("Delete this avatar", variant="stop", size="sm",
                                                   elem_id="delete-btn")
                            refine_btn = gr.Button("Refine (full schedule, in the background)",
                                                   size="sm", elem_id="refine-btn")
                        talk_status = gr.Markdown(elem_id="talk-status")
                    with gr.Column():
                        # Render: plays the segments while the rest renders (the whole mp4
                        # goes to the download box)
                        talk_live = SegmentVideo(label="Result, playing while it renders "
                                                 "(AI-generated)", interactive=False,
                                                 streaming=True, autoplay=True,
                                                 show_download_button=False,
                                                 elem_id="talk-live")
                        # the whole mp4 (Render once it is done, Render from text, /talk)
                        talk_video = gr.Video(label="Result (AI-generated)", interactive=False,
                                              elem_id="talk-video")
                        talk_api = gr.Button(visible=False)  # /talk for API clients
                        talk_file = gr.File(label="Download mp4", interactive=False,
                                            elem_id="talk-file")
                        talk_speech = gr.Audio(label="Synthesized voice (AI-generated)",
                                               type="filepath", interactive=False,
                                               elem_id="talk-speech")
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
                            f"(others wait in a queue that shows your place; at most "
                            f"{cfg.max_waiting} waiting jobs per visitor); adaptation preset "
                            f"`{cfg.preset}`.")

        picks = [pick, bench_pick, table]
        heavy = dict(concurrency_limit=cfg.concurrency, concurrency_id="heavy")
        demo.load(app.refresh, [token], [token, *picks], api_name=False, queue=False)
        refresh_btn.click(app.refresh, [token], [token, *picks], api_name="list_avatars",
                          queue=False)
        create_btn.click(app.create, [video, consent, name, token],
                         [token, status, preview, *picks], api_name="create",
                         validator=app.admit_create, **heavy)
        # the button streams; /talk (API) returns the whole mp4 once it is written
        talk_btn.click(app.talk_stream, [pick, audio, token],
                       [token, talk_live, talk_video, talk_file, talk_status], api_name=False,
                       validator=app.admit_talk, **heavy)
        talk_api.click(app.talk, [pick, audio, token], [token, talk_video, talk_file, talk_status],
                       api_name="talk", validator=app.admit_talk, **heavy)
        say_btn.click(app.talk_text, [pick, text, voice, rate, token],
                      [token, talk_video, talk_file, talk_speech, talk_status],
                      api_name="talk_text", validator=app.admit_talk_text, **heavy)
        delete_btn.click(app.delete, [pick, token], [token, talk_status, *picks],
                         api_name="delete_avatar", queue=False)
        refine_btn.click(app.refine, [pick, token], [token, talk_status, *picks],
                         api_name="refine_avatar", queue=False)
        source.change(lambda src: (gr.update(visible=src == "created avatar"),
                                   gr.update(visible=src != "created avatar"),
                                   gr.update(visible=src != "created avatar")),
                      [source], [bench_pick, bench_clip, bench_consent], api_name=False,
                      queue=False)
        bench_btn.click(app.benchmark, [source, bench_pick, bench_clip, bench_consent,
                                        bench_seconds, bench_methods, token],
                        [token, bench_table, bench_plots, bench_csv], api_name="benchmark",
                        validator=app.admit_benchmark, **heavy)
    demo.queue(max_size=cfg.max_queue, default_concurrency_limit=cfg.concurrency)
    app.blocks, app.token_block = demo, token
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
