"""Image and landmark metrics of METHOD.md section 8, and the lip-aperture scores.

One concept: *how close a rendered clip is to the recorded one*, frame by frame.

Image metrics (frames ``(H, W, 3)`` uint8 RGB, or float in [0, 1]):
  * PSNR: ``10 log10(MAX^2 / MSE)`` with MAX = 255 (uint8) or 1 (float), MSE over all
    pixels and channels; ``inf`` for identical images. Region PSNR: MSE over the pixels
    of a boolean mask only. *Head* region (``core.data.masks.head_mask``: hair + face +
    mouth labels) = the pixels an avatar renders; the full frame also counts the torso
    and background copied from the recorded test frame (the plate), which a method gets
    for free.
  * *Boundary band* (:func:`boundary_band`): the pixels within ``b`` pixels of the
    recorded head boundary on either side, ``dilate(head, b) & ~erode(head, b)`` with a
    disc of radius ``b``; ``b`` = 4 px at 256 px, scaled with the frame size, at least 1
    (:class:`BandConfig`, :func:`band_width`), so about an 8-px wide ring where the head
    meets the neck, hair edge and background. The frame edge is not a boundary (a head
    cut by the frame has no band there). Band PSNR / SSIM = region PSNR / SSIM there:
    the edge halos and background lines a head-only score averages away.
  * SSIM: ``skimage.metrics.structural_similarity`` on the RGB image (channel mean),
    Gaussian window sigma 1.5 without sample-covariance correction (Wang et al. 2004's
    reference settings; :class:`SSIMConfig`). Head and band region: the mean of the SSIM
    map (:func:`ssim_map`) over the mask's pixels. Face region: SSIM of the bounding-box
    crop of the face mask.
  * LPIPS (AlexNet, v0.1) through :mod:`eval.metrics.lpips_net`; when its weights are absent
    the result is a :class:`MetricUnavailable` string, never a number.

Landmark metrics (FaceMesh, :func:`core.data.landmarks.detect_landmarks` on both clips):
  * LMD: mean L2 distance in pixels between predicted and recorded landmarks after
    centring each frame's set on its own mean (METHOD.md section 8). Mouth set
    :data:`MOUTH_IDX` = the 40 lip-contour points (20 outer + 20 inner lip, the
    ``core.data.masks`` polygons); face set :data:`FACE_IDX` = the 468 mesh points (no iris).
  * Lip aperture (:func:`lip_aperture`): inner-lip gap (FaceMesh pairs 82-87, 13-14,
    312-317) over the outer-eye-corner distance (33-263) per frame. *Aperture r* = Pearson correlation of
    the rendered and recorded aperture over the held-out frames (does the mouth open
    when the recorded one does); *aperture spread* = std(rendered) / std(recorded) (how
    much it moves: 1 = as much as the person, 0 = a static mouth). Unlike centred LMD,
    a static average mouth cannot score well on either.
  * AUE: mean absolute difference of the ``core.data.expression`` action-unit columns in
    [0, 1]: upper face = AU01, 04, 05, 06, 07, 45 (brows, lids, blink), lower face =
    AU25 (lips apart). These are *landmark stand-ins* for OpenFace AU intensities (0-5
    scale, not available offline), so the numbers are not comparable to papers' AUE.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.data.masks import INNER_LIPS, OUTER_LIPS, Label
from eval.metrics.lpips_net import LPIPSAlex, LPIPSWeights, try_load_lpips

#: Mouth landmark subset of LMD: outer then inner lip contour, 40 FaceMesh indices.
MOUTH_IDX: tuple[int, ...] = tuple(OUTER_LIPS) + tuple(INNER_LIPS)
#: Full-face subset of LMD: the 468 mesh points (the 10 iris points 468-477 excluded).
FACE_IDX: tuple[int, ...] = tuple(range(468))
#: AU columns of the upper / lower face error (``core.data.expression.AU_NAMES``).
UPPER_AUS: tuple[str, ...] = ("AU01", "AU04", "AU05", "AU06", "AU07", "AU45")
LOWER_AUS: tuple[str, ...] = ("AU25",)

Box = tuple[int, int, int, int]


class MetricUnavailable(str):
    """A metric that could not be computed: the string ``'unavailable: <reason>'``.

    A ``str`` so that results stay JSON-serialisable; ``.reason`` holds the bare reason.
    Test with :func:`is_available`.
    """

    reason: str

    def __new__(cls, reason: str) -> "MetricUnavailable":
        obj = super().__new__(cls, f"unavailable: {reason}")
        obj.reason = reason
        return obj


def is_available(value: object) -> bool:
    """True for a computed number, False for a :class:`MetricUnavailable` (or None)."""
    return value is not None and not isinstance(value, MetricUnavailable)


# ----------------------------------------------------------------------------- helpers
def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Both as float64 with the data range (255 for uint8, 1 for float)."""
    a, b = np.asarray(pred), np.asarray(gt)
    if a.shape != b.shape:
        raise ValueError(f"prediction {a.shape} and ground truth {b.shape} differ in shape")
    rng = 255.0 if a.dtype == np.uint8 else 1.0
    if (a.dtype == np.uint8) != (b.dtype == np.uint8):
        raise ValueError(f"mixed dtypes {a.dtype} / {b.dtype}: pass both uint8 or both float")
    return a.astype(np.float64), b.astype(np.float64), rng


