"""Benchmark cells on Ray (``eval.bench.ray_executor``): a local Ray instance capped at 2 CPUs gives
the same numbers as local processes and stops the instance it started; a killed worker is retried, a cell whose worker dies on
every attempt is recorded as failed and a re-run completes only that cell; Ctrl-C keeps the
finished cells. Real clip: the first 5 s of may_5s, quick preset (96 px, 3 s training, 2 s
test). Methods: the cheap baselines 'retrieval' and 'loop' (seconds per cell), to keep CI
short; the same comparison with adapted cells ('scratch', tiny preset) is the "same numbers"
column of ``python -m bench.benchmark_runners``."""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from eval import benchmark as bm
from eval.benchmark import BenchmarkConfig, cell_name, run_benchmark, run_cell
from eval.bench.cells import read_render, render_path
from eval.bench.methods import LABELS
from eval.bench.ray_executor import (
    RayOptions,
    _collect,
    init_ray,
    _write_back,
    add_ray_arguments,
    pack_path,
    ray_options,
    unpack_folder,
)

ray = pytest.importorskip("ray")

TRAIN = [3.0]
#: Columns that measure time, not results.
TIMING = {"adapt_minutes", "render_fps", "cell_seconds", "computed_at"}


def _rows(csv_path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in csv.DictReader(io.StringIO(csv_path.read_text()))]


@pytest.fixture(scope="module")
def local(clips_dir: Path, tmp_path_factory) -> dict:
    """The reference: the quick benchmark without Ray, cells in two local processes."""
    out = tmp_path_factory.mktemp("local")
    r = run_benchmark([clips_dir / "may_5s.mp4"], TRAIN, ["retrieval", "loop"], out, None,
                      config=BenchmarkConfig(quick=True, seed=0, jobs=2, videos=False))
    return {"out": out, "result": r, "clip": out / "clips" / "may_5s"}


