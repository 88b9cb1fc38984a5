"""The benchmark in quick mode on a real clip: cells, outputs, resume, and
the baselines (retrieval, ping-pong loop, audio shifted by 0.4 s)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.dataset import ProcessedClip
from core.data.preprocess import PreprocessConfig, preprocess
from core.train.pretrain import PRESETS as PRETRAIN_PRESETS, pretrain
from eval import baselines as B
from eval.benchmark import BenchmarkConfig, run_benchmark
from eval.protocol import heldout_frames
from eval.sync import av_offset

TRAIN = 3.0
METHODS = ["instag", "scratch", "retrieval", "loop", "shifted"]


@pytest.fixture(scope="module")
def prior(clips_dir: Path, tmp_path_factory) -> Path:
    """A tiny prior from two other people (about 10 s)."""
    root = tmp_path_factory.mktemp("prior")
    cfg = PreprocessConfig(res=128, max_frames=75)
    clips = [preprocess(clips_dir / f"{n}.mp4", root / n, cfg)
             for n in ("man_suit_5s", "vox_input_00010_224")]
    return pretrain(clips, root / "prior.safetensors", PRETRAIN_PRESETS["tiny"], work=root / "work")


@pytest.fixture(scope="module")
def bench(clips_dir: Path, prior: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    msgs: list[tuple[str, float]] = []
    r = run_benchmark([clips_dir / "may_5s.mp4"], [TRAIN], METHODS, out, prior=prior, quick=True,
                      progress=lambda s, f: msgs.append((s, f)), seed=0)
    return {"out": out, "result": r, "msgs": msgs, "prior": prior}


@pytest.fixture(scope="module")
def clip(bench: dict) -> ProcessedClip:
    return ProcessedClip.load(bench["out"] / "clips" / "may_5s")


def _row(bench: dict, method: str) -> dict:
    return next(r for r in bench["result"].rows if r["method"] == method)


def test_cells_run_and_outputs_are_written(bench: dict) -> None:
    out, r = bench["out"], bench["result"]
    assert len(r.rows) == len(METHODS)
    for m in METHODS:
        row = _row(bench, m)
        assert row["status"] == "ok", row
        assert (out / "cells" / f"may_5s_{m}_3s.json").is_file()
        assert row["test_frames"] == 50 and row["test_start"] == 75
    for m in ("instag", "scratch", "retrieval", "loop"):
        assert 5.0 < _row(bench, m)["psnr"] < 60.0
        assert (out / "renders" / f"may_5s_{m}_3s.mp4").is_file()
    # the sync floor: image metrics n/a, sync measured on the real frames
    sh = _row(bench, "shifted")
    assert sh["psnr"] == "n/a" and sh["ssim"] == "n/a"
    assert abs(sh["av_offset_err"] - 10) <= 2
    assert sh["av_corr_ref"] < sh["av_corr"]
    # LSE needs SyncNet weights: reported, never a number offline
    assert isinstance(sh["lse_c"], (str, float))
    # prior-vs-scratch curve: held-out PSNR recorded along the real adaptation
    for m in ("instag", "scratch"):
        curve = _row(bench, m)["curve"]
        # tiny preset: every ckpt_every (20) steps and after the last one
        assert [p["step"] for p in curve] == [20, 40, 60, 70]
        assert curve[-1]["psnr"] == pytest.approx(_row(bench, m)["psnr"], abs=1.5)
        assert (out / "curves" / f"may_5s_{m}_3s.json").is_file()
        assert (out / "avatars" / f"may_5s_{m}_3s" / "model.safetensors").is_file()
        assert _row(bench, m)["adapt_steps"] == 70 and _row(bench, m)["avatar_seed"] == 0
    # tables, plots, video
    assert r.csv_path == out / "results.csv" and r.csv_path.is_file()
    lines = r.csv_path.read_text().splitlines()
    assert lines[0].startswith("clip,method,train_seconds,status") and len(lines) == 1 + len(METHODS)
    md = (out / "results.md").read_text()
    assert md == r.table_md and "| from scratch |" in md and "published" in md.lower()
    assert {p.name for p in r.plots} == {"metrics.png", "psnr_vs_steps.png"}
    for p in r.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "videos" / "may_5s_3s_side_by_side.mp4").stat().st_size > 10_000
    assert bench["msgs"][-1] == ("done", 1.0)
    fr = [f for _, f in bench["msgs"]]
    assert all(0.0 <= f <= 1.0 for f in fr)


def test_rerun_does_not_recompute(bench: dict) -> None:
    out = bench["out"]
    cells = sorted((out / "cells").glob("*.json"))
    before = {p.name: p.stat().st_mtime_ns for p in cells}
    model = out / "avatars" / "may_5s_scratch_3s" / "model.safetensors"
    m0 = model.stat().st_mtime_ns
    msgs: list[str] = []
    r = run_benchmark([out / "clips" / "may_5s"], [TRAIN], METHODS, out, prior=bench["prior"],
                      quick=True, progress=lambda s, f: msgs.append(s))
    assert {p.name: p.stat().st_mtime_ns for p in sorted((out / "cells").glob("*.json"))} == before
    assert model.stat().st_mtime_ns == m0
    assert not any("adapting" in m or "scoring" in m for m in msgs)
    assert any("5 of 5 cells already finished" in m for m in msgs)
    old = {(x["method"]): x.get("computed_at") for x in bench["result"].rows}
    assert {x["method"]: x.get("computed_at") for x in r.rows} == old


def test_retrieval_picks_training_frames(clip: ProcessedClip) -> None:
    n_train = int(TRAIN * 25)
    keys = B.audio_keys(clip, torch.arange(n_train), n_train)
    assert keys.shape == (n_train, 16 * 80)
    assert (B.retrieve_indices(keys, keys) == np.arange(n_train)).all()  # itself is nearest
    test_idx = torch.arange(n_train, clip.num_frames)
    frames = heldout_frames(clip, test_idx, 96)
    raw, nn = B.retrieval_frames(clip, n_train, test_idx, frames, B.RetrievalConfig(paste=False))
    assert raw.shape == (len(test_idx), 96, 96, 3) and raw.dtype == np.uint8
    assert nn.min() >= 0 and nn.max() < n_train
    train = B.to_uint8(B.training_frames(clip, n_train, 96).images)
    assert np.array_equal(raw, train[nn])
    pasted, nn2 = B.retrieval_frames(clip, n_train, test_idx, frames)
    assert pasted.shape == raw.shape and np.array_equal(nn, nn2)
    # outside the head the pasted frame is the test frame's own plate
    plate = B.to_uint8(frames.plates)
    far = (frames.labels.numpy() <= 1)
    far[:, 30:70, 20:76] = False
    assert np.abs(pasted[far].astype(int) - plate[far].astype(int)).mean() < 3.0


def test_loop_is_pingpong(clip: ProcessedClip) -> None:
    assert B.loop_indices(5, 12).tolist() == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]
    n_train = int(TRAIN * 25)
    idx = B.loop_indices(n_train, 200)
    assert np.abs(np.diff(idx)).max() == 1 and idx.max() == n_train - 1 and idx.min() == 0
    lp = B.loop_frames(clip, n_train, 160, 96)
    train = B.to_uint8(B.training_frames(clip, n_train, 96).images)
    assert lp.shape == (160, 96, 96, 3)
    assert np.array_equal(lp[74], train[74]) and np.array_equal(lp[75], train[73])
    assert np.array_equal(lp[148], train[0]) and np.array_equal(lp[149], train[1])


def test_shifted_audio_is_late_by_ten_frames(clip: ProcessedClip) -> None:
    idx = torch.arange(20, clip.num_frames)
    real = B.test_audio(clip, idx)
    late = B.shifted_audio(clip, idx)
    assert late.shape == real.shape == (len(idx) * 640,)
    assert np.array_equal(late[6400:], real[:-6400])
    assert np.array_equal(late[:6400], clip.arrays["audio"].numpy()[10 * 640:20 * 640])
    pts = clip.arrays["points2d"].numpy()[idx.numpy()]
    d0, _ = av_offset(pts, real)
    d1, _ = av_offset(pts, late)
    assert abs((d1 - d0) - B.SHIFT_FRAMES) <= 2


def test_instag_without_prior_is_skipped(bench: dict, tmp_path: Path) -> None:
    r = run_benchmark([bench["out"] / "clips" / "may_5s"], [TRAIN], ["instag", "loop"], tmp_path,
                      prior=None, quick=True, config=BenchmarkConfig(quick=True, videos=False,
                                                                     landmarks=False))
    assert r.rows[0]["status"].startswith("skipped") and r.rows[1]["status"] == "ok"
    assert not (tmp_path / "cells" / "may_5s_instag_3s.json").exists()


def test_config_and_methods_are_checked(tmp_path: Path) -> None:
    assert BenchmarkConfig(quick=True).preset == "tiny"
    assert BenchmarkConfig(preset="cpu").eval_res == 256 and BenchmarkConfig().test_seconds == 12.0
    with pytest.raises(ValueError):
        run_benchmark([], [5], ["nope"], tmp_path, None)


def test_a_cell_being_adapted_elsewhere_is_left_alone(tmp_path: Path) -> None:
    from eval.benchmark import ensure_avatar

    work = tmp_path / "avatars" / ".clip_scratch_5s.work"
    work.mkdir(parents=True)
    (work / "adapt.safetensors").write_bytes(b"in progress")  # fresh: another process
    with pytest.raises(RuntimeError, match="another process"):
        ensure_avatar(tmp_path / "clip", tmp_path, "clip", "scratch", 5.0, None,
                      BenchmarkConfig(quick=True))
    assert (work / "adapt.safetensors").read_bytes() == b"in progress"
