"""Known-answer tests for core.model.gaussians (CPU, a few seconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.model.gaussians import (
    FACE_INIT, MOUTH_INIT, PARAM_NAMES, Densifier, DensifyConfig, GaussianConfig, GaussianSet,
    extend_gaussians, inverse_softplus, knn_mean_distance, prune_gaussians,
    quat_to_rotmat, sh_dc_to_rgb)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- init
def test_face_init_counts_and_ranges():
    g = GaussianSet().init_box(FACE_INIT, generator=_gen())
    assert g.num == 2000
    assert g.means.min() >= -0.1 and g.means.max() <= 0.1
    assert g.means.min() < -0.09 and g.means.max() > 0.09          # fills the box
    assert torch.allclose(g.opacities, torch.full((2000,), 0.1))
    assert torch.equal(g.quats, torch.tensor([1.0, 0, 0, 0]).expand(2000, 4))
    assert g.sh.shape == (2000, 4, 3) and g.sh_degree == 0
    assert torch.allclose(sh_dc_to_rgb(g.sh_dc), torch.full((2000, 1, 3), 0.5))
    s = g.scales
    assert torch.equal(s[:, 0], s[:, 1]) and torch.equal(s[:, 0], s[:, 2])   # isotropic
    assert 0.003 < s.mean() < 0.03


def test_mouth_init_in_shifted_halved_box():
    g = GaussianSet(config=GaussianConfig(max_sh_degree=2)).init_box(MOUTH_INIT, generator=_gen(1))
    assert g.num == 5000 and g.sh.shape == (5000, 9, 3)
    x, y, z = g.means.unbind(-1)
    assert x.min() >= -0.05 and x.max() <= 0.05
    assert z.min() >= -0.05 and z.max() <= 0.05
    assert y.min() >= 0.0 and y.max() <= 0.1                 # moved 0.05 down (+y is down)
    assert abs(y.mean().item() - 0.05) < 0.003 and abs(x.mean().item()) < 0.003


def test_softplus_activation_and_inverse():
    y = torch.logspace(-6, 1, 200, dtype=torch.float64)
    assert torch.allclose(F.softplus(inverse_softplus(y)), y, rtol=1e-9, atol=0)
    x = torch.linspace(-12, 8, 100, dtype=torch.float64)
    assert torch.allclose(inverse_softplus(F.softplus(x)), x, rtol=1e-7, atol=1e-7)
    g = GaussianSet(10)
    with torch.no_grad():
        g.scales_raw.normal_()
    assert torch.equal(g.scales, F.softplus(g.scales_raw))
    assert torch.allclose(g.opacities, torch.sigmoid(g.opacity_logits))


def test_knn_scale_matches_brute_force():
    pts = torch.rand(300, 3, generator=_gen(2)) * 0.2 - 0.1
    p = pts.double().numpy()
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    ref = np.sort(d, axis=1)[:, :3].mean(1)
    got = knn_mean_distance(pts, 3, chunk=64)                 # several chunks
    assert np.allclose(got.numpy(), ref, rtol=1e-5, atol=1e-8)
    g = GaussianSet().init_points(pts)
    assert np.allclose(g.scales[:, 0].detach().numpy(), ref, rtol=1e-4, atol=1e-7)
    # duplicated points: neighbour at distance 0 counts, self does not
    dup = torch.tensor([[0.0, 0, 0], [0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]])
    assert torch.allclose(knn_mean_distance(dup, 1), torch.tensor([0.0, 0.0, 1.0, 2.0]))


def test_activated_applies_deltas():
    g = GaussianSet().init_random(50, generator=_gen(3))
    dx, dq, ds = torch.randn(50, 3) * 0.01, torch.randn(50, 4) * 0.1, torch.randn(50, 3) * 0.1
    a = g.activated(d_xyz=dx, d_quat=dq, d_scale=ds)
    assert torch.allclose(a.means, g.means + dx)
    assert torch.allclose(a.quats, F.normalize(g.quats_raw + dq, dim=-1))
    assert torch.allclose(a.quats.norm(dim=-1), torch.ones(50))
    assert torch.allclose(a.scales, F.softplus(g.scales_raw + ds))
    assert a.opacities.shape == (50,) and a.sh.shape == (50, 4, 3)

    class M:  # duck-typed motion (core.model.motion_field.Motion has these fields)
        d_xyz, d_quat, d_scale = dx, None, ds
    b = g.activated(M())
    assert torch.allclose(b.means, a.means) and torch.allclose(b.quats, g.quats)
    plain = g.activated()
    assert torch.equal(plain.means, g.means) and torch.equal(plain.scales, g.scales)
    batched = g.activated(d_xyz=torch.zeros(2, 50, 3))
    assert batched.means.shape == (2, 50, 3)


def test_sh_degree_schedule():
    g = GaussianSet(5, GaussianConfig(max_sh_degree=2, sh_increase_interval=1000))
    assert [g.update_sh_degree(s) for s in (0, 999, 1000, 2500, 10 ** 6)] == [0, 0, 1, 2, 2]


def test_save_load_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file
    g = GaussianSet(config=GaussianConfig(max_sh_degree=2)).init_random(123, generator=_gen(4))
    with torch.no_grad():
        g.sh_rest.normal_()
    g.update_sh_degree(1500)
    save_file(g.to_tensors("face."), str(tmp_path / "g.safetensors"))
    t = load_file(str(tmp_path / "g.safetensors"))
    h = GaussianSet.from_tensors(t, "face.")
    assert h.num == 123 and h.max_sh_degree == 2 and h.sh_degree == 1
    for n in PARAM_NAMES:
        assert torch.equal(getattr(h, n), getattr(g, n))
    with pytest.raises(ValueError):
        GaussianSet(0, GaussianConfig(max_sh_degree=1)).load_tensors(t, "face.")


def test_quat_to_rotmat():
    q = F.normalize(torch.randn(20, 4), dim=-1)
    r = quat_to_rotmat(q)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(20, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(r), torch.ones(20), atol=1e-5)
    # 90 deg about z (wxyz): x -> y
    rz = quat_to_rotmat(torch.tensor([2 ** -0.5, 0, 0, 2 ** -0.5]))
    assert torch.allclose(rz @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)


# --------------------------------------------------------------------------- densification
def _planted(opt_cls):
    """5 Gaussians: 0 clone, 1 split, 2 low opacity, 3 keep (invisible, big grad), 4 huge."""
    g = GaussianSet(5)
    scales = torch.tensor([0.001, 0.01, 0.005, 0.005, 0.05])[:, None].expand(5, 3).clone()
    scales[1, 2] = 0.004                                       # anisotropic split parent
    op = torch.tensor([0.5, 0.5, 0.01, 0.5, 0.5])
    with torch.no_grad():
        g.means.copy_(torch.arange(15.0).reshape(5, 3) * 0.01)
        g.scales_raw.copy_(inverse_softplus(scales))
        g.opacity_logits.copy_(torch.logit(op))
        g.quats_raw.copy_(F.normalize(torch.randn(5, 4, generator=_gen(5)), dim=-1))
        g.sh_dc.copy_(torch.randn(5, 1, 3, generator=_gen(6)))
    opt = opt_cls(g.param_groups(scene_extent=0.2))
    # populate Adam state with a real step
    loss = (g.means ** 2).sum() + g.scales.sum() + g.opacities.sum() + g.sh.sum() + g.quats.sum()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return g, opt


def _check_optimizer(g: GaussianSet, opt: torch.optim.Optimizer) -> None:
    ids = {id(getattr(g, n)) for n in PARAM_NAMES}
    in_opt = {id(p) for grp in opt.param_groups for p in grp["params"]}
    assert ids == in_opt
    for n in PARAM_NAMES:
        p = getattr(g, n)
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
def test_densify_clone_split_prune(opt_cls):
    g, opt = _planted(opt_cls)
    cfg = DensifyConfig(grad_threshold=5e-4, scene_extent=0.2, percent_dense=0.01)
    dens = Densifier(cfg, n=5)
    W = H = 100
    # pixel grads; NDC grad = pixel grad * (W/2, H/2) = * 50
    pix = torch.tensor([[2e-5, 0.0], [0.0, 3e-5], [1e-6, 0], [1e-4, 1e-4], [1e-6, 1e-6]])
    vis = torch.tensor([True, True, True, False, True])
    dens.accumulate(pix, vis, torch.tensor([3, 5, 2, 0, 9]), W, H)
    dens.accumulate(pix * 3, vis, None, W, H)
    assert torch.allclose(dens.mean_grad(),
                          torch.tensor([2e-5 * 50 * 2, 3e-5 * 50 * 2, 1e-6 * 50 * 2, 0.0,
                                        2 ** 0.5 * 1e-6 * 50 * 2]), rtol=1e-5)
    assert dens.denom.tolist() == [2, 2, 2, 0, 2]

    old_means = g.means.detach().clone()
    old_state3 = opt.state[g.means]["exp_avg"][3].clone()
    old_quat1 = g.quats.detach()[1].clone()
    old_scale1 = g.scales.detach()[1].clone()          # ~(0.01, 0.01, 0.004) after one Adam step
    stats = dens.densify_and_prune(g, opt, min_opacity=0.05, generator=_gen(7))
    assert (stats.cloned, stats.split, stats.pruned) == (1, 1, 2)
    assert stats.n_before == 5 and stats.n_after == 5 == g.num
    # layout: [g0, g3, clone of g0, 2 split children of g1]
    assert torch.equal(g.means[0], old_means[0]) and torch.equal(g.means[1], old_means[3])
    assert torch.equal(g.means[2], old_means[0])
    child_s = g.scales.detach()[3:]
    assert torch.allclose(child_s, old_scale1.expand(2, 3) / 1.6, rtol=1e-5)
    assert torch.allclose(g.quats.detach()[3:], old_quat1.expand(2, 4), atol=1e-6)
    assert not torch.equal(g.means[3], g.means[4])
    assert ((g.means[3:] - old_means[1]).norm(dim=-1) < 5 * 0.01).all()
    # optimizer: consistent, old rows keep their moments, new rows start at zero
    _check_optimizer(g, opt)
    assert torch.equal(opt.state[g.means]["exp_avg"][1], old_state3)
    assert torch.equal(opt.state[g.means]["exp_avg"][2:], torch.zeros(3, 3))
    assert dens.grad_accum.shape == (5,) and dens.denom.sum() == 0
    # Adam still works
    before = g.means.detach().clone()
    loss = (g.means ** 2).sum() + g.scales.sum() + g.sh.sum()
    loss.backward()
    opt.step()
    assert not torch.equal(before, g.means.detach())
    _check_optimizer(g, opt)


def test_split_sampling_distribution():
    g = GaussianSet(1)
    with torch.no_grad():
        g.scales_raw.copy_(inverse_softplus(torch.tensor([[0.02, 0.005, 0.001]])))
        g.quats_raw.copy_(torch.tensor([[2 ** -0.5, 0, 0, 2 ** -0.5]]))   # local x -> world y
    dens = Densifier(DensifyConfig(split_n=2000, max_world_scale_frac=10.0), n=1)
    dens.accumulate(torch.tensor([[1.0, 1.0]]), torch.tensor([True]), None, 10, 10)
    stats = dens.densify_and_prune(g, None, min_opacity=0.0, generator=_gen(8))
    assert stats.split == 1 and g.num == 2000
    std = g.means.detach().std(0)
    assert torch.allclose(std, torch.tensor([0.005, 0.02, 0.001]), rtol=0.1)


def test_opacity_reset_and_prune_helper():
    g, opt = _planted(torch.optim.Adam)
    dens = Densifier(DensifyConfig(), n=5)
    old = g.opacities.detach().clone()
    assert old[2] < 0.01 and (old[[0, 1, 3, 4]] > 0.4).all()
    dens.reset_opacity(g, opt)
    assert torch.allclose(g.opacities, torch.clamp(old, max=0.01), rtol=1e-5)
    assert g.opacities[2].item() == pytest.approx(old[2].item(), rel=1e-5)
    assert torch.equal(opt.state[g.opacity_logits]["exp_avg"], torch.zeros(5))
    _check_optimizer(g, opt)
    dens.accumulate(torch.ones(5, 2), torch.ones(5, dtype=torch.bool), None, 10, 10)
    removed = dens.prune(g, torch.tensor([True, False, False, True, False]), opt)
    assert removed == 2 and g.num == 3 and dens.grad_accum.shape == (3,)
    _check_optimizer(g, opt)
    extend_gaussians(g, {n: getattr(g, n).detach()[:1] for n in PARAM_NAMES}, opt)
    assert g.num == 4
    _check_optimizer(g, opt)
    prune_gaussians(g, torch.tensor([True, True, False, True]), opt)
    assert g.num == 3
    _check_optimizer(g, opt)


def test_prune_never_empties_a_branch():
    g = GaussianSet(0).init_random(100, generator=_gen(3))
    dens = Densifier(DensifyConfig(min_keep=10), g.num)
    with torch.no_grad():
        g.opacity_logits.copy_(torch.linspace(-9.0, -5.0, 100))   # all below any threshold
    stats = dens.densify_and_prune(g, None, min_opacity=0.5)
    assert g.num == 10 and stats.pruned == 90
    assert torch.allclose(g.opacity_logits, torch.linspace(-9.0, -5.0, 100)[-10:])


def test_densify_schedule():
    d = Densifier(DensifyConfig())
    assert d.min_opacity(0, 10000) == pytest.approx(0.05)
    assert d.min_opacity(500, 10000) == pytest.approx(0.05)        # ramp starts at start_step
    assert d.min_opacity(4750, 10000) == pytest.approx(0.175)      # half of the [500, 9000] window
    assert d.min_opacity(9000, 10000) == pytest.approx(0.30)
    assert d.min_opacity(10000, 10000) == pytest.approx(0.30)
    assert not d.should_densify(400, 10000) and d.should_densify(500, 10000)
    assert not d.should_densify(550, 10000) and d.should_densify(8900, 10000)
    assert not d.should_densify(9000, 10000)
    assert d.should_reset_opacity(3000, 10000) and d.should_reset_opacity(6000, 10000)
    assert not d.should_reset_opacity(0, 10000) and not d.should_reset_opacity(9000, 10000)


def test_step_schedule_gates_large_prune():
    g = GaussianSet(3)
    with torch.no_grad():
        g.scales_raw.copy_(inverse_softplus(torch.tensor([0.003, 0.05, 0.003])[:, None]
                                            .expand(3, 3).clone()))
        g.opacity_logits.copy_(torch.logit(torch.tensor([0.5, 0.5, 0.5])))
    dens = Densifier(DensifyConfig(), n=3)
    assert dens.step(450, 10000, g) is None and g.num == 3          # not due yet
    st = dens.step(500, 10000, g)                                   # due, before first reset
    assert st is not None and st.pruned == 0 and g.num == 3         # huge one survives
    st = dens.step(3100, 10000, g)                                  # after the first reset
    assert st.pruned == 1 and g.num == 2
    assert dens.step(6000, 10000, g).pruned == 0
    assert torch.allclose(g.opacities, torch.full((2,), 0.01))      # reset at 6000