def mask_box(mask: np.ndarray) -> Box:
    """Bounding box ``(x0, y0, x1, y1)`` (end-exclusive pixel indices) of a bool mask."""
    ys, xs = np.nonzero(np.asarray(mask))
    if ys.size == 0:
        raise ValueError("empty mask: no face region to measure")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def face_mask(labels: np.ndarray) -> np.ndarray:
    """Bool face region from ``core.data.masks`` labels: FACE or MOUTH (any shape)."""
    lab = np.asarray(labels)
    return (lab == Label.FACE) | (lab == Label.MOUTH)


@dataclass(frozen=True)
class BandConfig:
    """Width of the head-boundary band (:func:`boundary_band`).

    Attributes:
        width_px: pixels on each side of the boundary at ``at_res`` (4: an 8-px ring at
            256 px, the cpu preset's resolution).
        at_res: frame size (px) at which ``width_px`` holds; other sizes scale it.
    """

    width_px: float = 4.0
    at_res: int = 256


def band_width(size: int, cfg: BandConfig | None = None) -> int:
    """Band half-width in pixels for frames ``size`` px across: ``round(width_px * size /
    at_res)``, at least 1 (4 at 256 px, 8 at 512 px, 2 at 128 px)."""
    cfg = cfg or BandConfig()
    if size <= 0:
        raise ValueError(f"frame size must be positive, got {size}")
    return max(1, round(cfg.width_px * size / cfg.at_res))


def boundary_band(head: np.ndarray, width: int | None = None,
                  cfg: BandConfig | None = None) -> np.ndarray:
    """Bool band of pixels within ``width`` px of the head boundary, on either side.

    Args:
        head: (H, W) or (T, H, W) bool head masks (``core.data.masks.head_mask`` of the
            recorded labels).
        width: half-width in pixels; None = :func:`band_width` of ``min(H, W)``.
        cfg: band settings when ``width`` is None.
    Returns:
        Same shape bool: ``dilate(head, width) & ~erode(head, width)``, structuring element
        a disc of radius ``width`` (a pixel is in the band when a disc of that radius
        around it holds both head and non-head pixels). Outside the frame counts as
        neither, so the frame edge adds no band. Empty where a frame has no head.
    """
    import cv2

    m = np.asarray(head, bool)
    if m.ndim not in (2, 3):
        raise ValueError(f"need (H, W) or (T, H, W) head masks, got shape {m.shape}")
    if m.ndim == 3:
        return np.stack([boundary_band(x, width, cfg) for x in m]) if len(m) else m.copy()
    b = band_width(min(m.shape), cfg) if width is None else int(width)
    if b < 1:
        raise ValueError(f"band width must be >= 1 pixel, got {width}")
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * b + 1, 2 * b + 1))
    u8 = m.astype(np.uint8)
    # default borders: outside the image never grows a dilation nor eats an erosion
    grown = cv2.dilate(u8, disc).astype(bool)
    shrunk = cv2.erode(u8, disc).astype(bool)
    return grown & ~shrunk


