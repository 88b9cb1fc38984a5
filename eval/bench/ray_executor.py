"""Independent tasks (benchmark cells) as Ray tasks, on a local Ray instance or a cluster.

:func:`run_cells_ray` runs ``fn(task) -> dict`` for every task, each as one Ray task with
explicit resources, and returns the result dicts in task order. It knows nothing about what a
task computes; three conventions let the work travel without a shared filesystem:

* ``inputs``: names of ``Path`` fields of the task (a dataclass) that are read on the worker
  (a processed-clip folder, a checkpoint file). The driver packs each distinct path once
  (an uncompressed tar of a folder, or the file's bytes) into the object store; every worker
  node unpacks it once into a content-addressed cache
  (``{tempdir}/instag-ray-inputs/{sha256[:16]}/{name}``, kept for later runs of the same
  inputs; safe to delete when no run is active) and the task runs with that local path.
* ``out_field``: the ``Path`` field of the output root. The worker runs the task with a fresh
  empty folder there; when ``fn`` returns, the entries matching the ``returns`` glob patterns
  (relative to the root; hidden names such as work folders never travel) come back with the
  result: files as bytes, folders as tar archives. The driver writes them under the task's
  real root atomically (:mod:`core.atomic`), in the order of the patterns (put the pattern
  of the completion marker last), rewrites strings in the result that name the worker's
  folder to name the real root, and only then calls ``on_result``.
* ``fn(task, progress)``: when ``fn`` has a ``progress`` parameter it receives a
  ``progress(text, fraction)`` callback; the driver prints the latest text of every running
  task every ``line_seconds`` (per-task progress lines), beside one progress callback over
  all tasks (done / running / failed, time left).

Faults: a task whose worker dies (killed, out of memory, node lost) is retried
``max_retries`` times, then reported failed with the reason; an exception raised by ``fn``
is not retried (it would raise again) and is reported failed at once. A failed task's
record comes from ``on_failure(task, exc)``. On Ctrl-C the tasks still running are
cancelled; results already written stay.

Resources: ``cpus_per_task`` CPUs (also the worker's torch thread count), one GPU per task
when the cluster has GPUs (``gpus_per_task=None``), optional memory reservation. ADDRESS
``None`` starts a local instance (``local_cpus`` CPUs, no dashboard) and stops it at the end;
``"auto"`` joins the cluster started with ``ray start`` on this machine; ``"HOST:PORT"`` a
remote head. A running instance (``ray.init`` done by the caller) is used as it is.
"""
from __future__ import annotations

import _thread
import argparse
import dataclasses
import hashlib
import inspect
import io
import os
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core.atomic import atomic_folder, write_bytes
from core.project import PROJECT_ROOT, python_path
from core.progress import ProgressFn, format_seconds

T = TypeVar("T")
#: Never shipped with the code (outputs, caches, VCS).
CODE_EXCLUDES = [".git", "runs", "out", "tmp", "**/__pycache__", "**/*.mp4", ".pytest_cache"]


@dataclass(frozen=True)
class RayOptions:
    """Where and how tasks run.

    Attributes:
        address: None = start a local Ray instance; "auto" = the cluster started on this
            machine with ``ray start``; "HOST:PORT" = a remote head.
        cpus_per_task: CPUs reserved per task (also the worker's torch threads); 1.
        gpus_per_task: GPUs per task; None = 1 when the cluster has a GPU, else 0.
        memory_gb_per_task: memory reserved per task (GiB) for Ray's scheduler; None = none.
        max_retries: re-runs of a task whose worker died before it is reported failed; 2.
        local_cpus: CPUs of a local instance (None = all of this machine's).
        local_object_store_gb: object store of a local instance (GiB); 1.
        line_seconds: a progress line per running task at most this often (s); 5.
        init_timeout_s: give up when Ray has not started / connected after this (s); 120.
        ship_code: on a cluster, upload the project folder as the workers' working directory
            (Ray ``runtime_env``); False when every node has the project on its path.
    """

    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float | None = None
    memory_gb_per_task: float | None = None
    max_retries: int = 2
    local_cpus: int | None = None
    local_object_store_gb: float = 1.0
    line_seconds: float = 5.0
    init_timeout_s: float = 120.0
    ship_code: bool = True


class TaskLost(RuntimeError):
    """A task's worker died on every attempt (killed, out of memory, node lost)."""


