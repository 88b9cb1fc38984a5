"""Known-answer tests of eval/metrics/frames.py and eval/metrics/lpips_net.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from core.data.masks import head_mask
from core.data.media import read_clip
from eval.metrics.lpips_net import LPIPSAlex, LPIPSWeights, load_lpips, try_load_lpips
from eval.metrics.frames import (
    EYE_CORNERS,
    FACE_IDX,
    INNER_LIP_PAIRS,
    MOUTH_IDX,
    MetricUnavailable,
    aperture_scores,
    au_error,
    detect,
    face_mask,
    image_metrics,
    is_available,
    landmark_box,
    landmark_distance,
    landmark_metrics,
    lip_aperture,
    lpips,
    mask_box,
    psnr,
    ssim,
    video_landmark_metrics,
    video_lmd,
)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def may_frames(clips_dir) -> np.ndarray:
    """First 30 frames of may_5s at 256 x 256."""
    return read_clip(clips_dir / "may_5s.mp4", size=256, max_frames=30).frames


@pytest.fixture(scope="session")
def may_track(may_frames):
    return detect(may_frames)


def _clipped_rounded_mse(mu: float, sigma: float) -> float:
    """Exact E[(Q(mu + n) - mu)^2] for n ~ N(0, sigma^2), Q = round and clip to 0..255."""
    k = np.arange(256, dtype=np.float64)
    hi = np.where(k == 255, np.inf, (k + 0.5 - mu) / sigma)
    lo = np.where(k == 0, -np.inf, (k - 0.5 - mu) / sigma)
    p = norm.cdf(hi) - norm.cdf(lo)
    return float((p * (k - mu) ** 2).sum())


# ----------------------------------------------------------------------------- PSNR / SSIM
@pytest.mark.parametrize("mu, sigma", [(128.0, 5.0), (128.0, 20.0), (245.0, 12.0)])
def test_psnr_known_noise(mu, sigma):
    rng = np.random.default_rng(0)
    gt = np.full((256, 256, 3), mu, np.uint8)
    noisy = np.clip(np.round(mu + rng.normal(0, sigma, gt.shape)), 0, 255).astype(np.uint8)
    expected = 10 * math.log10(255.0 ** 2 / _clipped_rounded_mse(mu, sigma))
    assert psnr(noisy, gt) == pytest.approx(expected, abs=0.05)
    if mu == 128.0:  # no clipping: the textbook value (+1/12 for rounding)
        assert expected == pytest.approx(10 * math.log10(255.0 ** 2 / (sigma ** 2 + 1 / 12)),
                                         abs=1e-3)
    if mu == 245.0:  # clipping at 255 lowers the error: PSNR above the unclipped value
        assert expected > 10 * math.log10(255.0 ** 2 / sigma ** 2) + 0.3


def test_psnr_float_and_identical_and_mask():
    rng = np.random.default_rng(1)
    gt = np.full((128, 128, 3), 0.5, np.float32)
    noisy = gt + rng.normal(0, 0.02, gt.shape).astype(np.float32)
    assert psnr(noisy, gt) == pytest.approx(20 * math.log10(1 / 0.02), abs=0.05)
    assert psnr(gt, gt) == math.inf
    # noise only outside the face mask: face PSNR is inf, full-frame PSNR finite
    mask = np.zeros((128, 128), bool)
    mask[32:96, 40:90] = True
    outside = gt.copy()
    outside[~mask] = noisy[~mask]
    assert psnr(outside, gt, mask=mask) == math.inf
    assert math.isfinite(psnr(outside, gt))
    inside = gt.copy()
    inside[mask] = noisy[mask]
    mse = float(((noisy[mask] - gt[mask]).astype(np.float64) ** 2).mean())
    assert psnr(inside, gt, mask=mask) == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)
    with pytest.raises(ValueError):
        psnr(gt, gt, mask=np.zeros((128, 128), bool))
    with pytest.raises(ValueError):
        psnr(gt, np.zeros((128, 128, 3), np.uint8))


def test_ssim_known_answers(may_frames):
    f = may_frames[0]
    assert ssim(f, f) == pytest.approx(1.0, abs=1e-12)
    assert ssim(f, f, box=(60, 80, 200, 240)) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(2)
    noisy = np.clip(f + rng.normal(0, 10, f.shape), 0, 255).astype(np.uint8)
    s = ssim(noisy, f)
    assert 0.3 < s < 0.99
    assert ssim(f, noisy) == pytest.approx(s, abs=1e-9)  # symmetric
    assert ssim(np.clip(f + rng.normal(0, 30, f.shape), 0, 255).astype(np.uint8), f) < s


def test_face_region_helpers(may_frames, may_track):
    labels = np.zeros((256, 256), np.uint8)
    labels[100:150, 90:170] = 3  # FACE
    labels[130:140, 110:150] = 4  # MOUTH
    labels[10:20, 10:20] = 2  # HAIR: not face
    m = face_mask(labels)
    assert m.sum() == 50 * 80
    assert mask_box(m) == (90, 100, 170, 150)
    box = landmark_box(may_track.points[0], 256, 256)
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256 and (x1 - x0) > 60


def test_image_metrics_clip(may_frames, may_track):
    gt = may_frames[:4]
    rng = np.random.default_rng(3)
    pred = np.clip(gt + rng.normal(0, 8, gt.shape), 0, 255).astype(np.uint8)
    boxes = [landmark_box(p, 256, 256) for p in may_track.points[:4]]
    r = image_metrics(pred, gt, face_boxes=boxes, use_lpips=False)
    assert r.num_frames == 4
    assert r.psnr == pytest.approx(np.mean([psnr(p, g) for p, g in zip(pred, gt)]))
    assert 25 < r.psnr < 32 and 25 < r.psnr_face < 32
    assert 0 < r.ssim < 1 and 0 < r.ssim_face < 1
    assert isinstance(r.lpips, MetricUnavailable) and not is_available(r.lpips)
    assert str(r.lpips).startswith("unavailable")
    same = image_metrics(gt, gt, use_lpips=False)
    assert same.psnr == math.inf and same.ssim == pytest.approx(1.0)
    assert same.psnr_face is None


# ----------------------------------------------------------------------------- LPIPS
def _random_lpips(seed: int = 0) -> LPIPSAlex:
    torch.manual_seed(seed)
    net = LPIPSAlex()
    with torch.no_grad():
        for i in range(5):
            w = getattr(net, f"lin{i}").model[1].weight
            w.copy_(w.abs())  # lpips' learned heads are non-negative
    return net


def test_lpips_structure_random_weights(may_frames):
    net = _random_lpips()
    a, b = may_frames[:2], may_frames[2:4]
    d = net.distance(a, b)
    assert d.shape == (2,) and np.all(np.isfinite(d)) and np.all(d > 0)
    assert np.allclose(net.distance(a, a), 0.0, atol=1e-7)
    assert np.allclose(net.distance(b, a), d, rtol=1e-5)
    assert lpips(a[0], b[0], net) == pytest.approx(d[0], rel=1e-5)
    r = image_metrics(b, a, face_boxes=[(40, 40, 200, 220)] * 2, lpips_net=net)
    assert r.lpips == pytest.approx(float(d.mean()), rel=1e-5)
    assert is_available(r.lpips_face) and r.lpips_face > 0


def test_lpips_weight_files_round_trip(tmp_path, may_frames):
    """Weights saved in the original files' layouts load into the re-implementation."""
    net = _random_lpips(1)
    sd = net.state_dict()
    torch.save({k: v for k, v in sd.items() if k.startswith("features.")}
               | {"classifier.1.weight": torch.zeros(4096, 9216)}, tmp_path / "alex_backbone.pth")
    torch.save({k: v for k, v in sd.items() if k.startswith("lin")}, tmp_path / "alex.pth")
    loaded = load_lpips(LPIPSWeights(backbone=tmp_path / "alex_backbone.pth",
                                     linear=tmp_path / "alex.pth"))
    a, b = may_frames[0], may_frames[5]
    assert loaded.distance(a, b)[0] == pytest.approx(net.distance(a, b)[0], rel=1e-6)