def landmark_box(points: np.ndarray, width: int, height: int, margin: float = 0.0) -> Box:
    """Face box from one frame's (N, 2+) landmarks in pixels, grown by ``margin`` x size.

    Returns end-exclusive pixel indices clipped to the image.
    """
    p = np.asarray(points)[:, :2]
    lo, hi = np.nanmin(p, 0), np.nanmax(p, 0)
    pad = (hi - lo) * margin
    x0, y0 = np.floor(lo - pad).astype(int)
    x1, y1 = np.ceil(hi + pad).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("landmark box lies outside the image")
    return int(x0), int(y0), int(x1), int(y1)


def _crop(img: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


# ----------------------------------------------------------------------------- PSNR / SSIM
def psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of one image pair (any matching shapes, e.g. (H, W, 3)).

    Args:
        pred, gt: uint8 (MAX 255) or float in [0, 1] (MAX 1).
        mask: optional (H, W) bool; the MSE is taken over those pixels (all channels).
    Returns:
        dB; ``inf`` when the (masked) pixels are identical.
    """
    a, b, rng = _pair(pred, gt)
    d2 = (a - b) ** 2
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != a.shape[:m.ndim]:
            raise ValueError(f"mask {m.shape} does not match image {a.shape}")
        if not m.any():
            raise ValueError("empty mask: no pixels to measure")
        d2 = d2[m]
    mse = float(d2.mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(rng * rng / mse)


@dataclass(frozen=True)
class SSIMConfig:
    """skimage ``structural_similarity`` settings.

    Attributes:
        gaussian_weights: Gaussian window (True, Wang et al.) or 7x7 uniform (False).
        sigma: Gaussian window sigma in pixels (1.5).
        use_sample_covariance: False = population covariance, as in Wang et al.
    """

    gaussian_weights: bool = True
    sigma: float = 1.5
    use_sample_covariance: bool = False


def ssim(pred: np.ndarray, gt: np.ndarray, box: Box | None = None,
         cfg: SSIMConfig | None = None, mask: np.ndarray | None = None) -> float:
    """SSIM of an (H, W, 3) or (H, W) image pair (uint8 or float in [0, 1]).

    ``box = (x0, y0, x1, y1)`` measures only that crop (face region); ``mask`` (H, W)
    bool averages the SSIM map over those pixels only (head region; windows near its
    edge still see the neighbouring pixels). 1 for identical.
    """
    from skimage.metrics import structural_similarity

    cfg = cfg or SSIMConfig()
    a, b, rng = _pair(pred, gt)
    if box is not None:
        a, b = _crop(a, box), _crop(b, box)
    if min(a.shape[:2]) < 7:
        raise ValueError(f"region {a.shape[:2]} too small for SSIM (needs >= 7x7)")
    if mask is None:
        return float(structural_similarity(a, b, **_ssim_kwargs(a, rng, cfg)))
    return masked_mean(ssim_map(a, b, cfg, rng), mask)


def _ssim_kwargs(a: np.ndarray, rng: float, cfg: SSIMConfig) -> dict:
    return {"data_range": rng, "channel_axis": -1 if a.ndim == 3 else None,
            "gaussian_weights": cfg.gaussian_weights, "sigma": cfg.sigma,
            "use_sample_covariance": cfg.use_sample_covariance}


def ssim_map(pred: np.ndarray, gt: np.ndarray, cfg: SSIMConfig | None = None,
             data_range: float | None = None) -> np.ndarray:
    """(H, W) float64 SSIM map of an (H, W, 3) or (H, W) pair (channel mean); 1 where the
    windows are identical. ``data_range`` None = 255 for uint8, 1 for float."""
    from skimage.metrics import structural_similarity

    cfg = cfg or SSIMConfig()
    a, b, rng = _pair(pred, gt)
    if min(a.shape[:2]) < 7:
        raise ValueError(f"region {a.shape[:2]} too small for SSIM (needs >= 7x7)")
    _, smap = structural_similarity(a, b, full=True,
                                    **_ssim_kwargs(a, data_range or rng, cfg))
    return smap.mean(-1) if smap.ndim == 3 else smap


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of an (H, W) map over the (H, W) bool ``mask`` (raises on an empty mask)."""
    m = np.asarray(mask, bool)
    if m.shape != values.shape[:2]:
        raise ValueError(f"mask {m.shape} does not match image {values.shape}")
    if not m.any():
        raise ValueError("empty mask: no pixels to measure")
    return float(values[m].mean())


# ----------------------------------------------------------------------------- LPIPS
def lpips(pred: np.ndarray, gt: np.ndarray, net: LPIPSAlex | None = None,
          box: Box | None = None, weights: LPIPSWeights | None = None) -> float | None:
    """LPIPS-Alex of one (H, W, 3) image pair (optionally of a box crop).

    Returns None when no network is given and the real weights cannot be loaded (see
    :func:`lpips_status` for the reason); never a made-up number.
    """
    if net is None:
        net, _ = try_load_lpips(weights)
        if net is None:
            return None
    a, b = np.asarray(pred), np.asarray(gt)
    if box is not None:
        a, b = _crop(a, box), _crop(b, box)
    return float(net.distance(a, b)[0])


def lpips_status(weights: LPIPSWeights | None = None) -> MetricUnavailable | None:
    """None when LPIPS can be computed, else the :class:`MetricUnavailable` reason."""
    net, reason = try_load_lpips(weights)
    return None if net is not None else MetricUnavailable(f"LPIPS: {reason}")


# ----------------------------------------------------------------------------- clips
@dataclass
class ImageScores:
    """Clip means of the image metrics (dB for PSNR; LPIPS may be unavailable).

    ``psnr`` averages per-frame PSNR (frames with identical pixels are skipped; all
    identical gives ``inf``). ``lpips`` / ``lpips_face`` are floats or a
    :class:`MetricUnavailable`. ``face_*`` are None without a face region, ``*_head``
    without head masks, ``*_band`` without band masks (or when no frame has a band).
    """

    psnr: float
    ssim: float
    lpips: float | MetricUnavailable
    psnr_face: float | None = None
    ssim_face: float | None = None
    lpips_face: float | MetricUnavailable | None = None
    psnr_head: float | None = None
    ssim_head: float | None = None
    psnr_band: float | None = None
    ssim_band: float | None = None
    num_frames: int = 0
    seconds: float = 0.0
    per_frame: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, float | str | None]:
        return {k: getattr(self, k) for k in ("psnr", "ssim", "lpips", "psnr_face",
                                               "ssim_face", "lpips_face", "psnr_head",
                                               "ssim_head", "psnr_band", "ssim_band",
                                               "num_frames")}


