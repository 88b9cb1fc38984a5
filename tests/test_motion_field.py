"""Known-answer tests for core.model.motion_field (CPU, a few seconds)."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from core.model.motion_field import (
    EMA, FACE_PLANES, MOUTH_PLANES, AudioAttention, AudioConfig, AudioEncoder, AudioNet,
    ExpressionEncoder, FaceMotionField, FaceUMF, Motion, MotionAligner, MouthMotionField,
    MouthUMF, PersonalizedField, TriPlaneConfig, TriPlaneEncoder, aligned_motion,
    audio_windows, bound_offset, face_mouth_hook, motion_magnitude_loss,
    negative_contrast_loss, sample_hook_k)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of a module."""
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _planes_params(cfg: TriPlaneConfig) -> int:
    return 3 * sum((r + 1) ** 2 for r in cfg.resolutions)


# --------------------------------------------------------------------------- tri-plane
def test_resolutions():
    r = FACE_PLANES.resolutions
    assert len(r) == 12 and r[0] == 16 and r[-1] == 38 and r == sorted(r)
    m = MOUTH_PLANES.resolutions
    assert len(m) == 12 and all(58 <= x <= 64 for x in m) and max(m) + 1 <= 65
    enc = TriPlaneEncoder(FACE_PLANES)
    assert enc(torch.zeros(7, 3)).shape == (7, 36)
    assert enc(torch.zeros(2, 5, 3)).shape == (2, 5, 36)
    for p in enc.levels:
        assert p.abs().max() <= 1e-4


def test_triplane_vertex_exact_bitwise():
    # dyadic vertices (bound 1, 4 cells): the lookup is exact to the last bit
    enc = TriPlaneEncoder(TriPlaneConfig(n_levels=1, base_resolution=4, max_resolution=4,
                                         bound=1.0))
    with torch.no_grad():
        enc.levels[0].zero_()
        enc.levels[0][0, 3, 1] = 0.123456789   # xy plane, vertex i=1 (x=-0.5), j=3 (y=0.5)
        enc.levels[0][1, 0, 4] = -7.25         # yz plane, vertex i=4 (y=1), j=0 (z=-1)
    f = enc(torch.tensor([[-0.5, 0.5, 0.3], [0.2, 1.0, -1.0]]))
    assert f[0, 0].item() == torch.tensor(0.123456789).item()
    assert f[1, 1].item() == -7.25
    assert f[0, 1].item() == 0.0 and f[1, 0].item() == 0.0


def test_triplane_planted_value_real_config():
    enc = TriPlaneEncoder(FACE_PLANES)
    L, b = 12, FACE_PLANES.bound
    with torch.no_grad():
        for p in enc.levels:
            p.zero_()
    # centre vertex of an even-resolution level: exact
    lvl = FACE_PLANES.resolutions.index(20)
    with torch.no_grad():
        enc.levels[lvl][2, 10, 10] = 0.5      # xz plane centre
    f = enc(torch.zeros(1, 3))
    assert f[0, 2 * L + lvl].item() == 0.5
    assert (f[0].abs() > 0).sum() == 1
    # an arbitrary vertex of the finest level (rounding of x/bound only)
    R = FACE_PLANES.resolutions[-1]
    i, j = 7, 29
    with torch.no_grad():
        enc.levels[lvl].zero_()
        enc.levels[-1][0, j, i] = 1.0
    x = -b + 2 * b * i / R
    y = -b + 2 * b * j / R
    f = enc(torch.tensor([[x, y, 0.01]]))
    assert abs(f[0, L - 1].item() - 1.0) < 1e-5
    # halfway between two vertices: bilinear average
    x2 = -b + 2 * b * (i + 0.5) / R
    f = enc(torch.tensor([[x2, y, 0.0]]))
    assert abs(f[0, L - 1].item() - 0.5) < 1e-5


def test_triplane_clamps_outside_bound():
    enc = TriPlaneEncoder(FACE_PLANES)
    with torch.no_grad():
        for p in enc.levels:
            p.normal_()
    a = enc(torch.tensor([[0.4, -0.9, 0.05]]))
    b = enc(torch.tensor([[0.15, -0.15, 0.05]]))
    assert torch.allclose(a, b)


# --------------------------------------------------------------------------- audio
@pytest.mark.parametrize("dim", [80, 1024])
def test_audionet_reduces_16_steps(dim):
    net = AudioNet(AudioConfig(feat_dim=dim))
    x = torch.randn(3, 16, dim)
    assert net.conv(x.transpose(1, 2)).shape == (3, 64, 1)
    assert net(x).shape == (3, 32)
    convs = [m for m in net.conv if isinstance(m, nn.Conv1d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3,) and c.stride == (2,) for c in convs)
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.02}