def test_lpips_unavailable_path(tmp_path):
    cfg = LPIPSWeights(backbone=tmp_path / "missing_backbone.pth", linear=tmp_path / "missing.pth")
    net, reason = try_load_lpips(cfg)
    assert net is None and "AlexNet" in reason and "alex.pth" in reason
    img = np.zeros((64, 64, 3), np.uint8)
    assert lpips(img, img, weights=cfg) is None  # never a made-up number
    u = MetricUnavailable(reason)
    assert str(u).startswith("unavailable: ") and u.reason == reason and not is_available(u)


# ----------------------------------------------------------------------------- LMD
def test_landmark_distance_known_answers():
    rng = np.random.default_rng(4)
    gt = rng.uniform(50, 200, (6, 478, 2))
    assert landmark_distance(gt, gt) == 0.0
    assert landmark_distance(gt, gt, FACE_IDX) == 0.0
    moved = gt + np.array([3.0, 4.0])  # pure translation: removed by centring
    assert landmark_distance(moved, gt) == pytest.approx(0.0, abs=1e-9)
    assert landmark_distance(moved, gt, normalise_center=False) == pytest.approx(5.0)
    # move 10 of the 40 mouth points down by 2 px: the centre moves 0.5 px, so after
    # centring 10 points are off by 1.5 px and 30 by 0.5 px -> mean 0.75 px
    pred = gt.copy()
    pred[:, list(MOUTH_IDX[:10]), 1] += 2.0
    assert landmark_distance(pred, gt) == pytest.approx((10 * 1.5 + 30 * 0.5) / 40)
    assert landmark_distance(pred, gt, normalise_center=False) == pytest.approx(0.5)
    # frames with NaN are skipped
    pred[0] = np.nan
    assert landmark_distance(pred, gt) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        landmark_distance(gt[:, :10], gt)