# ============================================================================ command line
def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and the per-task resource options."""
    g = parser.add_argument_group("Ray (run cells as Ray tasks)")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run cells on Ray: no ADDRESS = a local instance, 'auto' = the cluster "
                        "started with 'ray start', HOST:PORT = a remote head")
    g.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per cell (1)")
    g.add_argument("--ray-gpus", type=float, default=None,
                   help="GPUs per cell (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--ray-memory-gb", type=float, default=None, help="memory reserved per cell")
    g.add_argument("--ray-retries", type=int, default=2, help="retries of a cell whose worker died")
    g.add_argument("--ray-local-cpus", type=int, default=None,
                   help="CPUs of a local instance (default: all)")


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    """The :class:`RayOptions` of parsed :func:`add_ray_arguments` flags (None without --ray)."""
    if args.ray is None:
        return None
    return RayOptions(address=None if args.ray == "local" else args.ray,
                      cpus_per_task=args.ray_cpus, gpus_per_task=args.ray_gpus,
                      memory_gb_per_task=args.ray_memory_gb, max_retries=args.ray_retries,
                      local_cpus=args.ray_local_cpus)


# ============================================================================ packing
def pack_path(path: Path) -> bytes:
    """A folder as an uncompressed tar of its contents, or a file's bytes."""
    path = Path(path)
    if path.is_file():
        return path.read_bytes()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist: it cannot be sent to the workers")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(path.rglob("*")):
            tar.add(p, arcname=p.relative_to(path).as_posix(), recursive=False)
    return buf.getvalue()


def unpack_folder(data: bytes, dest: Path) -> None:
    """Extract a :func:`pack_path` archive into ``dest`` (an existing folder)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")


@dataclass(frozen=True)
class _Input:
    """One task field's packed input: the field, the original name, folder or file, hash."""

    field: str
    name: str
    is_dir: bool
    sha: str


def _local_copy(inp: _Input, data: bytes) -> Path:
    """The node-local unpacked copy of an input (made once per node, under a file lock)."""
    import fcntl

    root = Path(tempfile.gettempdir()) / "instag-ray-inputs" / inp.sha[:16]
    dest = root / inp.name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.exists():
            if inp.is_dir:
                with atomic_folder(dest) as tmp:
                    unpack_folder(data, tmp)
            else:
                write_bytes(dest, data)
    return dest


def _collect(root: Path, patterns: Sequence[str]) -> list[tuple[str, bool, bytes]]:
    """``(relative path, is folder, bytes)`` of the entries under ``root`` matching the
    patterns, in pattern order; hidden names (temporary and work folders) are skipped."""
    seen: set[str] = set()
    out = []
    for pat in patterns:
        for p in sorted(root.glob(pat)):
            rel = p.relative_to(root).as_posix()
            if rel in seen or any(part.startswith(".") for part in Path(rel).parts):
                continue
            seen.add(rel)
            out.append((rel, p.is_dir(), pack_path(p)))
    return out


def _remap(x: Any, old: str, new: str) -> Any:
    """``x`` with every string that starts with ``old`` starting with ``new`` instead."""
    if isinstance(x, dict):
        return {k: _remap(v, old, new) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_remap(v, old, new) for v in x)
    if isinstance(x, str) and x.startswith(old):
        return new + x[len(old):]
    return x


# ============================================================================ worker side
class _Board:
    """Ray actor (0 CPUs) where workers post ``(key, kind, text, fraction, time)`` events
    ('start' with the worker's host and pid, 'progress'); the driver drains them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, float, float]] = []

    def post(self, key: str, kind: str, text: str, fraction: float, when: float) -> None:
        self.events.append((key, kind, text, fraction, when))

    def drain(self) -> list[tuple[str, str, str, float, float]]:
        ev, self.events = self.events, []
        return ev


@dataclass(frozen=True)
class _Plan:
    """What the worker wrapper does around ``fn`` (same for every task of a run)."""

    inputs: tuple[_Input, ...]
    out_field: str | None
    returns: tuple[str, ...]
    threads: int
    post_seconds: float


def _run_on_worker(task: Any, fn: Callable, key: str, plan: _Plan, board: Any,
                   *blobs: bytes) -> dict:
    """The Ray task: local inputs, a private output folder, ``fn``, the outputs to return.
    Returns ``{"result": dict, "files": [(rel, is_dir, bytes)], "worker_out": str,
    "peak_rss_mb": float}`` (the worker process's peak resident memory so far, MiB)."""
    import resource
    import shutil
    import socket

    def post(kind: str, text: str, frac: float) -> None:
        try:
            board.post.remote(key, kind, text, frac, time.time())
        except Exception:  # progress is best effort: never sinks a task
            pass

    post("start", f"{socket.gethostname()} pid {os.getpid()}", 0.0)
    try:
        import torch

        torch.set_num_threads(plan.threads)
    except ImportError:
        pass
    changes: dict[str, Any] = {}
    for inp, data in zip(plan.inputs, blobs):
        changes[inp.field] = _local_copy(inp, data)
    out = None
    if plan.out_field is not None:
        out = Path(tempfile.mkdtemp(prefix="instag-ray-out-"))
        changes[plan.out_field] = out
    local_task = dataclasses.replace(task, **changes) if changes else task
    latest: list[tuple[str, float] | None] = [None]
    stop = threading.Event()

    def progress(text: str, frac: float) -> None:
        latest[0] = (text, float(frac))

    def poster() -> None:  # the latest report every post_seconds, when it changed
        sent = None
        while not stop.wait(plan.post_seconds):
            now = latest[0]
            if now is not None and now != sent:
                post("progress", *now)
                sent = now

    threading.Thread(target=poster, daemon=True).start()
    try:
        takes_progress = "progress" in inspect.signature(fn).parameters
        result = fn(local_task, progress=progress) if takes_progress else fn(local_task)
        files = _collect(out, plan.returns) if out is not None else []
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB -> MiB
        return {"result": result, "files": files, "worker_out": str(out) if out else None,
                "peak_rss_mb": peak}
    finally:
        stop.set()
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)