def test_audio_attention_and_encoder():
    att = AudioAttention()
    code = torch.randn(2, 1, 32)
    out, w = att(code.expand(2, 8, 32))
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert torch.allclose(out, code[:, 0], atol=1e-6)   # constant window -> that code
    enc = AudioEncoder(AudioConfig(feat_dim=80))
    x = torch.randn(2, 8, 16, 80)
    assert enc(x).shape == (2, 32)
    assert torch.allclose(enc(x, use_attention=False), enc.net(x[:, 4]))
    with pytest.raises(ValueError):
        enc(x[:, 0])


def test_audio_windows_clamp():
    T = 6
    feats = torch.arange(T, dtype=torch.float32)[:, None, None].expand(T, 16, 3)
    w = audio_windows(feats, 0)
    assert w.shape == (1, 8, 16, 3)
    assert w[0, :, 0, 0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    w = audio_windows(feats, torch.tensor([3, 5]))
    assert w[0, :, 0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 5]
    assert w[1, :, 0, 0].tolist() == [1, 2, 3, 4, 5, 5, 5, 5]


def test_expression_encoder():
    e = ExpressionEncoder()
    aus, blink = torch.randn(4, 5), torch.rand(4)
    out = e(aus, blink)
    assert out.shape == (4, 6) and torch.equal(out[:, 5], blink)
    assert count_parameters(e) == 5 * 16 + 16 * 5


# --------------------------------------------------------------------------- fields
def test_face_field_shapes_and_counts():
    f = FaceMotionField()
    xyz = torch.rand(50, 3) * 0.2 - 0.1
    m = f(xyz, torch.randn(32), torch.randn(6))
    assert m.d_xyz.shape == (50, 3) and m.d_quat.shape == (50, 4) and m.d_scale.shape == (50, 3)
    assert m.audio_gate.shape == (50, 32) and m.eye_gate.shape == (50, 6)
    assert (m.eye_gate >= 0).all()
    mb = f(xyz, torch.randn(2, 32), torch.randn(2, 6))
    assert mb.d_xyz.shape == (2, 50, 3) and mb.d_quat.shape == (2, 50, 4)
    assert all(lin.bias is None for lin in f.mlp if isinstance(lin, nn.Linear))
    mlp = (36 * 32 + 32 * 32) + (36 * 16 + 16 * 6) + (74 * 64 + 64 * 64 + 64 * 10)
    assert count_parameters(f) == _planes_params(FACE_PLANES) + mlp
    # Δxyz is the MLP output x 0.01
    enc = f.encoder(xyz)
    a, e = torch.randn(32), torch.randn(6)
    raw = f.mlp(torch.cat([enc, a * f.audio_gate(enc), e * torch.relu(f.eye_gate(enc))], -1))
    m = f(xyz, a, e)
    assert torch.allclose(m.d_xyz, raw[:, :3] * 0.01) and torch.allclose(m.d_quat, raw[:, 3:7])
    assert torch.allclose(m.d_scale, raw[:, 7:10])


def test_mouth_field_xz_scaled_by_fifth():
    f = MouthMotionField()
    with torch.no_grad():
        last = f.mlp[-1].weight
        last[1] = last[0]
        last[2] = last[0]
        f.scaler[-1].weight.zero_()          # scaler = 2 * sigmoid(0) = 1
    xyz = torch.rand(40, 3) * 0.1 - 0.05
    m = f(xyz, torch.randn(32), torch.randn(3))
    assert m.d_xyz.shape == (40, 3) and m.scaler.shape == (40, 1)
    assert torch.allclose(m.scaler, torch.ones(40, 1))
    d = m.d_xyz
    assert d[:, 1].abs().max() > 0
    assert torch.allclose(d[:, 0], d[:, 1] / 5, atol=1e-12, rtol=1e-5)
    assert torch.allclose(d[:, 2], d[:, 1] / 5, atol=1e-12, rtol=1e-5)
    mb = f(xyz, torch.randn(3, 32), torch.randn(3, 3))
    assert mb.d_xyz.shape == (3, 40, 3) and mb.scaler.shape == (3, 40, 1)
    mlp = (71 * 32 + 32 * 32 + 32 * 3) + (39 * 16 + 16 * 16 + 16)
    assert count_parameters(f) == _planes_params(MOUTH_PLANES) + mlp


def test_mouth_scaler_in_range():
    f = MouthMotionField()
    with torch.no_grad():
        for p in f.scaler.parameters():
            p.normal_(0, 30)
        for p in f.encoder.parameters():
            p.normal_()
    xyz, hook = torch.rand(100, 3) * 0.2 - 0.1, torch.randn(3) * 10
    m = f(xyz, torch.randn(32), hook)
    # the scaler is 2 sigmoid(MLP(encoding, hook)), the same for every audio input
    logits = f.scaler(torch.cat([f.encoder(xyz), hook.expand(100, 3)], -1))
    assert torch.allclose(m.scaler, 2.0 * torch.sigmoid(logits))
    assert torch.equal(f(xyz, torch.randn(32), hook).scaler, m.scaler)
    # large weights saturate it at both ends of (0, 2)
    assert m.scaler.min() < 0.01 and m.scaler.max() > 1.99


def test_personalized_fields():
    xyz = torch.rand(20, 3) * 0.2 - 0.1
    pf = PersonalizedField("face")
    r = pf(xyz, torch.randn(32), torch.randn(6))
    assert r.d_xyz.shape == (20, 3) and r.d_quat.shape == (20, 4) and r.d_scale.shape == (20, 3)
    assert count_parameters(pf) == _planes_params(FACE_PLANES) + 74 * 32 + 32 * 32 + 32 * 10
    pm = PersonalizedField("mouth")
    r2 = pm(xyz, torch.randn(32), torch.randn(3))
    assert r2.d_xyz.shape == (20, 3) and r2.d_quat is None
    assert count_parameters(pm) == _planes_params(MOUTH_PLANES) + 71 * 16 + 16 * 16 + 16 * 3
    u = FaceMotionField()(xyz, torch.randn(32), torch.randn(6))
    s = u.plus(r)
    assert torch.allclose(s.d_xyz, u.d_xyz + r.d_xyz) and s.audio_gate is u.audio_gate


# --------------------------------------------------------------------------- hook
def test_hook_kth_values():
    y = torch.randn(1000, requires_grad=True)
    for k in (1, 10, 37, 50):
        h = face_mouth_hook(y, k)
        srt = torch.sort(y.detach(), descending=True).values
        assert h.shape == (3,) and not h.requires_grad
        assert h[0].item() == pytest.approx(srt[k - 1].item() * 100, rel=1e-6)
        assert h[1].item() == pytest.approx(srt[-k].item() * 100, rel=1e-6)
        assert h[2].item() == pytest.approx((srt[k - 1] - srt[-k]).item() * 100, rel=1e-5)
        assert h[0] == torch.topk(y.detach(), k).values[-1] * 100
    yb = torch.randn(4, 300)
    hb = face_mouth_hook(yb, 10)
    assert hb.shape == (4, 3)
    assert torch.equal(hb[:, 1], torch.sort(yb, dim=1).values[:, 9] * 100)
    # k larger than N is clamped to N (k-th largest = min, k-th smallest = max)
    assert torch.equal(face_mouth_hook(torch.arange(5.0), 100), torch.tensor([0., 400., -400.]))
    assert torch.equal(face_mouth_hook(torch.arange(5.0), 1), torch.tensor([400., 0., 400.]))


def test_hook_k_rule():
    gen = torch.Generator().manual_seed(0)
    ks = [sample_hook_k(True, gen) for _ in range(500)]
    assert min(ks) == 10 and max(ks) == 50
    assert sample_hook_k(False) == 10


# --------------------------------------------------------------------------- aligner
def test_aligner_range_and_formula():
    a = MotionAligner()
    assert count_parameters(a) == _planes_params(FACE_PLANES) + 36 * 32 + 32 * 6
    xyz = torch.rand(30, 3) * 0.3 - 0.15
    p_xyz, p_scale = a(xyz)
    out = a.mlp(a.encoder(xyz))
    assert torch.allclose(p_xyz, out[:, :3] * 0.01)
    assert torch.allclose(p_scale, 1 + 0.25 * torch.tanh(out[:, 3:] / 5))
    assert (p_xyz.abs() < 1e-4).all() and ((p_scale - 1).abs() < 1e-4).all()   # near identity
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0, 1e3)
    _, p_scale = a(xyz)
    assert p_scale.min() <= 0.7501 and p_scale.max() >= 1.2499        # saturated...
    assert (p_scale > 0.75).all() and (p_scale < 1.25).all()          # ...but strictly inside