def _mean_finite(x: list[float]) -> float:
    v = np.asarray(x, np.float64)
    fin = v[np.isfinite(v)]
    return float(fin.mean()) if fin.size else math.inf


def image_metrics(pred_frames: Sequence[np.ndarray] | np.ndarray,
                  gt_frames: Sequence[np.ndarray] | np.ndarray,
                  face_masks: Sequence[np.ndarray] | np.ndarray | None = None,
                  face_boxes: Sequence[Box] | np.ndarray | None = None,
                  lpips_net: LPIPSAlex | None = None, use_lpips: bool = True,
                  ssim_cfg: SSIMConfig | None = None,
                  head_masks: Sequence[np.ndarray] | np.ndarray | None = None,
                  band_masks: Sequence[np.ndarray] | np.ndarray | None = None) -> ImageScores:
    """PSNR / SSIM / LPIPS over a clip: full frame, face, head and head-boundary band.

    Args:
        pred_frames, gt_frames: T frames each, (H, W, 3) uint8 (or float in [0, 1]).
        face_masks: optional T (H, W) bool masks (e.g. :func:`face_mask` of the ground
            truth labels): face PSNR over the mask, face SSIM / LPIPS on its box.
        face_boxes: optional T boxes ``(x0, y0, x1, y1)`` instead of masks (PSNR, SSIM
            and LPIPS all on the box). Masks win when both are given.
        lpips_net: a loaded network; None = load the real weights if present.
        use_lpips: False skips LPIPS (reported unavailable: "not requested").
        head_masks: optional T (H, W) bool masks (``core.data.masks.head_mask`` of the
            recorded labels): head PSNR over the mask, head SSIM = SSIM map mean over
            the mask.
        band_masks: optional T (H, W) bool masks (:func:`boundary_band` of the head
            masks): band PSNR / SSIM as for the head; frames with an empty band (no head
            boundary) are left out of the band means.
    """
    t0 = time.perf_counter()
    T = len(pred_frames)
    if T != len(gt_frames) or T == 0:
        raise ValueError(f"need the same non-zero number of frames, got {T} / {len(gt_frames)}")
    net, reason = (lpips_net, None) if lpips_net is not None else (
        try_load_lpips() if use_lpips else (None, "not requested"))
    has_face = face_masks is not None or face_boxes is not None
    cols: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "lpips", "psnr_face",
                                                    "ssim_face", "lpips_face",
                                                    "psnr_head", "ssim_head",
                                                    "psnr_band", "ssim_band")}
    for i in range(T):
        p, g = np.asarray(pred_frames[i]), np.asarray(gt_frames[i])
        cols["psnr"].append(psnr(p, g))
        cols["ssim"].append(ssim(p, g, cfg=ssim_cfg))
        smap = None  # one SSIM map per frame serves the head and the band
        if head_masks is not None:
            hm = np.asarray(head_masks[i], bool)
            smap = ssim_map(p, g, ssim_cfg)
            cols["psnr_head"].append(psnr(p, g, mask=hm))
            cols["ssim_head"].append(masked_mean(smap, hm))
        if band_masks is not None and np.any(band_masks[i]):
            bm = np.asarray(band_masks[i], bool)
            smap = ssim_map(p, g, ssim_cfg) if smap is None else smap
            cols["psnr_band"].append(psnr(p, g, mask=bm))
            cols["ssim_band"].append(masked_mean(smap, bm))
        box = None
        if has_face:
            if face_masks is not None:
                m = np.asarray(face_masks[i], bool)
                box = mask_box(m)
                cols["psnr_face"].append(psnr(p, g, mask=m))
            else:
                box = tuple(int(v) for v in face_boxes[i])  # type: ignore[index]
                cols["psnr_face"].append(psnr(_crop(p, box), _crop(g, box)))
            cols["ssim_face"].append(ssim(p, g, box=box, cfg=ssim_cfg))
        if net is not None:
            cols["lpips"].append(lpips(p, g, net))
            if box is not None:
                cols["lpips_face"].append(lpips(p, g, net, box=box))
    unavailable = MetricUnavailable(f"LPIPS: {reason}") if net is None else None
    return ImageScores(
        psnr=_mean_finite(cols["psnr"]), ssim=float(np.mean(cols["ssim"])),
        lpips=float(np.mean(cols["lpips"])) if net is not None else unavailable,
        psnr_face=_mean_finite(cols["psnr_face"]) if has_face else None,
        ssim_face=float(np.mean(cols["ssim_face"])) if has_face else None,
        lpips_face=(float(np.mean(cols["lpips_face"])) if net is not None else unavailable)
        if has_face else None,
        psnr_head=_mean_finite(cols["psnr_head"]) if head_masks is not None else None,
        ssim_head=float(np.mean(cols["ssim_head"])) if head_masks is not None else None,
        psnr_band=_mean_finite(cols["psnr_band"]) if cols["psnr_band"] else None,
        ssim_band=float(np.mean(cols["ssim_band"])) if cols["ssim_band"] else None,
        num_frames=T, seconds=time.perf_counter() - t0,
        per_frame={k: np.asarray(v) for k, v in cols.items() if v})