# ============================================================================ driver side
def init_ray(opts: RayOptions) -> bool:
    """Start a local Ray instance or join a cluster as ``opts`` says (nothing when Ray is
    already initialised); True when this call did so (then the caller ends it with
    ``ray.shutdown()``: a local instance stops, a cluster is only left). Raises RuntimeError naming the fix when Ray is not up within
    ``init_timeout_s`` or no cluster answers at the address."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no reporting
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                          "logging_level": logging.WARNING, "configure_logging": True}
    if opts.address is None:  # "local": a new instance even when a cluster runs here
        kw.update(address="local", num_cpus=opts.local_cpus,
                  object_store_memory=int(opts.local_object_store_gb * 2**30),
                  runtime_env={"env_vars": {"PYTHONPATH": python_path()}})
    else:
        kw.pop("include_dashboard")  # a property of the running cluster
        kw["address"] = opts.address
        if opts.ship_code:
            kw["runtime_env"] = {"working_dir": str(PROJECT_ROOT), "excludes": CODE_EXCLUDES}
    done, fired = threading.Event(), threading.Event()

    def watchdog() -> None:
        if not done.wait(opts.init_timeout_s):
            fired.set()
            _thread.interrupt_main()

    if threading.current_thread() is threading.main_thread():
        threading.Thread(target=watchdog, daemon=True).start()
    try:
        ray.init(**kw)
    except KeyboardInterrupt:
        if not fired.is_set():
            raise
        ray.shutdown()
        where = "a local instance" if opts.address is None else f"the cluster at {opts.address!r}"
        raise RuntimeError(f"Ray: no answer from {where} within {opts.init_timeout_s:.0f} s; "
                           "check 'ray status' (and that the head's port is reachable)") from None
    except ConnectionError as e:
        raise RuntimeError(f"no Ray cluster at {opts.address!r} ({e}); start one with "
                           "'ray start --head' or omit the address for a local instance") from None
    finally:
        done.set()
    return True


def _resources(opts: RayOptions) -> dict[str, Any]:
    """Ray ``.options()`` of one task, checked against the cluster's nodes."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    max_cpus = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
    max_gpus = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
    gpus = opts.gpus_per_task
    if gpus is None:
        gpus = 1.0 if max_gpus >= 1 else 0.0
    if opts.cpus_per_task > max_cpus:
        raise ValueError(f"a task asks for {opts.cpus_per_task:g} CPUs but the largest Ray node "
                         f"has {max_cpus:g}; lower --ray-cpus (or add bigger nodes)")
    if gpus > max_gpus:
        raise ValueError(f"a task asks for {gpus:g} GPUs but the largest Ray node has "
                         f"{max_gpus:g}; lower --ray-gpus")
    kw: dict[str, Any] = {"num_cpus": opts.cpus_per_task, "num_gpus": gpus,
                          "max_retries": opts.max_retries, "retry_exceptions": False}
    if opts.memory_gb_per_task:
        kw["memory"] = int(opts.memory_gb_per_task * 2**30)
    return kw