def test_aligned_motion():
    umf, al = FaceMotionField(), MotionAligner()
    with torch.no_grad():
        for p in al.parameters():
            p.normal_(0, 0.5)
    xyz = torch.rand(25, 3) * 0.2 - 0.1
    a, e = torch.randn(32), torch.randn(6)
    m = aligned_motion(umf, al, xyz, a, e)
    p_xyz, p_scale = al(xyz)
    ref = umf(xyz + p_xyz, a, e)
    assert p_xyz.abs().max() > 0
    assert torch.allclose(m.d_xyz, ref.d_xyz * p_scale)
    assert torch.allclose(m.d_quat, ref.d_quat) and torch.equal(m.p_xyz, p_xyz)
    plain = aligned_motion(umf, None, xyz, a, e)
    assert torch.allclose(plain.d_xyz, umf(xyz, a, e).d_xyz) and plain.p_xyz is None


# --------------------------------------------------------------------------- losses
def test_negative_contrast_loss():
    n = 10
    ex = torch.zeros(n, 3)
    ex[:, 0] = 1
    ey = torch.zeros(n, 3)
    ey[:, 1] = 1
    d_self = (2.0 * ex).requires_grad_(True)
    assert negative_contrast_loss(d_self, [3 * ey, -ey]).item() == 0.0
    other1 = (3.0 * ex).requires_grad_(True)
    other2 = (-1.0 * ex + ey).requires_grad_(True)
    loss = negative_contrast_loss(d_self, [other1, other2])
    # other1: <2x, 3x> = 6 over rms 2 * 3 -> 1 (same direction); other2: <2x, -x + y> < 0 -> 0
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2)
    loss.backward()
    assert other1.grad is None and other2.grad is None
    # gradient of the first pair only: other1 / (rms(self) rms(other1)) / (pairs * n)
    assert torch.allclose(d_self.grad, other1.detach() / (2 * 3) / (2 * n))
    assert negative_contrast_loss(d_self, []).item() == 0.0
    # scale-free: the same directions 1000x smaller give the same value
    tiny = negative_contrast_loss(d_self.detach() * 1e-3, [other1.detach() * 1e-3])
    assert tiny.item() == pytest.approx(1.0, rel=1e-4)
    # motionless fields give 0, not NaN
    assert negative_contrast_loss(torch.zeros(n, 3), [torch.zeros(n, 3)]).item() == 0.0