# ----------------------------------------------------------------------------- LMD
def landmark_distance(pred: np.ndarray, gt: np.ndarray,
                      idx: Sequence[int] | None = MOUTH_IDX,
                      normalise_center: bool = True) -> float:
    """LMD: mean L2 distance in pixels between two landmark tracks.

    Args:
        pred, gt: (T, N, 2+) landmarks in pixels of the evaluation resolution (only x, y
            are used). Frames with NaN in either track are skipped.
        idx: landmark subset (default :data:`MOUTH_IDX`); None = all N points.
        normalise_center: subtract each frame's subset mean from that frame (removes
            head translation; METHOD.md section 8).
    Returns:
        Mean over valid frames and subset points of ``||pred - gt||_2`` (pixels).
    Raises:
        ValueError: shape mismatch, or no frame valid in both tracks.
    """
    p = np.asarray(pred, np.float64)[..., :2]
    g = np.asarray(gt, np.float64)[..., :2]
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"need equal (T, N, 2) tracks, got {p.shape} / {g.shape}")
    if idx is not None:
        p, g = p[:, list(idx)], g[:, list(idx)]
    ok = np.isfinite(p).all((1, 2)) & np.isfinite(g).all((1, 2))
    if not ok.any():
        raise ValueError("no frame has landmarks in both tracks")
    p, g = p[ok], g[ok]
    if normalise_center:
        p = p - p.mean(1, keepdims=True)
        g = g - g.mean(1, keepdims=True)
    return float(np.linalg.norm(p - g, axis=-1).mean())


