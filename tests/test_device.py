"""One device choice through every job: resolving it, refusing a GPU that is not there, no
host/device traffic in the training loop, device-free avatars, the out-of-memory path, and
the device check (``bench.gpu_check``) in its quick CPU form. Runs without CUDA."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.device import TransferAudit, host_side, resolve_device
from core.errors import InputError

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(),
                                   reason="checks the refusal on a machine without CUDA")


# ----------------------------------------------------------------------------- resolving
def test_resolve_device_choices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device(None).type == want
    for bad in ("tpu", "cuda:x", "gpu"):
        with pytest.raises(InputError, match="Unknown device"):
            resolve_device(bad)


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_names_the_devices_present(spec: str) -> None:
    with pytest.raises(InputError) as e:
        resolve_device(spec)
    assert e.value.code == "missing_dependency"
    assert "devices present: cpu" in str(e.value) and "--device cpu" in str(e.value)


@needs_no_cuda
def test_every_cli_refuses_a_missing_gpu_and_writes_nothing(tmp_path: Path, capsys) -> None:
    """``--device cuda`` on a machine without CUDA: exit 2, the devices present named,
    nothing written (no avatar, no work folder, no video, no prior)."""
    from core.synthesize import main as synth_main
    from core.train.adapt import main as adapt_main
    from core.train.pretrain import main as pretrain_main
    from eval.benchmark import main as bench_main

    runs = {
        "adapt": (adapt_main, ["nothing.mp4", "--out", str(tmp_path / "av"), "--device", "cuda"]),
        "synthesize": (synth_main, [str(tmp_path / "av"), "a.wav", "--out",
                                    str(tmp_path / "x.mp4"), "--device", "cuda:1"]),
        "pretrain": (pretrain_main, ["a.mp4", "b.mp4", "--out", str(tmp_path / "p.safetensors"),
                                     "--device", "cuda"]),
        "benchmark": (bench_main, ["--clips", "a.mp4", "--out", str(tmp_path / "bench"),
                                   "--device", "cuda"]),
    }
    for name, (fn, argv) in runs.items():
        assert fn(argv) == 2, name
        err = capsys.readouterr().err
        assert "devices present: cpu" in err, (name, err)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the audit
def test_transfer_audit_knows_a_transfer_when_it_sees_one() -> None:
    """Known answers: reading a value back, a factory without ``device=`` and a device
    change are counted with their source line; host-side draws and work inside a
    :func:`host_side` function are not."""
    x = torch.ones(4)
    gen = torch.Generator().manual_seed(0)

    @host_side
    def draw() -> int:
        return int(torch.randint(3, (1,), generator=gen)) + int(x.sum())

    audit = TransferAudit(device=torch.device("cpu"))
    with audit:
        float(x.sum())                           # sync
        torch.zeros(3)                           # factory on the host
        torch.zeros(3, device=x.device)          # not counted
        torch.rand(2, generator=gen)             # a host draw: not counted
        draw()                                   # host side by design: not counted
        if x[0] > 0:                             # bool(): a sync
            pass
        audit.recording = False
        x[0].item()                              # not recording: not counted
    kinds = sorted((e.kind, e.call) for e in audit.outside_rasterizer())
    assert kinds == [("factory", "zeros"), ("sync", "bool"), ("sync", "float")]
    assert all(e.site.startswith("tests/test_device.py:") for e in audit.events)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The device check's quick prepared folder: a 2 s clip at 96 px (processed once here
    with MediaPipe), its phone decodes and 2 s of driving audio."""
    from bench.gpu_check import prepare

    return prepare(tmp_path_factory.mktemp("gpu_check") / "prepared", quick=True)


def _cfg(face: int, mouth: int, fuse: int, **kw):
    from bench.gpu_check import quick_config

    return replace(quick_config(), face_steps=face, mouth_steps=mouth, fuse_steps=fuse, **kw)