def test_motion_magnitude_loss():
    m = Motion(d_xyz=torch.full((4, 3), -0.5), d_quat=torch.full((4, 4), 2.0),
               d_scale=torch.zeros(4, 3), p_xyz=torch.full((4, 3), 0.25))
    assert motion_magnitude_loss(m).item() == pytest.approx(0.5 + 2.0 + 0.0 + 0.25)
    assert motion_magnitude_loss(Motion(d_xyz=torch.ones(2, 3))).item() == 1.0


# --------------------------------------------------------------------------- EMA
def test_ema_known_answer(tmp_path):
    from safetensors.torch import load_file, save_file
    model = nn.Linear(3, 2)
    d = 0.995
    thetas = [torch.randn(2, 3) for _ in range(4)]
    with torch.no_grad():
        model.weight.copy_(thetas[0])
    ema = EMA(model, decay=d)
    for th in thetas[1:]:
        with torch.no_grad():
            model.weight.copy_(th)
        ema.update(model)
    t = len(thetas) - 1
    expected = d ** t * thetas[0] + sum((1 - d) * d ** (t - i) * thetas[i] for i in range(1, t + 1))
    sd = ema.averaged_state_dict(model)
    assert torch.allclose(sd["weight"], expected, atol=1e-6)
    assert not torch.allclose(sd["weight"], model.weight)
    save_file(sd, str(tmp_path / "ema.safetensors"))
    loaded = load_file(str(tmp_path / "ema.safetensors"))
    assert torch.allclose(loaded["weight"], expected, atol=1e-6)
    with ema.applied(model):
        assert torch.allclose(model.weight, expected, atol=1e-6)
    assert torch.equal(model.weight.detach(), thetas[-1])      # raw weights restored
    ema2 = EMA(nn.Linear(3, 2))
    ema2.load_state_dict(ema.state_dict())
    assert ema2.num_updates == 3 and torch.equal(ema2.shadow["weight"], ema.shadow["weight"])


def test_ema_on_umf_is_not_raw():
    f = FaceMotionField()
    ema = EMA(f)
    opt = torch.optim.AdamW(f.parameters(), lr=1e-2)
    xyz = torch.rand(64, 3) * 0.2 - 0.1
    for _ in range(3):
        loss = f(xyz, torch.randn(32), torch.randn(6)).d_xyz.pow(2).sum() - f.mlp[0].weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(f)
    sd = ema.averaged_state_dict(f)
    assert set(sd) == set(f.state_dict())
    assert not torch.allclose(sd["mlp.0.weight"], f.mlp[0].weight)