def _default_log(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _default_failure(task: Any, exc: BaseException) -> dict:
    return {"status": f"failed: {exc.__class__.__name__}: {exc}"}


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _ship_inputs(tasks: Sequence[Any], fields: Sequence[str]) -> list[tuple[list[_Input], list]]:
    """Per task, its packed inputs and their object refs (one object per distinct path)."""
    import ray

    packed: dict[str, tuple[_Input, Any]] = {}
    out = []
    for t in tasks:
        ins, refs = [], []
        for f in fields:
            p = getattr(t, f)
            if p is None:
                continue
            key = str(Path(p).resolve())
            if key not in packed:
                data = pack_path(Path(p))
                inp = _Input(f, Path(p).name, Path(p).is_dir(), hashlib.sha256(data).hexdigest())
                packed[key] = (inp, ray.put(data))
            inp, ref = packed[key]
            ins.append(dataclasses.replace(inp, field=f))
            refs.append(ref)
        out.append((ins, refs))
    return out


def _write_back(got: dict, root: Path | None) -> dict:
    """Write a finished task's returned files under ``root`` (in order, atomically); its
    result with the worker's folder renamed to ``root``."""
    for rel, is_dir, data in got["files"]:
        if is_dir:
            with atomic_folder(root / rel) as tmp:
                unpack_folder(data, tmp)
        else:
            write_bytes(root / rel, data)
    row = got["result"]
    if root is not None and got["worker_out"]:
        row = _remap(row, got["worker_out"], str(root))
    return row


class _Tracker:
    """Driver-side state: attempts, live text and fraction of every task, counts, lines."""

    def __init__(self, names: list[str], weights: list[float], opts: RayOptions,
                 say: Callable[[str], None]) -> None:
        n = len(names)
        self.names, self.w, self.opts, self.say = names, weights, opts, say
        self.index = {name: i for i, name in enumerate(names)}
        self.attempts, self.frac = [0] * n, [0.0] * n
        self.text, self.said, self.last_line = [""] * n, [""] * n, [0.0] * n
        self.started_at = [0.0] * n
        self.finished = [False] * n
        self.running: set[int] = set()
        self.done_w, self.n_ok, self.n_failed = 0.0, 0, 0
        self.t0 = time.monotonic()

    def on_events(self, events: list[tuple[str, str, str, float, float]]) -> None:
        """Worker posts: a start (a retry when not the first), progress."""
        now = time.monotonic()
        for key, kind, text, frac, _ in events:
            i = self.index.get(key)
            if i is None or self.finished[i]:
                continue
            if kind == "start":
                self.attempts[i] += 1
                self.running.add(i)
                self.frac[i], self.started_at[i], self.last_line[i] = 0.0, now, now
                again = (f" (retry {self.attempts[i] - 1} of {self.opts.max_retries}: the "
                         "previous worker was lost)") if self.attempts[i] > 1 else ""
                self.say(f"[{_now()}] {key}: started on {text}{again}")
            else:
                self.frac[i], self.text[i] = frac, text
        for i in sorted(self.running):  # changed text every line_seconds, else a heartbeat
            wait = self.opts.line_seconds * (1 if self.text[i] != self.said[i] else 6)
            if self.text[i] and now - self.last_line[i] >= wait:
                self.say(f"[{_now()}] {self.text[i]} ({self.frac[i]:.0%})")
                self.last_line[i], self.said[i] = now, self.text[i]

    def on_done(self, i: int, row: dict, ok: bool, peak_mb: float | None) -> None:
        self.finished[i] = True
        self.running.discard(i)
        self.done_w += self.w[i]
        self.n_ok += ok
        self.n_failed += not ok
        took = format_seconds(time.monotonic() - self.started_at[i]) if self.started_at[i] else "?"
        peak = f", worker peak {peak_mb / 1024:.2f} GiB" if peak_mb else ""
        self.say(f"[{_now()}] {self.names[i]}: {row.get('status', 'done')} ({took}{peak})")

    def status(self) -> tuple[str, float]:
        """``('cells: 3/8 done, 2 running, 0 failed, 4:10 left', fraction)``."""
        live = sum(self.w[i] * min(1.0, self.frac[i]) for i in self.running)
        f = (self.done_w + live) / (sum(self.w) or 1.0)
        el = time.monotonic() - self.t0
        left = format_seconds(el * (1 - f) / f) if f > 0.01 else "?"
        return (f"cells: {self.n_ok + self.n_failed}/{len(self.names)} done, "
                f"{len(self.running)} running, {self.n_failed} failed, {left} left", f)


def run_cells_ray(tasks: Sequence[T], fn: Callable[..., dict], options: RayOptions = RayOptions(),
                  *, inputs: Sequence[str] = (), out_field: str | None = None,
                  returns: Sequence[str] = (),
                  on_result: Callable[[T, dict], None] | None = None,
                  on_failure: Callable[[T, BaseException], dict] | None = None,
                  progress: ProgressFn | None = None,
                  log: Callable[[str], None] | None = None,
                  names: Sequence[str] | None = None,
                  weights: Sequence[float] | None = None) -> list[dict]:
    """Run ``fn`` on every task as a Ray task; the result dicts in task order.

    Args:
        tasks: picklable dataclass instances.
        fn: ``fn(task) -> dict`` or ``fn(task, progress) -> dict`` (importable by the workers).
        options: address and resources (:class:`RayOptions`).
        inputs: names of ``Path | None`` task fields sent to the workers (module doc).
        out_field: name of the task's output-root field (module doc); None = no files back.
        returns: glob patterns (relative to the output root) of what comes back, written in
            this order.
        on_result: ``on_result(task, result)`` on the driver after each task (also failed
            ones), its files already written.
        on_failure: the record of a failed task, ``on_failure(task, exc)`` (called inside the
            ``except`` block, so ``traceback.format_exc()`` works); default
            ``{"status": "failed: ..."}``.
        progress: ``progress(text, fraction)`` over all tasks: done / running / failed and
            time left.
        log: per-task lines (start, progress every ``line_seconds``, retry, end); default:
            stderr above any tqdm bar.
        names: display names of the tasks (default ``task 1``, ...); unique.
        weights: relative cost of each task for the fraction and time left (default equal).
    """
    import ray
    from ray.exceptions import RayError, RayTaskError

    n = len(tasks)
    if n == 0:
        return []
    report = progress or (lambda s, f: None)
    names = list(names) if names is not None else [f"task {i + 1}" for i in range(n)]
    if len(set(names)) != n:
        raise ValueError("task names must be unique (they key the progress of each task)")
    track = _Tracker(names, [float(x) for x in weights] if weights is not None else [1.0] * n,
                     options, log or _default_log)
    fail = on_failure or _default_failure
    started_here = init_ray(options)
    board = None
    refs: dict[Any, int] = {}
    try:
        res_kw = _resources(options)
        board = ray.remote(num_cpus=0)(_Board).remote()
        remote = ray.remote(_run_on_worker)
        post_s = max(0.5, min(2.0, options.line_seconds / 2))
        threads = max(1, int(options.cpus_per_task))
        for i, (t, (ins, blobs)) in enumerate(zip(tasks, _ship_inputs(tasks, inputs))):
            plan = _Plan(tuple(ins), out_field, tuple(returns), threads, post_s)
            refs[remote.options(name=names[i], **res_kw).remote(t, fn, names[i], plan, board,
                                                                 *blobs)] = i
        cluster = ray.cluster_resources()
        track.say(f"[{_now()}] {n} task(s) on Ray: {res_kw['num_cpus']:g} CPU, "
                  f"{res_kw['num_gpus']:g} GPU each; cluster {cluster.get('CPU', 0):g} CPU, "
                  f"{cluster.get('GPU', 0):g} GPU")
        results: list[dict] = [{} for _ in range(n)]
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            if ready:  # everything else that is ready too
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
            try:
                track.on_events(ray.get(board.drain.remote(), timeout=10))
            except RayError:  # the board is lost (its node died): no live lines
                pass
            for ref in ready:
                i = refs.pop(ref)
                got: dict = {}
                try:
                    got = ray.get(ref)
                    row = _write_back(got, Path(getattr(tasks[i], out_field)) if out_field
                                      else None)
                except RayTaskError as e:  # fn raised: not retried (it would raise again)
                    row = fail(tasks[i], e.cause if isinstance(e.cause, BaseException) else e)
                except RayError as e:  # the worker died on every attempt
                    first = (str(e).strip().splitlines() or [""])[0]
                    try:
                        raise TaskLost(f"the worker died on all {max(track.attempts[i], 1)} "
                                       f"attempt(s) ({options.max_retries} retries): "
                                       f"{e.__class__.__name__}: {first}") from e
                    except TaskLost as lost:
                        row = fail(tasks[i], lost)
                results[i] = row
                track.on_done(i, row, bool(got), got.get("peak_rss_mb"))
                if on_result is not None:
                    on_result(tasks[i], row)
            report(*track.status())
        return results
    except BaseException:  # Ctrl-C or a driver error: stop what still runs
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except RayError:
                pass
        raise
    finally:
        if board is not None:
            ray.kill(board)
        if started_here:
            ray.shutdown()
