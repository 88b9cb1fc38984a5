"""Rasterizer tests: torch backend vs the float64 brute-force reference, edge cases, gsplat parity
(CUDA only), and a small fit to a real face crop. CPU, well under a minute."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.raster.parity import backend_parity, camera, random_scene
from core.raster.render import RenderOutput, rasterize

ROOT = Path(__file__).resolve().parents[1]
PARAM_NAMES = ("means", "quats", "scales", "opacities", "colors")


def _camera(width: int, height: int, f: float, dist: float = 0.6, yaw: float = 0.0):
    """World-to-camera looking at the origin from distance ``dist`` (OpenCV axes)."""
    return camera(width, height, f, dist, yaw)


def _scene(n: int, seed: int, channels: int = 3, scale: float = 0.01, op_lo: float = 0.05,
           op_hi: float = 0.95, spread: float = 0.12):
    return random_scene(n, seed, channels, scale, op_lo, op_hi, spread)


def _render_and_grads(params, V, K, W, H, backend, bg=None, sh_degree=None, seed=0):
    for p in params:
        p.grad = None
    out = rasterize(*params, V, K, W, H, background=bg, sh_degree=sh_degree, backend=backend)
    g = torch.Generator().manual_seed(seed + 100)
    C = out.image.shape[-1]
    wi = torch.randn(H, W, C, generator=g).to(out.image)
    wa = torch.randn(H, W, 1, generator=g).to(out.image)
    wd = torch.randn(H, W, 1, generator=g).to(out.image)
    loss = (out.image * wi).sum() + (out.alpha * wa).sum() + (out.depth * wd).sum()
    loss.backward()
    grads = {n: p.grad.detach().double().clone() for n, p in zip(PARAM_NAMES, params)}
    grads["means2d"] = out.means2d.grad.detach().double().clone()
    return out, grads


def _assert_close(name, a, b, rtol=1e-5):
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _compare(params, V, K, W, H, bg=None, sh_degree=None, seed=0):
    fast, gf = _render_and_grads(params, V, K, W, H, "torch", bg, sh_degree, seed)
    ref, gr = _render_and_grads(params, V, K, W, H, "reference", bg, sh_degree, seed)
    assert fast.image.dtype == torch.float32 and fast.image.shape == ref.image.shape
    _assert_close("image", fast.image, ref.image)
    _assert_close("alpha", fast.alpha, ref.alpha)
    _assert_close("depth", fast.depth, ref.depth)
    assert torch.equal(fast.visible, ref.visible)
    assert (fast.radii - ref.radii).abs().max() <= 1  # ceil() of float32 vs float64
    for n in gr:
        _assert_close(f"grad {n}", gf[n], gr[n])
    return fast, ref


# --------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("seed,n,W,H,channels,op_hi,scale", [
    (0, 250, 45, 37, 3, 0.95, 0.010),   # odd size (partial tiles), mixed opacity
    (1, 400, 40, 48, 5, 0.999, 0.015),  # extra channels, opaque: 0.999 cap, early stop
    (2, 150, 64, 32, 1, 0.6, 0.030),    # few, large, overlapping tiles
])
def test_torch_matches_reference(seed, n, W, H, channels, op_hi, scale):
    V, K = _camera(W, H, f=1.6 * W, yaw=0.3 * seed)
    params = _scene(n, seed, channels, scale=scale, op_hi=op_hi)
    if op_hi > 0.99:
        with torch.no_grad():  # some reach the alpha = 0.999 cap (zero gradient there)
            params[3][::10] = 1.0
    bg = torch.linspace(0.1, 0.9, channels)
    fast, _ = _compare(params, V, K, W, H, bg=bg, seed=seed)
    assert fast.visible.sum() > n // 2
    if op_hi > 0.99:  # the dense case really reaches the transmittance stop
        assert fast.alpha.max() > 0.9998


def test_dense_scene_multiple_depth_blocks_matches_reference():
    # 700 Gaussians on 48^2: per-tile lists of hundreds, several forward depth blocks,
    # many pixels stop at T <= 1e-4 part-way through a block
    W = H = 48
    V, K = _camera(W, H, f=2.0 * W)
    params = _scene(700, 11, 3, scale=0.01, op_lo=0.1, op_hi=0.9, spread=0.1)
    fast, _ = _compare(params, V, K, W, H, bg=torch.tensor([0.2, 0.5, 0.9]), seed=11)
    assert (fast.alpha > 0.9998).float().mean() > 0.2


def test_chunking_and_tile_culling_do_not_change_results():
    from core.raster.projection import project
    from core.raster.tiles import bin_gaussians
    from core.raster.render import _rasterize_torch
    W, H = 56, 40
    V, K = _camera(W, H, f=1.5 * W)
    params = _scene(300, 12, 3, scale=0.012, op_hi=0.999)
    bg = torch.tensor([0.1, 0.2, 0.3])
    results = []
    for budget in (256 * 2, 1 << 19):  # one tile of <= 2 entries per chunk vs the default
        for p in params:
            p.grad = None
        r = _rasterize_torch(*params, V, K, W, H, bg, 0.01, 1e10, 0.3, budget=budget)
        (r["image"].sum() + 2 * r["alpha"].sum() + r["depth_acc"].sum()).backward()
        results.append([r["image"].detach(), r["alpha"].detach()] + [p.grad.clone() for p in params])
    names = ["image", "alpha"] + [f"grad {n}" for n in PARAM_NAMES]
    for name, a, b in zip(names, *results):  # only the summation order differs
        _assert_close(name, a, b, rtol=2e-6)
    with torch.no_grad():
        pr = project(*params[:4], V, K, W, H)
        box = bin_gaussians(pr.means2d, pr.radii, pr.depths, pr.visible, W, H)
        ell = bin_gaussians(pr.means2d, pr.radii, pr.depths, pr.visible, W, H,
                            conics=pr.conics, opacities=params[3])
    assert ell.gauss_ids.numel() < box.gauss_ids.numel()  # the ellipse test removes work


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_sh_matches_reference(degree):
    W, H = 32, 30
    V, K = _camera(W, H, f=50.0, yaw=0.4)
    params = _scene(120, 10 + degree, 3)
    g = torch.Generator().manual_seed(degree)
    sh = (torch.randn(120, (degree + 1) ** 2, 3, generator=g) * 0.5).requires_grad_()
    params[4] = sh
    _compare(params, V, K, W, H, bg=torch.tensor([0.3, 0.2, 0.1]), sh_degree=degree, seed=degree)


def test_sh_degree0_is_constant_colour():
    W, H = 16, 16
    V, K = _camera(W, H, f=20.0)
    sh = torch.zeros(1, 4, 3)
    sh[0, 0] = torch.tensor([1.0, -1.0, 0.0])
    out = rasterize(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.05),
                    torch.tensor([0.999]), sh, V, K, W, H, sh_degree=0)
    c = out.image[8, 8] / out.alpha[8, 8]
    expect = torch.tensor([max(0.0, 0.28209479 + 0.5), max(0.0, -0.28209479 + 0.5), 0.5])
    assert torch.allclose(c, expect, atol=1e-5)


def test_depth_is_expected_z_and_means2d_projection():
    W, H = 24, 20
    V, K = _camera(W, H, f=30.0)
    means = torch.tensor([[0.02, -0.01, 0.0]])
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.03),
                    torch.tensor([0.9]), torch.ones(1, 3), V, K, W, H)
    z = 0.6
    u = K[0, 0] * 0.02 / z + K[0, 2]
    v = K[1, 1] * -0.01 / z + K[1, 2]
    assert torch.allclose(out.means2d[0], torch.tensor([u, v]), atol=1e-5)
    hit = out.alpha[..., 0] > 1e-3
    assert torch.allclose(out.depth[hit], torch.full_like(out.depth[hit], z), atol=1e-5)
    assert (out.depth[~hit & (out.alpha[..., 0] == 0)] == 0).all()
    assert out.radii.dtype == torch.int32 and out.radii[0] > 0


# --------------------------------------------------------------------------- edge cases
def _edge_scene():
    """Gaussians that must be culled or stress the numerics, plus ordinary ones."""
    means = torch.tensor([
        [0.00, 0.00, 0.00],    # ordinary
        [0.01, 0.02, -0.62],   # behind the camera (z = -0.02)
        [0.00, 0.00, -0.6],    # exactly at the camera centre (z = 0)
        [5.00, 0.00, 0.00],    # far off-screen right
        [0.00, -3.0, 0.10],    # off-screen top
        [0.02, 0.01, 0.05],    # huge
        [-0.03, 0.0, 0.00],    # degenerate: zero scales
        [0.03, -0.02, 0.0],    # degenerate: one tiny axis (a needle)
        [0.00, 0.03, 0.00],    # zero opacity
        [0.01, 0.01, -0.595],  # just past the near plane, in front of the lens
        [0.0, 0.0, 1e11],      # beyond the far plane
    ])
    scales = torch.tensor([[0.01] * 3, [0.01] * 3, [0.01] * 3, [0.01] * 3, [0.01] * 3,
                           [50.0, 30.0, 40.0], [0.0, 0.0, 0.0], [0.02, 1e-9, 0.01], [0.01] * 3,
                           [0.001] * 3, [0.01] * 3])
    n = means.shape[0]
    quats = torch.randn(n, 4, generator=torch.Generator().manual_seed(3))
    quats[6] = 0.0  # zero quaternion: normalises to identity-like without NaN
    opac = torch.full((n,), 0.8)
    opac[8] = 0.0
    cols = torch.rand(n, 4, generator=torch.Generator().manual_seed(4))
    return [t.clone().requires_grad_() for t in (means, quats, scales, opac, cols)]


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_edge_cases_finite(backend):
    W, H = 40, 33
    V, K = _camera(W, H, f=60.0)
    params = _edge_scene()
    bg = torch.tensor([0.2, 0.4, 0.6, 0.0])
    out, grads = _render_and_grads(params, V, K, W, H, backend, bg=bg)
    for name in ("image", "alpha", "depth", "means2d"):
        assert torch.isfinite(getattr(out, name)).all(), name
    for name, g in grads.items():
        assert torch.isfinite(g).all(), f"grad {name}"
    vis = out.visible.tolist()
    assert vis[0] and vis[5] and vis[6] and vis[7]
    assert not any(vis[i] for i in (1, 2, 3, 4, 8, 10))
    assert (out.radii[~out.visible] == 0).all()
    assert (grads["means"][[1, 2, 3, 4, 8, 10]] == 0).all()
    assert (out.means2d[~out.visible] == 0).all()


def test_edge_cases_match_reference():
    W, H = 40, 33
    V, K = _camera(W, H, f=60.0)
    _compare(_edge_scene(), V, K, W, H, bg=torch.tensor([0.2, 0.4, 0.6, 0.0]))


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_empty_and_all_culled(backend):
    W, H = 20, 18
    V, K = _camera(W, H, f=30.0)
    bg = torch.tensor([0.1, 0.2, 0.3])
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    empty = [t.requires_grad_() for t in empty]
    out, grads = _render_and_grads(empty, V, K, W, H, backend, bg=bg)
    assert torch.allclose(out.image, bg.to(out.image).expand(H, W, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    assert out.means2d.shape == (0, 2) and out.radii.shape == (0,)
    culled = _scene(5, 0)
    with torch.no_grad():
        culled[0][:, 2] = -1.0  # all behind the camera
    out, grads = _render_and_grads(culled, V, K, W, H, backend, bg=bg)
    assert torch.allclose(out.image, bg.to(out.image).expand(H, W, 3))
    assert not out.visible.any()
    assert all(torch.isfinite(g).all() and (g == 0).all() for g in grads.values())


def test_background_gradient_and_no_grad_inputs():
    W, H = 24, 24
    V, K = _camera(W, H, f=40.0)
    params = [p.detach() for p in _scene(60, 5)]
    bg = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    out = rasterize(*params, V, K, W, H, background=bg)
    out.image.sum().backward()
    assert torch.allclose(bg.grad, (1 - out.alpha).sum().expand(3), rtol=1e-4)
    assert not out.means2d.requires_grad


# --------------------------------------------------------------------------- dispatch / gsplat
def test_cpu_never_imports_gsplat():
    code = ("import sys, torch; from core.raster.render import rasterize; "
            "o = rasterize(torch.zeros(1, 3), torch.tensor([[1., 0, 0, 0]]), torch.full((1, 3), .05), "
            "torch.tensor([.5]), torch.ones(1, 3), torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, .6], [0, 0, 0, 1]]), "
            "torch.tensor([[20., 0, 8], [0, 20, 8], [0, 0, 1]]), 16, 16); "
            "assert 'gsplat' not in sys.modules, 'gsplat imported'; print('ok')")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_backend_validation():
    V, K = _camera(8, 8, 10.0)
    p = [t.detach() for t in _scene(3, 0)]
    with pytest.raises(ValueError):
        rasterize(*p, V, K, 8, 8, backend="nope")
    with pytest.raises(ValueError):
        rasterize(*p, V, K, 8, 8, backend="gsplat")  # CPU tensors
    with pytest.raises(ValueError):
        rasterize(*p[:4], torch.rand(4, 3), V, K, 8, 8)  # wrong N


def test_parity_report_of_torch_against_the_reference():
    """The parity machinery the GPU check uses, on the CPU: our backend against the float64
    reference agrees far inside the gsplat tolerances, and a report with a wrong gradient
    fails, naming it."""
    rep = backend_parity("torch", "reference", n=300, width=40, height=32)
    assert rep.failures() == []
    assert rep.forward["image"]["max"] < 1e-5 and rep.grads["means"]["max"] < 1e-4
    assert set(rep.grads) == {"means", "quats", "scales", "opacities", "colors", "means2d"}
    rep.grads["scales"]["p99"] = 0.5
    assert rep.failures() == ["grad scales p99 relative error 0.5 > 0.001"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat parity needs a CUDA GPU")
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "dense"])
def test_gsplat_forward_parity(packed, monkeypatch):
    """gsplat's CUDA kernels against our torch backend, both on the GPU: image, alpha and
    depth (tolerances and why in :mod:`core.raster.parity`)."""
    from core.raster import gsplat_backend

    monkeypatch.setattr(gsplat_backend, "PACKED", packed)
    rep = backend_parity("gsplat", "torch", device="cuda")
    bad = [f for f in rep.failures() if not f.startswith("grad ")]
    assert bad == [], bad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat parity needs a CUDA GPU")
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "dense"])
def test_gsplat_gradient_parity(packed, monkeypatch):
    """Gradients through gsplat against ours on the GPU: means, quaternions, scales,
    opacities, colours and the screen-space means densification reads."""
    from core.raster import gsplat_backend

    monkeypatch.setattr(gsplat_backend, "PACKED", packed)
    rep = backend_parity("gsplat", "torch", device="cuda")
    bad = [f for f in rep.failures() if f.startswith("grad ")]
    assert bad == [], bad


# --------------------------------------------------------------------------- optimisation
def _face_crop(clips_dir: Path, size: int = 96) -> torch.Tensor:
    av = pytest.importorskip("av")
    with av.open(str(clips_dir / "may_5s.mp4")) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    h, w, _ = frame.shape
    s = min(h, w)
    crop = frame[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(t, size=(size, size), mode="area")[0].permute(1, 2, 0).contiguous()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_fit_face_crop(clips_dir):
    size, n = 96, 400
    target = _face_crop(clips_dir, size)
    f = 1.5 * size
    V = torch.eye(4)
    V[2, 3] = 1.0
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    half = 0.5 * size / f  # world half-extent seen at depth 1
    means = torch.cat([(torch.rand(n, 2, generator=g) * 2 - 1) * half * 0.95,
                       torch.rand(n, 1, generator=g) * 0.02 - 0.01], 1).requires_grad_()
    log_s = torch.full((n, 3), math.log(2.5 / f)).requires_grad_()  # ~2.5 px sigma
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1).requires_grad_()
    logit_o = torch.zeros(n).requires_grad_()
    rgb = torch.full((n, 3), 0.0).requires_grad_()  # sigmoid -> 0.5 grey
    opt = torch.optim.Adam([
        {"params": [means], "lr": 2e-3}, {"params": [log_s], "lr": 2e-2},
        {"params": [quats], "lr": 1e-2}, {"params": [logit_o], "lr": 5e-2},
        {"params": [rgb], "lr": 5e-2}])
    bg = torch.zeros(3)

    def render() -> RenderOutput:
        return rasterize(means, quats, torch.exp(log_s), torch.sigmoid(logit_o), torch.sigmoid(rgb),
                         V, K, size, size, background=bg)

    # a tiny workload: one thread avoids intra-op sync costs on a shared, loaded machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            p0 = _psnr(render().image, target)
        grad_seen = False
        for _ in range(150):
            opt.zero_grad()
            out = render()
            loss = (out.image - target).abs().mean()
            loss.backward()
            grad_seen |= bool(out.means2d.grad.abs().sum() > 0)
            opt.step()
        with torch.no_grad():
            p1 = _psnr(render().image, target)
    finally:
        torch.set_num_threads(threads)
    assert grad_seen
    print(f"fit: PSNR {p0:.2f} -> {p1:.2f} dB")
    assert p1 - p0 > 8.0, f"PSNR {p0:.2f} -> {p1:.2f} dB"