def test_video_lmd_real_frames(may_frames):
    frames = may_frames[:12]
    assert video_lmd(frames, frames) == 0.0
    # the same clip moved 6 px right, 4 px down (edge-padded): centred mouth LMD stays
    # near 0, the uncentred distance is the shift
    shifted = np.pad(frames, ((0, 0), (4, 0), (6, 0), (0, 0)), mode="edge")[:, :256, :256]
    ts, tg = detect(shifted), detect(frames)
    lmd = landmark_distance(ts.points, tg.points)
    raw = landmark_distance(ts.points, tg.points, normalise_center=False)
    assert lmd < 1.0
    assert raw == pytest.approx(math.hypot(6, 4), abs=1.0)
    same = video_landmark_metrics(frames, frames)
    assert (same.lmd_mouth, same.lmd_face, same.aue_upper, same.aue_lower) == (0, 0, 0, 0)
    assert same.valid_fraction == 1.0
    with pytest.raises(ValueError):
        video_lmd(frames, frames[:, :200, :200])


# ----------------------------------------------------------------------------- AUE
def test_au_error(may_track):
    pts = may_track.filled()
    e0 = au_error(pts, pts)
    assert e0.upper == 0.0 and e0.lower == 0.0
    closed = pts.copy()
    closed[:, 14] = closed[:, 13]  # lower inner lip on the upper: mouth shut, eyes untouched
    e = au_error(closed, pts)
    assert e.lower > 0.1
    assert e.upper < 0.02
    assert set(e.per_au) == {"AU01", "AU04", "AU05", "AU06", "AU07", "AU45", "AU25"}
    s = landmark_metrics(closed, pts)
    assert s.aue_lower == pytest.approx(e.lower) and s.lmd_mouth > 0 and s.valid_fraction == 1.0