# --------------------------------------------------------------------------- full branches
def test_umf_branches_end_to_end():
    from core.model.gaussians import FACE_INIT, MOUTH_INIT, GaussianSet
    face_g = GaussianSet().init_box(FACE_INIT, generator=torch.Generator().manual_seed(0))
    mouth_g = GaussianSet().init_box(MOUTH_INIT, generator=torch.Generator().manual_seed(1))
    face, mouth, al = FaceUMF(AudioConfig(feat_dim=80)), MouthUMF(AudioConfig(feat_dim=80)), \
        MotionAligner()
    win = audio_windows(torch.randn(20, 16, 80), 7)[0]                 # (8, 16, 80)
    a, e = face.encode(win, torch.rand(5), torch.tensor(0.3))
    assert a.shape == (32,) and e.shape == (6,)
    fm = aligned_motion(face.field, al, face_g.means, a, e)
    assert fm.d_xyz.shape == (2000, 3)
    hook = face_mouth_hook(fm.d_xyz[:, 1], sample_hook_k(True))
    mm = mouth(mouth_g.means, win, hook)
    assert mm.d_xyz.shape == (5000, 3)
    ga, gm = face_g.activated(fm), mouth_g.activated(mm)
    assert ga.means.shape == (2000, 3) and gm.scales.shape == (5000, 3)
    loss = ga.means.sum() + ga.scales.sum() + gm.means.sum() + motion_magnitude_loss(fm)
    loss.backward()
    assert face.field.encoder.levels[0].grad is not None
    assert face.audio.net.conv[0].weight.grad is not None
    assert al.mlp[0].weight.grad is not None and mouth.field.mlp[0].weight.grad is not None
    # batch of frames
    wins = audio_windows(torch.randn(20, 16, 80), torch.tensor([0, 19]))
    ab, eb = face.encode(wins, torch.rand(2, 5), torch.rand(2))
    assert face.field(face_g.means[:10], ab, eb).d_xyz.shape == (2, 10, 3)
    # generic aligner on the mouth field
    mal = aligned_motion(mouth.field, MotionAligner(MOUTH_PLANES), mouth_g.means[:10], a, hook)
    assert mal.d_xyz.shape == (10, 3) and mal.p_scale.shape == (10, 3)


def test_mouth_offsets_are_bounded_when_asked_and_reset_to_none():
    """``bound_offset``: the identity without a bound, about the identity for small offsets,
    never beyond the bound, order kept; a mouth field with ``max_offset`` applies it to its
    whole Δxyz (code basis included); :func:`reset_mouth_offsets` makes every offset 0."""
    from core.model.head import UMF
    from core.train.adapt import reset_mouth_offsets

    d = torch.tensor([[-1.0, -0.02, -1e-4], [0.0, 1e-4, 0.02], [0.3, 5.0, -5.0]])
    assert torch.equal(bound_offset(d, None), d)
    b = bound_offset(d, 0.02)
    assert torch.allclose(b[d.abs() <= 1e-4], d[d.abs() <= 1e-4], rtol=1e-6)
    assert float(b.abs().max()) < 0.02 and float(b[2, 1]) == pytest.approx(0.02, rel=1e-6)
    assert float(b[0, 1]) == pytest.approx(-0.02 * float(torch.tanh(torch.tensor(1.0))))
    flat = d.flatten().sort().values
    assert bool((bound_offset(flat, 0.02).diff() >= 0).all())  # never reorders (ties saturate)

    umf = UMF(80, code_dim=4)
    f = umf.mouth.field
    with torch.no_grad():
        f.mlp[-1].weight.normal_(0, 50.0)                 # offsets of metres, as a broken prior
        f.code_basis.mlp[-1].weight.normal_(0, 50.0)
    xyz, code = torch.rand(30, 3) * 0.04 - 0.02, torch.randn(4)
    audio_dim = f.mlp[0].in_features - f.encoder.out_dim - 3   # the audio code + code features
    args = (xyz, torch.randn(audio_dim), torch.tensor([0.7, -3.0, 3.7]))
    free = f(*args, code=code).d_xyz
    assert float(free.abs().max()) > 0.1
    f.max_offset = 0.02
    held = f(*args, code=code).d_xyz
    assert torch.allclose(held, bound_offset(free, 0.02)) and float(held.abs().max()) < 0.02
    reset_mouth_offsets(umf)
    assert torch.equal(f(*args, code=code).d_xyz, torch.zeros(30, 3))