def test_ray_run_matches_local_processes(local: dict, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    cfg = BenchmarkConfig(quick=True, seed=0, ray=RayOptions(local_cpus=2, line_seconds=2))
    r = run_benchmark([local["clip"]], TRAIN, ["retrieval", "loop"], out, None, config=cfg)
    assert not ray.is_initialized()  # the local instance it started is stopped
    want, got = _rows(local["result"].csv_path), _rows(r.csv_path)
    assert [x["status"] for x in got] == ["ok", "ok"]
    assert got == want  # every metric, exactly
    # the outputs travelled back and sit where a local run writes them
    for m in ("retrieval", "loop"):
        name = cell_name("may_5s", m, 3.0)
        assert render_path(out, name).is_file()
        row = json.loads((out / "cells" / f"{name}.json").read_text())
        ref = json.loads((local["out"] / "cells" / f"{name}.json").read_text())
        assert row["status"] == "ok" and row["psnr"] == ref["psnr"]
        # the very same pixels (renders are stored lossless): e.g. the same frames retrieved
        assert np.array_equal(read_render(render_path(out, name)),
                              read_render(render_path(local["out"], name)))
    assert not list(out.rglob(".*"))  # no temporary or work files travelled
    assert (out / "videos" / "may_5s_3s_side_by_side.mp4").is_file()


class KillCell:
    """``run_cell`` whose worker process is SIGKILLed at the cell's first progress report
    (mid-run) on its first ``kills[cell]`` attempts; every attempt leaves a marker file."""

    def __init__(self, kills: dict[str, int], marks: Path) -> None:
        self.kills, self.marks = kills, marks

    def __call__(self, task, progress=None) -> dict:
        name = cell_name(task.stem, task.method, task.seconds)
        n = len(list(self.marks.glob(f"{name}.*")))
        (self.marks / f"{name}.{n}").touch()
        die = n < self.kills.get(name, 0)

        def hook(text: str, frac: float) -> None:
            if die:
                os.kill(os.getpid(), signal.SIGKILL)
            if progress is not None:
                progress(text, frac)

        return run_cell(task, hook)


@pytest.fixture(scope="module")
def running():
    """A local Ray instance (2 CPUs) started by the tests, for the runs below: a running
    instance is used as it is and left running (the first test covers a run that starts
    and stops its own). Started after that test, stopped at the end of the module."""
    assert not ray.is_initialized()
    assert init_ray(RayOptions(local_cpus=2))
    yield
    ray.shutdown()


def test_killed_worker_is_retried_and_rerun_completes_only_the_missing_cell(
        local: dict, running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out, marks = tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    cfg = BenchmarkConfig(quick=True, seed=0, videos=False,
                          ray=RayOptions(local_cpus=2, max_retries=1))
    _killed_then_rerun(local, out, marks, cfg, monkeypatch, capsys)


def _killed_then_rerun(local: dict, out: Path, marks: Path, cfg: BenchmarkConfig,
                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    loop, retr = cell_name("may_5s", "loop", 3.0), cell_name("may_5s", "retrieval", 3.0)
    # loop: killed once, then fine; retrieval: killed on both attempts
    monkeypatch.setattr(bm, "run_cell", KillCell({loop: 1, retr: 2}, marks))
    r = run_benchmark([local["clip"]], TRAIN, ["retrieval", "loop"], out, None, config=cfg)
    monkeypatch.undo()
    assert ray.is_initialized()  # the instance the test started stays up for the re-run
    log = capsys.readouterr().err
    rows = {x["method"]: x for x in r.rows}
    assert rows["loop"]["status"] == "ok"
    assert f"{loop}: started on" in log and "(retry 1 of 1: the previous worker was lost)" in log
    assert len(list(marks.glob(f"{loop}.*"))) == 2
    assert rows["retrieval"]["status"].startswith("failed: TaskLost: the worker died on all 2")
    assert len(list(marks.glob(f"{retr}.*"))) == 2
    assert (out / "cells" / f"{loop}.json").is_file()
    assert not (out / "cells" / f"{retr}.json").exists()
    assert LABELS["loop"] in r.table_md and "(failed: TaskLost" in r.table_md
    before = (out / "cells" / f"{loop}.json").read_text()

    msgs: list[str] = []
    r2 = run_benchmark([local["clip"]], TRAIN, ["retrieval", "loop"], out, None, config=cfg,
                       progress=lambda s, f: msgs.append(s))
    log = capsys.readouterr().err
    assert "1 of 2 cells already finished" in msgs
    assert "1 task(s) on Ray" in log and f"{retr}: started on" in log and loop not in log
    assert len(list(marks.glob("*"))) == 4  # the injected function did not run again
    assert (out / "cells" / f"{loop}.json").read_text() == before  # untouched
    assert [x["status"] for x in r2.rows] == ["ok", "ok"]
    ref = next(x for x in local["result"].rows if x["method"] == "retrieval")
    assert {x["method"]: x for x in r2.rows}["retrieval"]["psnr"] == ref["psnr"]


def test_ctrl_c_keeps_finished_cells(local: dict, running, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # both CPUs per task: one cell at a time on the 2-CPU instance
    cfg = BenchmarkConfig(quick=True, seed=0, videos=False, ray=RayOptions(cpus_per_task=2.0))

    def progress(text: str, frac: float) -> None:
        if text.startswith("cells: 1/2 done"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_benchmark([local["clip"]], TRAIN, ["retrieval", "loop"], out, None, config=cfg,
                      progress=progress)
    assert ray.is_initialized()  # the instance the run found is left running
    done = list((out / "cells").glob("*.json"))
    assert len(done) == 1 and json.loads(done[0].read_text())["status"] == "ok"
    name = done[0].stem
    assert render_path(out, name).is_file()
    assert not list(out.rglob(".*.tmp"))  # nothing half-written


def test_packing_round_trip_skips_hidden_entries(local: dict, tmp_path: Path) -> None:
    clip = local["clip"]
    dest = tmp_path / "copy"
    dest.mkdir()
    unpack_folder(pack_path(clip), dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in clip.iterdir())
    for p in clip.iterdir():
        assert (dest / p.name).read_bytes() == p.read_bytes()
    # what travels back from a worker's output folder: matches, in pattern order, not hidden
    root = tmp_path / "worker_out"
    for rel in ("avatars/a/model.bin", "avatars/.a.work/state.bin", "cells/a.json",
                "cells/.a.json.x.tmp", "cache/c.npz"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    got = _collect(root, ["avatars/*", "cells/*"])
    assert [(rel, is_dir) for rel, is_dir, _ in got] == [("avatars/a", True), ("cells/a.json", False)]
    back = tmp_path / "back"
    back.mkdir()
    unpack_folder(got[0][2], back)
    assert (back / "model.bin").read_bytes() == b"avatars/a/model.bin"
    assert got[1][2] == b"cells/a.json"
    # the driver writes them under the real root and renames the worker's folder in the result
    real = tmp_path / "real"
    row = _write_back({"files": got, "worker_out": str(root),
                       "result": {"avatar": str(root / "avatars" / "a"), "psnr": 20.5,
                                  "curve": [{"path": str(root / "curves")}]}}, real)
    assert row == {"avatar": str(real / "avatars" / "a"), "psnr": 20.5,
                   "curve": [{"path": str(real / "curves")}]}
    assert (real / "avatars" / "a" / "model.bin").read_bytes() == b"avatars/a/model.bin"
    assert (real / "cells" / "a.json").read_bytes() == b"cells/a.json"
    assert sorted(p.name for p in real.iterdir()) == ["avatars", "cells"]
    with pytest.raises(FileNotFoundError, match="cannot be sent"):
        pack_path(tmp_path / "missing")


def test_command_line_options() -> None:
    p = argparse.ArgumentParser()
    add_ray_arguments(p)
    assert ray_options(p.parse_args([])) is None
    assert ray_options(p.parse_args(["--ray"])).address is None
    o = ray_options(p.parse_args(["--ray", "auto", "--ray-cpus", "2", "--ray-retries", "3"]))
    assert (o.address, o.cpus_per_task, o.max_retries, o.gpus_per_task) == ("auto", 2.0, 3, None)