# ----------------------------------------------------------------------------- head region
def test_head_region_psnr_and_ssim(may_frames):
    labels = np.zeros((256, 256), np.uint8)
    labels[:, :] = 1                # TORSO / plate
    labels[40:200, 60:200] = 2      # HAIR
    labels[80:200, 80:180] = 3      # FACE
    labels[150:165, 110:150] = 4    # MOUTH
    head = head_mask(labels)
    assert head.sum() == 160 * 140 and not head[0, 0]
    assert face_mask(labels).sum() == 120 * 100
    gt = may_frames[0]
    rng = np.random.default_rng(5)
    noisy = np.clip(gt + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8)
    # a wrong plate does not touch the head scores; SSIM windows (radius 5 px at sigma 1.5)
    # that stay inside the head see identical pixels
    plate_wrong = np.where(head[..., None], gt, noisy)
    assert psnr(plate_wrong, gt, mask=head) == math.inf
    inner = np.zeros_like(head)
    inner[46:194, 66:194] = True
    assert ssim(plate_wrong, gt, mask=inner) == pytest.approx(1.0, abs=1e-12)
    assert ssim(plate_wrong, gt) < 0.9
    # a wrong head and the recorded plate: full-frame PSNR gains from the copied plate
    head_wrong = np.where(head[..., None], noisy, gt)
    r = image_metrics([head_wrong], [gt], head_masks=[head], use_lpips=False)
    mse = ((noisy[head].astype(float) - gt[head].astype(float)) ** 2).mean()
    assert r.psnr_head == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-9)
    assert r.psnr == pytest.approx(r.psnr_head + 10 * math.log10(head.size / head.sum()),
                                   abs=1e-9)
    assert r.ssim_head < r.ssim - 0.2
    assert ssim(head_wrong, gt, mask=inner) == pytest.approx(
        ssim(head_wrong, gt, box=(66, 46, 194, 194)), abs=0.02)
    with pytest.raises(ValueError, match="empty mask"):
        ssim(gt, gt, mask=np.zeros_like(head))


# ----------------------------------------------------------------------------- lip aperture
def _face(gaps: list[float], eyes: float = 100.0) -> np.ndarray:
    """(T, 478, 2) landmarks: eye corners ``eyes`` px apart, inner lips open by ``gaps``."""
    p = np.zeros((len(gaps), 478, 2))
    p[:, EYE_CORNERS[0]] = (50.0, 50.0)
    p[:, EYE_CORNERS[1]] = (50.0 + eyes, 50.0)
    for t, g in enumerate(gaps):
        for k, (up, lo) in enumerate(INNER_LIP_PAIRS):
            p[t, up] = (80.0 + 10 * k, 120.0)
            p[t, lo] = (80.0 + 10 * k, 120.0 + g)
    return p


def test_lip_aperture_known_geometry():
    a = lip_aperture(_face([0.0, 10.0, 25.0]))
    assert a == pytest.approx([0.0, 0.1, 0.25])
    # scale-free: the same face twice as large (or rotated) has the same aperture
    assert lip_aperture(2.0 * _face([0.0, 10.0, 25.0])) == pytest.approx(a)
    th = 0.3
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    assert lip_aperture(_face([0.0, 10.0, 25.0]) @ rot.T) == pytest.approx(a)
    one = _face([10.0])
    one[0, INNER_LIP_PAIRS[0][1], 1] += 30.0  # one side open 40 px, the others 10 px
    assert lip_aperture(one) == pytest.approx([(40 + 10 + 10) / 3 / 100])
    with pytest.raises(ValueError):
        lip_aperture(np.zeros((3, 10, 2)))


def test_aperture_r_and_spread_known_answers():
    rng = np.random.default_rng(6)
    gaps = rng.uniform(0, 30, 50)
    gt = _face(list(gaps))
    same = aperture_scores(gt, gt)
    assert same.r == pytest.approx(1.0) and same.spread == pytest.approx(1.0)
    assert same.num_frames == 50
    half = aperture_scores(_face(list(0.5 * gaps + 5)), gt)  # follows, half as much
    assert half.r == pytest.approx(1.0) and half.spread == pytest.approx(0.5)
    anti = aperture_scores(_face(list(30 - gaps)), gt)  # opens when the person closes
    assert anti.r == pytest.approx(-1.0) and anti.spread == pytest.approx(1.0)
    static = aperture_scores(_face([12.0] * 50), gt)  # an average mouth: no score
    assert math.isnan(static.r) and static.spread == 0.0
    # frames without a face in either track are left out
    pred = _face(list(gaps))
    pred[:10] = np.nan
    part = aperture_scores(pred, gt)
    assert part.num_frames == 40 and part.r == pytest.approx(1.0)
    valid = np.ones(50, bool)
    valid[:48] = False
    with pytest.raises(ValueError, match="need 3"):
        aperture_scores(gt, gt, valid)


