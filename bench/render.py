"""Rasterizer benchmark: torch (CPU) backend vs the float64 brute-force reference.

Run from the project root:  ``python -m bench.render [--repeats 5] [--threads 1,2] [--quick]``

Scene (deterministic, deliberately on the heavy side of what InsTaG trains): N Gaussians
uniform in the head cube [-0.1, 0.1]^3, camera 0.6 in front looking along +z, focal
2 x resolution (the cube fills most of the frame), scales = mean distance to the 3 nearest
neighbours x U(0.5, 1.5) per axis (the 3DGS initialisation, so 2D radii of ~19 px at 256^2
for 10k), random rotations, opacity U(0.1, 0.9), RGB colours. Loss for the backward:
``image.sum() + alpha.sum()``.

Prints, per (N, resolution): forward (render only, no autograd) and forward+backward
milliseconds, median (and min) over repeats, for each requested thread count; the number of
(tile pixel x Gaussian) pairs after binning; the speed-up over the reference where the
reference is run (small configs only: it is a per-Gaussian Python loop over all pixels, and its
autograd backward keeps every step, so fwd+bwd only at 64^2); peak resident memory.
On a machine shared with other jobs, 2 threads can be much slower than 1 (intra-op barriers
wait for a descheduled thread): compare ``--threads 1,2``.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.raster.render import rasterize

SIZES_N = (2000, 10000, 30000)
SIZES_RES = (128, 256, 512)
REF_CONFIGS = {(2000, 128), (2000, 256), (10000, 128)}  # forward-only reference timings


def make_scene(n: int, res: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Parameters (means, quats, scales, opacities, colours) with grad, viewmat, K."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 0.2 - 0.1
    nn = torch.empty(n)
    for s in range(0, n, 1024):  # mean distance to the 3 nearest neighbours, chunked
        d = torch.cdist(means[s:s + 1024], means)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
        nn[s:s + 1024] = d.topk(3, largest=False).values.mean(1)
    scales = nn[:, None] * (0.5 + torch.rand(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g) * 0.8 + 0.1
    cols = torch.rand(n, 3, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 0.6
    f = 2.0 * res
    K = torch.tensor([[f, 0.0, res / 2], [0.0, f, res / 2], [0.0, 0.0, 1.0]])
    params = [t.contiguous().requires_grad_() for t in (means, quats, scales, opac, cols)]
    return params, viewmat, K


def _time_ms(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall milliseconds over ``repeats`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, min(ts) * 1e3


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pairs(params, V, K, res) -> float:
    """Millions of (tile pixel x Gaussian) pairs after binning (box + ellipse test)."""
    from core.raster.projection import project
    from core.raster.tiles import bin_gaussians
    with torch.no_grad():
        pr = project(*params[:4], V, K, res, res)
        bins = bin_gaussians(pr.means2d, pr.radii, pr.depths, pr.visible, res, res,
                             conics=pr.conics, opacities=params[3])
    return bins.gauss_ids.numel() * bins.tile ** 2 / 1e6


def _fns(params, V, K, res, backend):
    def fwd() -> None:
        with torch.no_grad():
            rasterize(*params, V, K, res, res, backend=backend)

    def fwd_bwd() -> None:
        for p in params:
            p.grad = None
        out = rasterize(*params, V, K, res, res, backend=backend)
        (out.image.sum() + out.alpha.sum()).backward()
    return fwd, fwd_bwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="", help="comma list of torch thread counts, e.g. 1,2")
    ap.add_argument("--quick", action="store_true", help="only the 10k / 128^2 and 256^2 targets")
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t] or [torch.get_num_threads()]
    configs = [(n, r) for n in SIZES_N for r in SIZES_RES]
    if args.quick:
        configs = [(10000, 128), (10000, 256)]
    print(f"torch {torch.__version__}, cores {os.cpu_count()}, repeats {args.repeats}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("times in ms, 'median (min)'")
    rows = {}
    for nt in threads:
        torch.set_num_threads(nt)
        print(f"\n-- torch backend, {nt} thread(s)")
        print(f"{'N':>6} {'res':>5} {'pairs(M)':>9} {'fwd':>17} {'fwd+bwd':>17}")
        for n, res in configs:
            params, V, K = make_scene(n, res)
            fwd, fwd_bwd = _fns(params, V, K, res, "torch")
            tf, tf_min = _time_ms(fwd, args.repeats)
            tb, tb_min = _time_ms(fwd_bwd, args.repeats)
            rows[(nt, n, res)] = (tf, tb)
            print(f"{n:>6} {res:>5} {_pairs(params, V, K, res):>9.1f} {tf:>8.1f} ({tf_min:>6.1f}) "
                  f"{tb:>8.1f} ({tb_min:>6.1f})", flush=True)
    print(f"\npeak RSS after the torch-backend runs: {_peak_mb():.0f} MB "
          f"(includes ~300 MB for torch itself and the scenes)")
    if not args.no_reference:
        nt = threads[-1]
        torch.set_num_threads(nt)
        print(f"\n-- float64 brute-force reference vs torch backend ({nt} thread(s), single runs)")
        print(f"{'N':>6} {'res':>5} {'mode':>8} {'reference':>10} {'torch':>8} {'speed-up':>9}")
        for n, res in sorted(REF_CONFIGS) + [(1000, 64)]:
            params, V, K = make_scene(n, res)
            modes = ["fwd", "fwd+bwd"] if n * res * res <= 1000 * 64 * 64 else ["fwd"]
            for mode in modes:
                ref_f, ref_fb = _fns(params, V, K, res, "reference")
                t_f, t_fb = _fns(params, V, K, res, "torch")
                t_ref = _time_ms(ref_f if mode == "fwd" else ref_fb, 1)[0]
                t_fast = _time_ms(t_f if mode == "fwd" else t_fb, args.repeats)[0]
                print(f"{n:>6} {res:>5} {mode:>8} {t_ref:>10.0f} {t_fast:>8.1f} {t_ref / t_fast:>8.0f}x",
                      flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    print("targets (2 cores, 10k): fwd+bwd 256^2 <= 250 ms, 128^2 <= 120 ms; fwd 256^2 <= 100 ms; "
          "peak < 2 GB")


if __name__ == "__main__":
    main()