# ----------------------------------------------------------------------------- lip aperture
#: FaceMesh inner-lip point pairs (upper, lower: left of centre, centre, right of centre)
#: and the outer eye corners (right, left).
INNER_LIP_PAIRS: tuple[tuple[int, int], ...] = ((82, 87), (13, 14), (312, 317))
EYE_CORNERS: tuple[int, int] = (33, 263)


def lip_aperture(points: np.ndarray) -> np.ndarray:
    """(T,) inner-lip gap (mean distance of the :data:`INNER_LIP_PAIRS`) over the
    eye-corner distance |33 - 263| per frame, from (T, 478, 2+) landmarks (x, y used;
    NaN frames give NaN). Scale-free: 0 = lips closed, about 0.05-0.4 while speaking."""
    p = np.asarray(points, np.float64)[..., :2]
    if p.ndim != 3 or p.shape[1] <= max(EYE_CORNERS):
        raise ValueError(f"need (T, 478, 2+) landmarks, got {p.shape}")
    gap = np.mean([np.linalg.norm(p[:, a] - p[:, b], axis=-1) for a, b in INNER_LIP_PAIRS], 0)
    eyes = np.linalg.norm(p[:, EYE_CORNERS[0]] - p[:, EYE_CORNERS[1]], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(eyes > 0, gap / eyes, np.nan)


@dataclass
class ApertureScores:
    """Rendered vs recorded lip aperture over the frames where both have a face.

    Attributes:
        r: Pearson correlation (NaN when either aperture is constant).
        spread: std(rendered) / std(recorded) (NaN when the recording's is constant).
        num_frames: frames used.
        r_pose: partial correlation with the head pose held out (:func:`partial_r` on
            :func:`pose_covariates`); NaN when no pose was given.
    """

    r: float
    spread: float
    num_frames: int
    r_pose: float = math.nan


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = float(a.std()), float(b.std())
    if sa <= 0 or sb <= 0:
        return math.nan
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


def pose_covariates(viewmats: np.ndarray) -> np.ndarray:
    """(T, 6) head pose per frame from (T, 4, 4) world-to-camera matrices: the rotation
    vector of each frame's rotation relative to the mean one (radians) and the
    translation (metres)."""
    from scipy.spatial.transform import Rotation

    v = np.asarray(viewmats, np.float64)
    if v.ndim != 3 or v.shape[1:] != (4, 4):
        raise ValueError(f"need (T, 4, 4) view matrices, got {v.shape}")
    rot = Rotation.from_matrix(v[:, :3, :3])
    rel = (rot * rot.mean().inv()).as_rotvec()
    return np.concatenate([rel, v[:, :3, 3]], 1)


def partial_r(a: np.ndarray, b: np.ndarray, z: np.ndarray) -> float:
    """Partial correlation of (T,) ``a`` and ``b`` given (T, k) covariates ``z``: the
    Pearson r of their least-squares residuals on ``[z, 1]``. NaN when a residual is
    constant (the covariates explain all of it) or there are not more frames than k + 2."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    Z = np.concatenate([np.asarray(z, np.float64).reshape(len(a), -1), np.ones((len(a), 1))], 1)
    if len(a) <= Z.shape[1] + 1:
        return math.nan
    res = [y - Z @ np.linalg.lstsq(Z, y, rcond=None)[0] for y in (a, b)]
    if any(e.std() <= 1e-9 * max(y.std(), 1e-300) for e, y in zip(res, (a, b))):
        return math.nan                      # all of it is the pose: nothing left to compare
    return _corr(*res)


def aperture_scores(pred_points: np.ndarray, gt_points: np.ndarray,
                    valid: np.ndarray | None = None,
                    pose: np.ndarray | None = None) -> ApertureScores:
    """Aperture r and spread from two (T, 478, 2+) landmark tracks (pixels); ``valid``
    (T,) bool selects frames (default: finite in both). ``pose`` (T, k): the head pose both
    share (:func:`pose_covariates` of the recording's), for ``r_pose``: an aperture that
    follows the head (a person who nods as they open their mouth, a landmark detector
    biased by the view) then scores nothing. Needs 3 frames."""
    a, b = lip_aperture(pred_points), lip_aperture(gt_points)
    if a.shape != b.shape:
        raise ValueError(f"need equal landmark tracks, got {a.shape} / {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if ok.sum() < 3:
        raise ValueError(f"only {int(ok.sum())} frames with a face in both clips (need 3)")
    r_pose = math.nan
    if pose is not None:
        pose = np.asarray(pose, np.float64)
        if len(pose) != len(ok):
            raise ValueError(f"need a pose per frame, got {len(pose)} for {len(ok)} frames")
        r_pose = partial_r(a[ok], b[ok], pose[ok])
    a, b = a[ok], b[ok]
    sb = float(b.std())
    return ApertureScores(r=_corr(a, b), spread=float(a.std()) / sb if sb > 0 else math.nan,
                          num_frames=int(ok.sum()), r_pose=r_pose)


# ----------------------------------------------------------------------------- AUE
@dataclass
class AUError:
    """Action-unit error of a clip (landmark stand-ins for OpenFace AUs, units of [0, 1]).

    Attributes:
        upper: mean |pred - gt| over frames and :data:`UPPER_AUS`.
        lower: mean |pred - gt| over frames and :data:`LOWER_AUS`.
        per_au: mean |pred - gt| per AU name.
    """

    upper: float
    lower: float
    per_au: dict[str, float]


def au_error(pred_points: np.ndarray, gt_points: np.ndarray) -> AUError:
    """AUE from two (T, 478, 2|3) landmark tracks (no NaN; fill misses first).

    ``core.data.expression.expression_signals`` maps each AU's raw geometry to [0, 1] with a
    per-clip percentile range. Running it on the two clips separately would rescale a
    prediction with too little motion up to full range, so it runs once on the
    concatenation ``[gt; pred]``: both share one pose reference and one range, and an
    under-animated prediction shows up as error.
    """
    from core.data.expression import expression_signals

    p, g = np.asarray(pred_points, np.float64), np.asarray(gt_points, np.float64)
    if p.shape != g.shape:
        raise ValueError(f"need equal landmark tracks, got {p.shape} / {g.shape}")
    ex = expression_signals(np.concatenate([g, p], 0))
    T = g.shape[0]
    per = {name: float(np.abs(ex[name][T:] - ex[name][:T]).mean()) for name in ex.au_names}
    return AUError(upper=float(np.mean([per[a] for a in UPPER_AUS])),
                   lower=float(np.mean([per[a] for a in LOWER_AUS])), per_au=per)


# ----------------------------------------------------------------------------- video level
@dataclass
class LandmarkScores:
    """Landmark metrics of a clip pair.

    Attributes:
        lmd_mouth / lmd_face: LMD in pixels (:data:`MOUTH_IDX` / :data:`FACE_IDX`).
        aue_upper / aue_lower: see :class:`AUError`.
        per_au: AU name -> mean absolute error.
        valid_fraction: fraction of frames with a face found in both clips.
    """

    lmd_mouth: float
    lmd_face: float
    aue_upper: float
    aue_lower: float
    per_au: dict[str, float]
    valid_fraction: float


def landmark_metrics(pred_points: np.ndarray, gt_points: np.ndarray,
                     valid: np.ndarray | None = None) -> LandmarkScores:
    """LMD and AUE from (T, 478, 2|3) landmark tracks (pixels); ``valid`` (T,) bool
    selects frames (default: frames without NaN in either)."""
    p, g = np.asarray(pred_points, np.float64), np.asarray(gt_points, np.float64)
    if valid is None:
        valid = np.isfinite(p).all((1, 2)) & np.isfinite(g).all((1, 2))
    valid = np.asarray(valid, bool)
    if not valid.any():
        raise ValueError("no frame with a face in both clips")
    pv, gv = p[valid], g[valid]
    aue = au_error(pv, gv)
    return LandmarkScores(
        lmd_mouth=landmark_distance(pv, gv, MOUTH_IDX),
        lmd_face=landmark_distance(pv, gv, FACE_IDX),
        aue_upper=aue.upper, aue_lower=aue.lower, per_au=aue.per_au,
        valid_fraction=float(valid.mean()))


def detect(frames: Sequence[np.ndarray] | np.ndarray):
    """FaceMesh landmarks of a clip: ``core.data.landmarks.detect_landmarks`` in video mode
    without the full-range detector boxes (the evaluation frames are face crops)."""
    from core.data.landmarks import DetectConfig, detect_landmarks

    return detect_landmarks(frames, DetectConfig(detector_boxes=False))


def _detect_pair(pred_frames, gt_frames):
    tp, tg = detect(pred_frames), detect(gt_frames)
    if len(tp) != len(tg) or (tp.width, tp.height) != (tg.width, tg.height):
        raise ValueError(f"clips differ: {len(tp)} frames {tp.width}x{tp.height} vs "
                         f"{len(tg)} frames {tg.width}x{tg.height}")
    if not (tp.valid & tg.valid).any():
        raise ValueError("no frame with a face in both clips")
    return tp, tg


def video_landmark_metrics(pred_frames: Sequence[np.ndarray] | np.ndarray,
                           gt_frames: Sequence[np.ndarray] | np.ndarray) -> LandmarkScores:
    """Detect FaceMesh landmarks on both clips (same size), then :func:`landmark_metrics`
    on the frames where both have a face."""
    tp, tg = _detect_pair(pred_frames, gt_frames)
    return landmark_metrics(tp.points, tg.points, tp.valid & tg.valid)


def video_lmd(pred_frames: Sequence[np.ndarray] | np.ndarray,
              gt_frames: Sequence[np.ndarray] | np.ndarray,
              idx: Sequence[int] | None = MOUTH_IDX) -> float:
    """Mouth LMD (pixels) of two clips with the project's FaceMesh detector.

    ``idx``: landmark subset (default the 40 lip points; :data:`FACE_IDX` for the face).
    Frames where either clip has no face are skipped.
    """
    tp, tg = _detect_pair(pred_frames, gt_frames)
    ok = tp.valid & tg.valid
    return landmark_distance(tp.points[ok], tg.points[ok], idx)