def test_avatars_are_device_free_and_render_where_asked(prepared: Path, tmp_path: Path) -> None:
    """Adapt and render with ``device`` explicit; the saved avatar's tensors are plain CPU
    tensors that load and save again bit for bit, and the round-tripped avatar renders the
    same video (up to its re-encoded plates)."""
    from safetensors import safe_open

    from core.model.avatar import load_avatar, save_avatar
    from core.synthesize import synthesize
    from core.train.adapt import adapt

    av_dir = adapt(prepared / "clip", tmp_path / "av", None, _cfg(3, 2, 1), device="cpu")
    av = load_avatar(av_dir).to("cpu")
    assert av.device == torch.device("cpu") and av.ident.face.means.device.type == "cpu"
    # saved again from the loaded copy: the same tensors, bit for bit
    again = save_avatar(tmp_path / "again", av.umf, av.ident, av.viewmats, av.K, av.expr,
                        av.plates.numpy(), {k: v for k, v in av.meta.items()
                                            if k not in ("code_dim", "drive", "kind",
                                                         "num_frames", "audio_dim",
                                                         "format_version")},
                        drive=av.drive, full=av.full_frame_frames())
    with safe_open(str(av_dir / "model.safetensors"), "pt") as a, \
            safe_open(str(again / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
    wav = prepared / "audio.npy"
    audio = tmp_path / "speech.wav"
    _write_wav(audio, np.load(wav))
    r1 = synthesize(av_dir, audio, tmp_path / "a.mp4", device="cpu")
    r2 = synthesize(again, audio, tmp_path / "b.mp4", device=torch.device("cpu"))
    assert r1.frames == r2.frames == int(np.ceil(np.load(wav).shape[0] / 640))
    # the same model renders the same frames; only the re-encoded plates may differ a little
    from core.data.media import iter_frames

    fa, fb = (np.stack(list(iter_frames(tmp_path / n))).astype(np.float64) for n in ("a.mp4", "b.mp4"))
    assert fa.shape == fb.shape
    assert 10 * np.log10(255.0 ** 2 / max(np.mean((fa - fb) ** 2), 1e-12)) > 40.0


def _write_wav(path: Path, x: np.ndarray, rate: int = 16000) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def test_out_of_gpu_memory_names_the_settings_and_keeps_the_checkpoint(
        prepared: Path, tmp_path: Path, monkeypatch) -> None:
    """An out-of-memory error mid-adaptation becomes a clear error naming the preset and
    resolution, and the last checkpoint stays for ``--resume``, which then finishes."""
    import core.train.adapt as A

    real = A.face_step
    calls = [0]

    def oom_on_the_eighth(*args, **kw):
        calls[0] += 1
        if calls[0] == 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kw)

    monkeypatch.setattr(A, "face_step", oom_on_the_eighth)
    cfg = _cfg(10, 2, 2, ckpt_every=5)
    work = tmp_path / "work"
    with pytest.raises(InputError) as e:
        A.adapt(prepared / "clip", tmp_path / "av", None, cfg, work=work, device="cpu")
    assert e.value.code == "too_large"
    assert "Out of GPU memory while adapting (face step 7)" in str(e.value)
    assert "96x96" in str(e.value) and "--resume" in str(e.value)
    assert (work / "adapt.safetensors").is_file() and not (tmp_path / "av").exists()
    monkeypatch.setattr(A, "face_step", real)
    A.adapt(prepared / "clip", tmp_path / "av", None, cfg, work=work, resume=True, device="cpu")
    assert (tmp_path / "av" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- the check
def test_gpu_check_quick_on_the_cpu(prepared: Path, tmp_path: Path) -> None:
    """``python -m bench.gpu_check --device cpu --quick`` runs every section and writes its
    JSON and report: parity of our backend against the reference, stage step times, render
    frames per second, and the transfer audit: six steady-state steps of each stage (face,
    mouth, fuse) of an adaptation with ``device`` passed explicitly make no copy and no
    read-back outside the rasterizer (on a GPU these would be real transfers)."""
    from bench.gpu_check import main

    out = tmp_path / "out"
    assert main(["--device", "cpu", "--quick", "--folder", str(prepared), "--out", str(out)]) == 0
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["device"] == "cpu" and r["quick"]
    assert r["gsplat"]["parity"]["torch_vs_reference"]["failures"] == []
    assert r["transfers"]["steps_audited"] == 18
    assert r["transfers"]["transfers_outside_rasterizer"] == 0, r["transfers"]["by_site"]
    assert r["transfers"]["rasterizer_internal"] > 0   # the windows did record something
    assert set(r["adapt"]["stages"]) == {"face", "mouth", "fuse"}
    assert all(s["s_per_step"] > 0 for s in r["adapt"]["stages"].values())
    assert r["render"]["fps_96"] > 0
    md = (out / "gpu.md").read_text()
    assert "## Adaptation" in md and "frames/s" in md and "no CUDA: gsplat not run" in md


def test_gpu_check_refuses_an_unprepared_folder(tmp_path: Path) -> None:
    from bench.gpu_check import main

    with pytest.raises(SystemExit, match="--prepare"):
        main(["--device", "cpu", "--quick", "--folder", str(tmp_path), "--out", str(tmp_path)])


def test_gpu_durations_come_from_a_gpu_measurement(tmp_path: Path) -> None:
    """The app's GPU call durations: measured time x 1.3 + 15 s from a CUDA run of the
    check, capped at ZeroGPU's maximum; estimates (and saying so) without one."""
    from demo.config import GPU_ESTIMATES, ZERO_GPU_MAX_S, gpu_durations

    got, source = gpu_durations(tmp_path / "absent.json")
    assert got == GPU_ESTIMATES and source == "estimate"
    run = {"device": "cuda:0", "devices": ["cpu", "cuda:0 (NVIDIA H100 80GB HBM3)"],
           "created": "2026-12-07T10:00:00Z", "quick": False,
           "adapt": {"wall_s": 60.0}, "render": {"fps_512": 125.0, "front_end_s": 0.8}}
    f = tmp_path / "gpu_check.json"
    f.write_text(json.dumps(run))
    got, source = gpu_durations(f, max_audio_s=120.0, preview_s=3.0)
    assert got["adapt"] == int(np.ceil(1.3 * (60.0 + 75 / 125.0) + 15))
    assert got["render"] == int(np.ceil(1.3 * (3000 / 125.0 + 0.8 * 15) + 15))
    assert "H100" in source
    f.write_text(json.dumps({**run, "adapt": {"wall_s": 900.0}}))
    assert gpu_durations(f)[0]["adapt"] == ZERO_GPU_MAX_S
    f.write_text(json.dumps({**run, "device": "cpu"}))
    assert gpu_durations(f)[1] == "estimate"
