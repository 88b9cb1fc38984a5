"""Wall time of the same benchmark cells run three ways: ``--jobs 1``, ``--jobs 2`` and
``--ray`` (a local Ray instance with 2 CPUs), side by side in one run.

    python -m bench.benchmark_runners [--clips CLIP...] [--train-seconds S...]
                                      [--methods M...] [--ray-cpus N]

Default: 4 quick cells = 'scratch' (tiny preset adaptation, 70 steps at 96 px, then scoring)
on may_5s and man_suit_5s with 2 and 3 s of training. The clips are preprocessed once
beforehand (not timed); every runner writes to its own fresh folder, one torch thread per
cell everywhere. Wall time of ``--ray`` includes starting and stopping the Ray instance
(also printed alone). The CSV numbers of every runner are compared with ``--jobs 1``. On a
machine shared with other heavy processes the figures move a lot between runs: the load
average before each runner is printed beside it.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import tempfile
import time
from pathlib import Path

import torch

from eval.benchmark import BenchmarkConfig, prepare_clip, run_benchmark
from eval.bench.ray_executor import RayOptions, init_ray

ROOT = Path(__file__).resolve().parents[1]
CLIPS = (ROOT / ".." / "shared" / "data" / "clips").resolve()
#: CSV columns that measure time, not results.
TIMING = {"adapt_minutes", "render_fps", "cell_seconds", "computed_at"}


def _numbers(csv_path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in csv.DictReader(io.StringIO(csv_path.read_text()))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", nargs="+", type=Path,
                   default=[CLIPS / "may_5s.mp4", CLIPS / "man_suit_5s.mp4"])
    p.add_argument("--train-seconds", nargs="+", type=float, default=[2.0, 3.0])
    p.add_argument("--methods", nargs="+", default=["scratch"])
    p.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    a = p.parse_args()
    torch.set_num_threads(1)  # --jobs 1 runs cells in this process: one thread, as a worker
    with tempfile.TemporaryDirectory(prefix="bench-runners-") as tmp:
        root = Path(tmp)
        base = BenchmarkConfig(quick=True, seed=0, videos=False)
        clips = [prepare_clip(c, root / "prep", base, a.train_seconds) for c in a.clips]
        n = len(clips) * len(a.train_seconds) * len(a.methods)
        print(f"{n} quick cells: {', '.join(a.methods)} x {len(clips)} clips "
              f"({', '.join(c.name for c in clips)}) x train {a.train_seconds} s; "
              f"{os.cpu_count()} cores")
        ray_opts = RayOptions(local_cpus=a.ray_cpus)
        t0 = time.perf_counter()
        init_ray(ray_opts)
        import ray

        ray.shutdown()
        ray_alone = time.perf_counter() - t0
        runners = [("--jobs 1", BenchmarkConfig(quick=True, seed=0, videos=False, jobs=1)),
                   ("--jobs 2", BenchmarkConfig(quick=True, seed=0, videos=False, jobs=2)),
                   (f"--ray (local, {a.ray_cpus} CPUs)",
                    BenchmarkConfig(quick=True, seed=0, videos=False, ray=ray_opts))]
        rows = []
        for k, (label, cfg) in enumerate(runners):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            r = run_benchmark(clips, a.train_seconds, a.methods, root / f"out{k}", None,
                              config=cfg)
            wall = time.perf_counter() - t0
            ok = sum(x.get("status") == "ok" for x in r.rows)
            busy = sum(float(x.get("cell_seconds", 0.0)) for x in r.rows)
            rows.append((label, wall, ok, load, busy, _numbers(r.csv_path)))
    ref = rows[0][1]
    print(f"\n{'runner':<24} {'wall s':>8} {'vs --jobs 1':>12} {'cell s sum':>11} "
          f"{'cells ok':>9} {'load before':>12} {'same numbers':>13}")
    for label, wall, ok, load, busy, nums in rows:
        same = "yes" if nums == rows[0][5] else "NO"
        print(f"{label:<24} {wall:>8.1f} {ref / wall:>11.2f}x {busy:>11.1f} {ok:>5}/{n:<3} "
              f"{load:>12.1f} {same:>13}")
    print("cell s sum: the cells' own wall seconds added up (above the runner's wall time when "
          "cells overlap; each cell slows down when the cores are shared)")
    print(f"\nRay start + stop alone ({a.ray_cpus} CPUs, no dashboard): {ray_alone:.1f} s "
          "(included in the --ray wall time)")


if __name__ == "__main__":
    main()