def test_pose_partialled_aperture_r_known_answers():
    """A mouth that only follows the head scores r but no pose-partialled r; a mouth that
    follows the lips keeps it."""
    from scipy.spatial.transform import Rotation

    from eval.metrics.frames import partial_r, pose_covariates

    rng = np.random.default_rng(3)
    n = 200
    pitch = 0.2 * np.sin(np.linspace(0, 9, n))               # radians: the person nods
    lips = rng.uniform(0, 20, n)                               # the audio-driven part
    views = np.tile(np.eye(4), (n, 1, 1))
    views[:, :3, :3] = Rotation.from_rotvec(np.c_[pitch, np.zeros(n), np.zeros(n)]).as_matrix()
    views[:, 2, 3] = 0.5
    pose = pose_covariates(views)
    assert pose.shape == (n, 6)
    assert pose[:, 0] == pytest.approx(pitch - pitch.mean(), abs=1e-3)
    assert pose[:, 1:3] == pytest.approx(0.0, abs=1e-9) and pose[:, 5] == pytest.approx(0.5)
    gt = _face(list(10 + lips + 40 * pitch))                   # opens as he nods
    jitter = rng.uniform(0, 4, n)                              # unrelated to the lips
    follows_head = aperture_scores(_face(list(10 + 40 * pitch + jitter)), gt, pose=pose)
    assert follows_head.r > 0.4 and abs(follows_head.r_pose) < 0.2
    follows_lips = aperture_scores(_face(list(lips + jitter / 4)), gt, pose=pose)
    assert follows_lips.r_pose > 0.95 and follows_lips.r < 0.9
    assert math.isnan(aperture_scores(_face(list(10 + 40 * pitch)), gt, pose=pose).r_pose)
    assert math.isnan(aperture_scores(gt, gt).r_pose)          # no pose given
    assert math.isnan(partial_r(lips[:3], lips[:3], pose[:3]))  # fewer frames than covariates
    with pytest.raises(ValueError, match="pose per frame"):
        aperture_scores(gt, gt, pose=pose[:10])


def test_aperture_r_on_real_frames(may_track):
    pts = may_track.filled()
    assert aperture_scores(pts, pts).r == pytest.approx(1.0)
    # the same mouth 5 frames (0.2 s) late does not follow the recording
    late = aperture_scores(pts[5:], pts[:-5])
    assert late.r < 0.3 and late.spread == pytest.approx(1.0, abs=0.1)


def test_mouth_crops_pick_the_widest_open_frames_and_centre_the_lips() -> None:
    """``eval.studies.mouth_crops``: frames ranked by the inner-lip gap (no face last), the crop
    centred on the outer lips and sized by the eye distance, clipped to the frame."""
    from core.data.masks import OUTER_LIPS
    from eval.metrics.frames import EYE_CORNERS, INNER_LIP_PAIRS
    from eval.studies.mouth_crops import lips_box, widest_open

    pts = np.zeros((5, 478, 3))
    pts[:, EYE_CORNERS[0], :2], pts[:, EYE_CORNERS[1], :2] = (100, 100), (150, 100)  # 50 px
    pts[:, list(OUTER_LIPS), :2] = (125, 160)
    for t, gap in enumerate([2.0, 9.0, 0.0, 5.0, 1.0]):
        for a, b in INNER_LIP_PAIRS:
            pts[t, a, :2], pts[t, b, :2] = (125, 160 - gap / 2), (125, 160 + gap / 2)
    pts[4] = np.nan                                   # no face found
    assert widest_open(pts, 3).tolist() == [1, 3, 0]
    assert widest_open(pts, 5)[-1] == 4
    assert lips_box(pts[0], 256) == (105, 144, 145, 176)   # 40 x 32 px around (125, 160)
    assert lips_box(pts[0], 170) == (105, 144, 145, 170)   # clipped at the frame's edge
