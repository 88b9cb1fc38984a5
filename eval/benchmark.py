"""The benchmark: InsTaG vs the same model from scratch vs simple baselines, with audio-ablation
controls, on the held-out protocol of METHOD.md section 8.

``python -m eval.benchmark --clips CLIP... [--train-seconds 5 10] [--methods ...]
[--prior NAME|PATH|none] [--jobs N | --ray [ADDRESS]] [--out runs/benchmark] [--rescore] [--quick]
[--adapt-set KEY=VALUE ...] [--full-res]``

``--full-res``: also score every stored render put back into frames of the source's size
(:mod:`eval.bench.full_res`: head PSNR / SSIM, sharpness ratio, seam-band PSNR), written to
``full_res.md`` and ``full_res.csv``.

One *cell* = (clip, method, training seconds), computed by :func:`eval.bench.cells.run_cell`
(layout of ``--out`` in :mod:`eval.bench.cells`); methods and controls in :mod:`eval.bench.methods`;
scores in :mod:`eval.bench.scoring`; tables in :mod:`eval.bench.tables`; plots in
:mod:`eval.bench.plots`;
side-by-side videos in :mod:`eval.bench.videos`. This module only prepares clips, hands the
pending cells to an executor and writes the tables, plots and videos.

Test span: the same for every training length of a clip: its last ``test_seconds`` (12 s,
quick 2 s), or all frames after the longest training part when the clip is shorter
(obama_20s with 5 and 10 s training: the last 10 s). Evaluation resolution = the preset's.

Executors: a function ``executor(tasks) -> iterable of (task, row)`` that runs
:func:`eval.bench.cells.run_cell_safe` on each task in any order (:func:`local_executor`: this
process, or ``--jobs N`` local processes; :func:`ray_cell_executor`: Ray tasks on a local
instance or a cluster, ``--ray [ADDRESS]``). Cells are independent except that
``mean-mouth`` renders the 'instag' avatar, so cells run in two waves (everything else,
then ``mean-mouth``).

Finished cells are never recomputed (delete ``cells/{cell}.json``, or pass ``--rescore``
to recompute every score from the stored renders). Exit status 1 when a requested cell
was skipped or failed; the cells are named on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from core.atomic import write_text
from core.device import DEVICE_HELP, resolve_device
from core.errors import InputError
from core.raster.render import RASTER_CHOICES, RASTER_HELP
from core.progress import ProgressBar, ProgressFn
from core.weights import DEFAULT_PRIOR  # used by 'instag' and 'mean-mouth' unless another is given
from eval.bench.cells import (BenchmarkConfig, CellTask, cell_name, finished_row, failed_row,
                        run_cell, run_cell_safe, stale_reason)
from eval.bench.methods import ADAPTED, METHODS, check_methods
from eval.bench.ray_executor import RayOptions, add_ray_arguments, ray_options, run_cells_ray

__all__ = ["METHODS", "TRAIN_SECONDS", "BenchmarkConfig", "BenchmarkResult", "Executor",
           "local_executor", "prepare_clip", "ray_cell_executor", "run_benchmark", "main"]

#: Training lengths offered by the app (quick runs on short clips); the paper uses 5 / 10 / 20.
TRAIN_SECONDS: tuple[float, ...] = (3.0, 5.0, 10.0)

Executor = Callable[[Sequence[CellTask]], Iterable[tuple[CellTask, dict]]]


@dataclass
class BenchmarkResult:
    """table_md: the markdown of ``results.md``; csv_path: ``results.csv``; plots: PNG paths;
    rows: one flat dict per cell (the CSV columns plus ``curve``)."""

    table_md: str
    csv_path: Path
    plots: list[Path]
    rows: list[dict]


# ============================================================================ executors
def _worker(task: CellTask) -> dict:
    """A cell in a worker process: one torch thread, progress as log lines."""
    import torch

    torch.set_num_threads(1)
    with ProgressBar(interval=60.0, lines=True) as bar:
        return run_cell_safe(task, lambda s, f: bar(s, f))


def local_executor(jobs: int = 1, progress: ProgressFn | None = None) -> Executor:
    """Run cells in this process (``jobs=1``, with ``progress``) or in ``jobs`` spawned
    processes (each logs its own progress lines)."""
    def run(tasks: Sequence[CellTask]) -> Iterator[tuple[CellTask, dict]]:
        if jobs <= 1 or len(tasks) < 2:
            for t in tasks:
                yield t, run_cell_safe(t, progress)
            return
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_worker, t): t for t in tasks}
            for fu in as_completed(futs):
                yield futs[fu], fu.result()
    return run


def ray_cell_executor(options: RayOptions, progress: ProgressFn | None = None) -> Executor:
    """Run cells as Ray tasks (:mod:`eval.bench.ray_executor`): the processed clip and the prior
    travel through the object store, each cell runs in a private folder on its worker, and
    its avatar, curve, renders and cell file come back and are written under ``OUT`` by the
    driver (no shared filesystem). Dead workers are retried ``options.max_retries`` times;
    a cell that raises, or whose workers all died, gets a 'failed: ...' row."""
    def run(tasks: Sequence[CellTask]) -> Iterator[tuple[CellTask, dict]]:
        tasks = list(tasks)
        got = run_cells_ray(
            tasks, run_cell, options, inputs=("clip_dir", "prior"), out_field="out",
            returns=("avatars/*", "curves/*", "renders/*", "cells/*"), on_failure=failed_row,
            weights=[20.0 if t.method in ADAPTED else 1.0 for t in tasks],
            names=[t.name for t in tasks], progress=progress)
        yield from zip(tasks, got)
    return run


def parse_settings(items: Sequence[str]) -> dict:
    """``["mouth_code=false", "face_steps=700"]`` -> ``{"mouth_code": False, "face_steps": 700}``
    (values read as JSON, else kept as text)."""
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key:
            raise ValueError(f"{it!r} is not KEY=VALUE (e.g. mouth_code=false)")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


# ============================================================================ clips
def prepare_clip(clip: Path, out: Path, cfg: BenchmarkConfig, train_seconds: list[float],
                 progress: ProgressFn | None = None) -> Path:
    """The processed-clip folder of ``clip``: itself when it is one, else
    ``{out}/clips/{stem}`` (preprocessed once; reused when present)."""
    clip = Path(clip)
    if clip.is_dir():
        if not (clip / "manifest.json").is_file():
            raise FileNotFoundError(f"{clip} is not a processed-clip folder (no manifest.json): "
                                    "pass a video or a folder made by `python -m core.preprocess`")
        return clip
    dest = out / "clips" / clip.stem
    if (dest / "manifest.json").is_file():
        return dest
    from core.data.preprocess import PreprocessConfig
    from core.preprocess import preprocess_clip

    max_frames = None
    if cfg.quick:
        max_frames = int(round((max(train_seconds) + cfg.test_seconds) * 25))
    pcfg = PreprocessConfig(res=cfg.clip_res, max_frames=max_frames,
                            min_seconds=min(4.0, (max_frames or 100) / 25))
    report = progress or (lambda s, f: None)
    preprocess_clip(clip, dest, pcfg, progress=lambda s, f: report(f"{clip.stem}: preprocessing: {s}", f))
    return dest


# ============================================================================ driver
def run_benchmark(clips: list[Path], train_seconds: list[float], methods: list[str],
                  out_dir: Path, prior: Path | str | None = DEFAULT_PRIOR, quick: bool = True,
                  progress: ProgressFn | None = None, preset: str = "cpu",
                  seed: int = 0, config: BenchmarkConfig | None = None,
                  executor: Executor | None = None) -> BenchmarkResult:
    """Run (or resume) the benchmark; finished cells are read back, never recomputed.

    Args:
        clips: raw videos or processed-clip folders.
        train_seconds: training lengths (s), e.g. [5, 10].
        methods: subset of :data:`eval.bench.methods.METHODS`.
        out_dir: output root (layout in :mod:`eval.bench.cells`).
        prior: prior for 'instag' / 'mean-mouth': a file or a ``weights/manifest.json``
            name (default: the shipped prior); None = no prior (those cells are skipped).
        quick: CI-sized run (tiny preset, 2 s test, 128 px clips).
        progress: ``progress(text, fraction)``.
        preset, seed: adaptation preset and seed (quick forces 'tiny').
        config: full settings (overrides quick / preset / seed when given).
        executor: runs the pending cells (default: :func:`ray_cell_executor` when
            ``config.ray`` is set, else :func:`local_executor` with ``config.jobs``).
    """
    cfg = config or BenchmarkConfig(preset=preset, quick=quick, seed=seed)
    out = Path(out_dir)
    report = progress or (lambda s, f: None)
    methods = check_methods(list(methods))
    train_seconds = [float(s) for s in train_seconds]
    if prior is not None:
        from core.weights import resolve_prior

        prior = resolve_prior(prior)
    out.mkdir(parents=True, exist_ok=True)

    clip_dirs: dict[str, Path] = {}  # serial: preprocessing is the memory peak
    for k, c in enumerate(clips):
        c = Path(c)
        report(f"preparing {c.name}", 0.0)
        d = prepare_clip(c, out, cfg, train_seconds,
                         lambda s, f, k=k: report(s, 0.05 * (k + f) / len(clips)))
        clip_dirs[d.name if c.is_dir() else c.stem] = d

    tasks = [CellTask(d, stem, m, s, tuple(train_seconds), out, prior, cfg)
             for stem, d in clip_dirs.items() for s in train_seconds for m in methods]
    weight = {t.name: (20.0 if t.method in ADAPTED else 1.0) for t in tasks}
    total, done = sum(weight.values()), 0.0
    rows: dict[str, dict] = {}
    pending: list[CellTask] = []
    for t in tasks:
        row = None if cfg.rescore else finished_row(t)
        if row is not None:
            rows[t.name] = row
            done += weight[t.name]
            continue
        f = out / "cells" / f"{t.name}.json"
        if f.is_file() and not cfg.rescore:
            why = stale_reason(json.loads(f.read_text()), t)
            report(f"{f.name} is out of date ({why}): recomputing it (avatar and up-to-date "
                   "renders are reused)", 0.05)
        pending.append(t)
    report(f"{len(rows)} of {len(tasks)} cells already finished", 0.05 + 0.85 * done / total)

    def frac() -> float:
        return 0.05 + 0.85 * min(1.0, done / total)

    def cell_progress(s: str, f: float) -> None:
        report(s, frac())

    run = executor or (ray_cell_executor(cfg.ray, cell_progress) if cfg.ray is not None
                       else local_executor(cfg.jobs, cell_progress))
    waves = [[t for t in pending if t.method != "mean-mouth"],
             [t for t in pending if t.method == "mean-mouth"]]
    for wave in waves:
        if not wave:
            continue
        for t, row in run(wave):
            rows[t.name] = row
            done += weight[t.name]
            report(f"{t.name}: {row['status']}", frac())

    all_rows = [rows[t.name] for t in tasks]
    return write_outputs(all_rows, methods, train_seconds, out, cfg, prior, clip_dirs, report)


def write_outputs(rows: list[dict], methods: list[str], train_seconds: list[float], out: Path,
                  cfg: BenchmarkConfig, prior: Path | None, clip_dirs: dict[str, Path],
                  report: ProgressFn) -> BenchmarkResult:
    """``results.md``, ``results.csv``, ``plots/*.png`` and (``cfg.videos``) the
    side-by-side videos of a run's rows."""
    from eval.bench.plots import metric_bars, psnr_vs_steps
    from eval.bench.tables import PUBLISHED_MD, results_table, write_csv
    from eval.bench.videos import side_by_side

    report("writing tables and plots", 0.9)
    header = (f"# Benchmark results\n\nPreset `{cfg.preset}`{' (quick)' if cfg.quick else ''}, "
              f"seed {cfg.seed}"
              + (f", adaptation settings {cfg.adapt_overrides}" if cfg.adapt_overrides else "")
              + f", evaluation at {cfg.eval_res} px, test span "
              f"{cfg.test_seconds:g} s (or all frames after the longest training part), "
              f"prior `{prior.name if prior else 'none'}`.\n\n")
    md = header + results_table(rows, methods, train_seconds) + "\n" + PUBLISHED_MD
    write_text(out / "results.md", md)
    csv_path = write_csv(rows, out / "results.csv")
    plots = [metric_bars(rows, methods, train_seconds, out / "plots" / "metrics.png"),
             psnr_vs_steps(rows, out / "plots" / "psnr_vs_steps.png")]
    if cfg.videos:
        combos = [(stem, s) for stem in clip_dirs for s in train_seconds]
        for k, (stem, s) in enumerate(combos):
            report(f"side-by-side video {stem} {s:g} s", 0.9 + 0.1 * k / len(combos))
            try:
                side_by_side(out, clip_dirs[stem], stem, s, methods, train_seconds, cfg)
            except Exception as e:  # a video never sinks the numbers
                report(f"side-by-side video {stem} {s:g} s failed: {e}", 0.9)
    report("done", 1.0)
    return BenchmarkResult(table_md=md, csv_path=csv_path, plots=plots, rows=rows)


def write_full_res(out: Path, clips: list[Path], methods: list[str],
                   train_seconds: list[float], cfg: BenchmarkConfig, stride: int = 1,
                   head: str = "stored", progress: ProgressFn | None = None) -> str:
    """Score the stored renders at the source's size (:mod:`eval.bench.full_res`, every
    ``stride``-th held-out frame; ``head='native'``: the avatars' heads drawn again at the
    crop box's own side); writes ``full_res.md`` / ``full_res.csv`` under ``out`` (with
    ``head='native'``: ``full_res_native.md`` / ``.csv``) and returns the table."""
    from eval.bench.full_res import full_res_markdown, full_res_rows, write_full_res_csv

    dirs = {(c.name if c.is_dir() else c.stem): (c if c.is_dir() else out / "clips" / c.stem)
            for c in clips}
    rows = full_res_rows(out, dirs, methods, [float(s) for s in train_seconds],
                         cfg.test_seconds, progress=progress, stride=stride, head=head)
    how = ("the adapted heads drawn again at the crop box's own side (up to 512 px)"
           if head == "native" else "the stored renders")
    md = ("# Scores at the source's resolution\n\nEach held-out render put back into the "
          "recorded frame's crop box at the source's size (long side at most 1920 px); "
          f"{how}; see eval/bench/full_res.py.\n\n" + full_res_markdown(rows))
    stem = "full_res_native" if head == "native" else "full_res"
    write_text(out / f"{stem}.md", md)
    write_full_res_csv(rows, out / f"{stem}.csv")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark",
                                description=__doc__.split("\n")[0])
    p.add_argument("--clips", nargs="+", required=True, help="videos or processed-clip folders")
    p.add_argument("--train-seconds", nargs="+", type=float, default=[5.0, 10.0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--prior", default=DEFAULT_PRIOR,
                   help=f"prior for 'instag' / 'mean-mouth': a file or a weights/manifest.json "
                        f"name (default: the shipped {DEFAULT_PRIOR}); 'none' skips them")
    p.add_argument("--out", default="runs/benchmark", help="output folder (resumable)")
    p.add_argument("--preset", default="cpu", help="adaptation preset: cpu | fast | gpu | tiny")
    p.add_argument("--quick", action="store_true", help="CI-sized run (tiny preset, 2 s test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-seconds", type=float, default=None, help="held-out span (12; quick 2)")
    p.add_argument("--curve-frames", type=int, default=None,
                   help="held-out frames scored per curve point (default 25; --quick 10)")
    p.add_argument("--curve-every", type=int, default=None, help="steps between curve points")
    p.add_argument("--curve-aperture", action="store_true",
                   help="score lip aperture r on the curve frames at every curve point")
    p.add_argument("--jobs", type=int, default=1, help="cells in parallel local processes")
    add_ray_arguments(p)
    p.add_argument("--rescore", action="store_true",
                   help="recompute every score from the stored renders (no adaptation or "
                        "rendering)")
    p.add_argument("--no-adapt", action="store_true",
                   help="do not adapt missing avatars: their cells are skipped")
    p.add_argument("--no-videos", action="store_true")
    p.add_argument("--no-landmarks", action="store_true",
                   help="skip the FaceMesh scores (aperture, LMD, AUE, sync)")
    p.add_argument("--syncnet", default=None, help="SyncNet weights (default: weights/ or env)")
    p.add_argument("--sync-expert", default=None, help="sync expert weights (default: shipped)")
    p.add_argument("--adapt-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="adaptation settings on top of the preset, for ablations "
                        "(e.g. mouth_code=false); use a separate --out per variant")
    p.add_argument("--full-res", action="store_true",
                   help="also score the renders at the source's size (full_res.md / .csv)")
    p.add_argument("--full-res-head", choices=("stored", "native"), default="stored",
                   help="with --full-res: stored (default) scores the renders at the "
                        "evaluation resolution resized into the box; native draws the "
                        "adapted heads again at the box's own side up to 512 px, as "
                        "full-frame Talk does on a GPU (full_res_native.md / .csv)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--raster", choices=RASTER_CHOICES, default="auto", help=RASTER_HELP)
    a = p.parse_args(argv)
    try:
        overrides = parse_settings(a.adapt_set)
    except ValueError as e:
        p.error(str(e))
    if a.ray is None:   # a Ray cell resolves 'auto' on its own worker
        try:
            resolve_device(a.device)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    prior = None if str(a.prior).lower() == "none" else a.prior
    cfg = BenchmarkConfig(preset=a.preset, quick=a.quick, seed=a.seed,
                          test_seconds=a.test_seconds, curve_frames=a.curve_frames,
                          curve_every=a.curve_every, curve_aperture=a.curve_aperture,
                          videos=not a.no_videos, jobs=a.jobs,
                          landmarks=not a.no_landmarks, syncnet=a.syncnet,
                          sync_expert=a.sync_expert, rescore=a.rescore,
                          adapt=not a.no_adapt, ray=ray_options(a), adapt_overrides=overrides,
                          device=a.device, raster=a.raster)
    with ProgressBar() as bar:
        last = [""]

        def progress(text: str, frac: float) -> None:
            bar(text, frac)
            head = text.split(":")[0]
            if head != last[0] and not text.startswith(head + ": adapting"):
                bar.write(text)  # cell-level events stay in the log
            last[0] = head

        r = run_benchmark([Path(c) for c in a.clips], a.train_seconds, a.methods,
                          Path(a.out), prior, quick=a.quick, progress=progress,
                          preset=a.preset, seed=a.seed, config=cfg)
    print(r.table_md)
    print(f"results: {r.csv_path}; plots: {', '.join(map(str, r.plots))}")
    if a.full_res:
        with ProgressBar() as bar:
            md = write_full_res(Path(a.out), [Path(c) for c in a.clips], a.methods,
                                a.train_seconds, cfg, head=a.full_res_head, progress=bar)
        print(md)
    bad = [row for row in r.rows if row.get("status") != "ok"]
    for row in bad:
        print(f"\n{row['clip']} {row['method']} {float(row['train_seconds']):g} s: "
              f"{row['status']}\n{row.get('traceback', '')}", file=sys.stderr)
    if bad:
        print(f"{len(bad)} of {len(r.rows)} requested cells were not computed (see above).",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
