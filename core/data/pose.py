"""Head pose of a clip: the canonical face shape, one focal, per-frame rotation and translation.

One concept: *how the head sits in front of the camera* in every frame (the head is the
world, the camera moves; conventions in ``core/__init__.py``). Also the project's one
least-squares similarity fit (:func:`similarity_fit`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.data.landmarks import N_LANDMARKS, SKULL_LANDMARKS

#: Face-width landmarks (left/right face contour at the cheekbones).
FACE_WIDTH_IDX = (234, 454)
#: Canonical face width |X[234] - X[454]| in metres.  An adult bizygomatic
#: breadth is ~0.13-0.14 m; FaceMesh points 234/454 sit on the outer face
#: contour at about that level, so 0.14 m puts the head inside +-0.1 m.
FACE_WIDTH_M = 0.14


@dataclass
class PoseConfig:
    """Settings of :func:`fit_head_pose`.

    Attributes:
        focal_range_512: (min, max) focal length in pixels searched at 512 x 512;
            scaled by ``res / 512``.
        focal_steps: number of focal values on the coarse grid (then refined by
            a fine grid of the same count between the coarse neighbours of the best).
        focal_frames: frames (evenly spaced) used in the focal search.
        procrustes_iters: generalised Procrustes iterations for the canonical shape.
        median_window: odd window (frames) of the median filter applied to the
            rotation vectors and translations before smoothing (removes single
            frame outliers); 1 = off.
        smooth_sigma: sigma (frames) of the Gaussian temporal smoothing of the
            rotation vectors and translations; 0 = off.
        distance_prior_m: camera distance (metres) preferred when the error
            curve cannot decide the focal (see :func:`fit_head_pose`); 0.6 m
            is the middle of the project's 0.5-0.8 m camera range.
        refine_iters: Levenberg-Marquardt iterations of the joint all-frame
            refinement (0 = off); see ``_refine_batched``.
        accel_weight: weight of the landmark-acceleration penalty (pixels^2)
            against the Huber reprojection term in that refinement.
        huber_px: Huber threshold (pixels) of the reprojection term.
        focal_tolerance: relative error margin within which focals count as equally good.
        rigid_idx: landmarks used for the rigid fits (default
            :data:`core.data.landmarks.SKULL_LANDMARKS`).
    """

    focal_range_512: tuple[float, float] = (600.0, 1400.0)
    focal_steps: int = 17
    focal_frames: int = 40
    procrustes_iters: int = 3
    median_window: int = 3
    smooth_sigma: float = 0.7
    distance_prior_m: float = 0.6
    refine_iters: int = 10
    accel_weight: float = 0.25
    huber_px: float = 2.0
    focal_tolerance: float = 0.05
    rigid_idx: tuple[int, ...] = SKULL_LANDMARKS


@dataclass
class HeadPose:
    """Per-frame head pose of a clip (the head is the world; the camera moves).

    Attributes:
        canonical: (478, 3) float32 canonical FaceMesh shape in metres, head-canonical
            frame (+x image right, +y down, +z into the head, origin at its centroid).
        R: (T, 3, 3) float32 rotations, ``X_cam = R @ X + t``.
        t: (T, 3) float32 translations in metres (camera frame).
        focal: focal length in pixels at resolution ``res``.
        res: image side (pixels) the pose was fitted at.
    """

    canonical: np.ndarray
    R: np.ndarray
    t: np.ndarray
    focal: float
    res: int

    def __len__(self) -> int:
        return int(self.R.shape[0])

    def viewmats(self) -> np.ndarray:
        """(T, 4, 4) float32 world-to-camera matrices ``[[R, t], [0, 1]]``."""
        T = len(self)
        v = np.zeros((T, 4, 4), np.float32)
        v[:, :3, :3] = self.R
        v[:, :3, 3] = self.t
        v[:, 3, 3] = 1.0
        return v

    def K(self, res: int | None = None) -> np.ndarray:
        """(3, 3) float32 intrinsics at ``res`` (default: the fit resolution);
        the focal scales with ``res / self.res``, ``cx = cy = res / 2``."""
        r = self.res if res is None else res
        f = self.focal * r / self.res
        return np.array([[f, 0, r / 2], [0, f, r / 2], [0, 0, 1]], np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays for saving (e.g. ``np.savez``); inverse of :meth:`from_state`."""
        return {"canonical": self.canonical, "R": self.R, "t": self.t,
                "focal": np.float32(self.focal), "res": np.int32(self.res)}

    @classmethod
    def from_state(cls, d) -> HeadPose:
        """Rebuild from :meth:`state` output (or an ``np.load`` of it)."""
        return cls(np.asarray(d["canonical"], np.float32), np.asarray(d["R"], np.float32),
                   np.asarray(d["t"], np.float32), float(d["focal"]), int(d["res"]))

    def camera_distance(self) -> np.ndarray:
        """(T,) distance in metres from the camera centre to the head origin (= |t|)."""
        return np.linalg.norm(self.t, axis=1)

    def project(self, points: np.ndarray | None = None, res: int | None = None) -> np.ndarray:
        """Project world points (N, 3) (default: the canonical shape) into every
        frame: (T, N, 2) pixels at ``res``."""
        X = self.canonical if points is None else np.asarray(points, np.float32)
        Xc = np.einsum("tij,nj->tni", self.R, X) + self.t[:, None, :]
        K = self.K(res)
        uv = Xc[..., :2] / Xc[..., 2:3]
        return (uv * K[0, 0] + K[0, 2]).astype(np.float32)


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity transform ``dst ~ s R src + t`` (Umeyama).

    Args:
        src, dst: (N, D) matching point sets, D = 2 or 3, any consistent units.
    Returns:
        ``(s, R, t)``: scale, (D, D) proper rotation (det +1), (D,) translation.
    """
    s, R, t = similarity_fits(np.asarray(src)[None], np.asarray(dst)[None])
    return float(s[0]), R[0], t[0]


def similarity_fits(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`similarity_fit` of many point-set pairs at once (one batched SVD).

    Args:
        src, dst: (B, N, D) matching point sets (``dst`` may be (N, D), shared by all).
    Returns:
        ``(s, R, t)``: (B,) scales, (B, D, D) proper rotations, (B, D) translations.
    """
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    ms, md = src.mean(1), dst.mean(1)
    a, b = src - ms[:, None], dst - md[:, None]
    U, S, Vt = np.linalg.svd(np.einsum("bnd,bne->bde", b, a))
    D = np.ones(S.shape)
    D[:, -1] = np.sign(np.linalg.det(U @ Vt))
    R = (U * D[:, None, :]) @ Vt
    s = (S * D).sum(1) / np.maximum((a ** 2).sum((1, 2)), 1e-12)
    return s, R, md - s[:, None] * np.einsum("bde,be->bd", R, ms)


def procrustes_align(points: np.ndarray, rigid_idx: Sequence[int] = SKULL_LANDMARKS,
                     iters: int = 2, fit_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes: every frame aligned to the clip's mean shape.

    Each frame is mapped by :func:`similarity_fit` of its ``rigid_idx`` points onto a
    reference (first the middle frame, then the mean of the aligned frames), ``iters``
    rounds (all frames of a round in one batched fit, :func:`similarity_fits`).

    Args:
        points: (T, N, D) points, D = 3 (removes the full head rotation) or 2 (pixels:
            removes in-plane rotation, scale and shift).
        fit_frames: the reference comes from the first ``fit_frames`` frames only (None =
            all), so later frames never change how earlier ones are aligned.
    Returns:
        ``(aligned, mean)``: (T, N, D) float64 aligned frames and the (N, D) reference.
    """
    P = np.asarray(points, np.float64)
    n = len(P) if fit_frames is None else int(fit_frames)
    idx = list(rigid_idx)
    ref = P[n // 2]
    out = P
    for _ in range(max(iters, 1)):
        s, R, t = similarity_fits(P[:, idx], ref[idx])
        out = s[:, None, None] * (P @ R.transpose(0, 2, 1)) + t[:, None, :]
        ref = out[:n].mean(0)
    return out, ref


def canonical_shape(points3d: np.ndarray, cfg: PoseConfig | None = None) -> np.ndarray:
    """Canonical (478, 3) float32 face shape in metres from a clip's 3D points.

    Every frame's points (T, 478, 3; any consistent units, e.g. the output of
    :func:`lift_points`, or raw FaceMesh pixels with z scaled like x) are aligned to
    a reference by a similarity Procrustes fit on the rigid landmarks; the
    reference is the mean of the aligned frames (``cfg.procrustes_iters``
    rounds, starting from the middle frame). The mean is then:
    rotated to a frontal, upright frame (x along the mean of the left-right
    symmetric pairs 234->454, 33->263, 133->362, 127->356; y from forehead 10 to
    chin 152, made orthogonal to x; z = x cross y, into the head), centred on
    its centroid, and scaled so ``|X[234] - X[454]| = FACE_WIDTH_M`` (0.14 m).
    """
    cfg = cfg or PoseConfig()
    _, ref = procrustes_align(points3d, cfg.rigid_idx, cfg.procrustes_iters)
    pairs = [(234, 454), (33, 263), (133, 362), (127, 356)]
    xa = sum((ref[b] - ref[a]) / np.linalg.norm(ref[b] - ref[a]) for a, b in pairs)
    xa /= np.linalg.norm(xa)
    ya = ref[152] - ref[10]
    ya -= xa * (ya @ xa)
    ya /= np.linalg.norm(ya)
    za = np.cross(xa, ya)
    X = (ref - ref.mean(0)) @ np.stack([xa, ya, za]).T
    X *= FACE_WIDTH_M / np.linalg.norm(X[FACE_WIDTH_IDX[1]] - X[FACE_WIDTH_IDX[0]])
    return X.astype(np.float32)


def _solve_frames(canon_r: np.ndarray, pts2d_r: np.ndarray, K: np.ndarray, frames: Sequence[int],
                  init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PnP (OpenCV Levenberg-Marquardt, perspective) for the given frames.

    Each frame starts from the previous frame's solution (the first from
    ``init`` or a frontal guess). Returns rvecs (n, 3), tvecs (n, 3), mean
    pixel error (n,)."""
    import cv2

    obj = canon_r.astype(np.float64)
    if init is None:
        # frontal guess: distance from the face width in pixels
        w_px = np.ptp(pts2d_r[frames[0], :, 0])
        w_m = np.ptp(obj[:, 0])
        z = K[0, 0] * w_m / max(w_px, 1e-3)
        c = pts2d_r[frames[0]].mean(0)
        r = np.zeros(3)
        tv = np.array([(c[0] - K[0, 2]) * z / K[0, 0], (c[1] - K[1, 2]) * z / K[0, 0], z])
    else:
        r, tv = init
    rv, tvs, err = [], [], []
    for i in frames:
        img = pts2d_r[i].astype(np.float64)
        ok, r2, t2 = cv2.solvePnP(obj, img, K, None, r.reshape(3, 1).copy(), tv.reshape(3, 1).copy(),
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or not np.all(np.isfinite(t2)) or t2[2, 0] <= 0:
            r2, t2 = r.reshape(3, 1), tv.reshape(3, 1)
        r, tv = r2.ravel(), t2.ravel()
        proj, _ = cv2.projectPoints(obj, r, tv, K, None)
        rv.append(r)
        tvs.append(tv)
        err.append(np.linalg.norm(proj[:, 0] - img, axis=1).mean())
    return np.asarray(rv), np.asarray(tvs), np.asarray(err)


def _K(f: float, res: int) -> np.ndarray:
    return np.array([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1]], np.float64)


def _smooth(x: np.ndarray, median_window: int, sigma: float) -> np.ndarray:
    """Median filter then Gaussian filter along axis 0 (edges: nearest)."""
    from scipy.ndimage import gaussian_filter1d, median_filter

    y = x
    if median_window > 1 and len(x) >= median_window:
        y = median_filter(y, size=(median_window,) + (1,) * (x.ndim - 1), mode="nearest")
    if sigma > 0 and len(x) > 1:
        y = gaussian_filter1d(y, sigma, axis=0, mode="nearest")
    return y


def lift_points(points3d: np.ndarray, focal: float, res: int) -> np.ndarray:
    """Perspective back-projection of FaceMesh points to camera space (metres).

    FaceMesh's (u, v, z) are image pixels plus a relative depth in pixel scale,
    i.e. an orthographic-style description. For a pinhole camera with focal
    ``focal`` (pixels) and centre ``res / 2``, each frame is put at the depth
    ``z0 = focal * FACE_WIDTH_M / w_px`` (``w_px``: the 3D pixel distance of
    landmarks 234-454), its relative depths become ``Z = z0 + z * z0 / focal``,
    and ``X = (u - res/2) Z / f``, ``Y = (v - res/2) Z / f``. A canonical shape
    built from these points is consistent with that focal (its reprojection
    error is 3x lower than that of a shape built from the raw points).

    Args:
        points3d: (T, 478, 3) FaceMesh points (pixels, z scaled like x).
    Returns:
        (T, 478, 3) float64 camera-space points in metres.
    """
    p = np.asarray(points3d, np.float64)
    w_px = np.linalg.norm(p[:, FACE_WIDTH_IDX[1]] - p[:, FACE_WIDTH_IDX[0]], axis=-1)
    z0 = focal * FACE_WIDTH_M / np.maximum(w_px, 1e-6)
    Z = z0[:, None] + p[..., 2] * (z0 / focal)[:, None]
    X = (p[..., 0] - res / 2) * Z / focal
    Y = (p[..., 1] - res / 2) * Z / focal
    return np.stack([X, Y, Z], -1)


def fit_head_pose(points2d: np.ndarray, points3d: np.ndarray, res: int, cfg: PoseConfig | None = None) -> HeadPose:
    """Rigid head pose per frame and one focal length per clip.

    Args:
        points2d: (T, 478, 2) landmarks in crop pixels at ``res`` x ``res``
            (no NaN: fill misses first, :meth:`LandmarkTrack.filled`).
        points3d: (T, 478, 3) FaceMesh points of the same frames (pixel units,
            z scaled like x); builds the canonical shape.
        res: crop side in pixels.
        cfg: :class:`PoseConfig`.

    Method:
      1. For each focal ``f`` on a grid over ``cfg.focal_range_512 * res/512``
         (``cfg.focal_steps`` values, then a finer grid around the best), lift
         the sampled frames with :func:`lift_points`, build the canonical shape
         (:func:`canonical_shape`), solve each sampled frame's pose by
         perspective PnP (OpenCV Levenberg-Marquardt on the rigid landmarks)
         and score ``f`` by the mean reprojection error.
      2. Focal choice: FaceMesh landmarks constrain the focal only weakly (the
         error curve is nearly flat or runs to a bound of the range on real
         clips: with raw FaceMesh 3D points it always prefers the longest
         focal, i.e. orthographic), so among the focals whose error is within
         ``cfg.focal_tolerance`` (relative) of the minimum, the one whose
         median camera distance is nearest (in log) to
         ``cfg.distance_prior_m`` is taken. Since the face width is fixed
         (0.14 m), this amounts to a focal proportional to the face's size in
         the crop, clamped to the searched range.
      3. Canonical shape from all frames at that focal; all frames solved by
         PnP (each warm-started from the previous one); then all frames
         refined jointly (Levenberg-Marquardt over all frames: Huber
         reprojection + a small landmark-acceleration penalty, ``_refine_batched``); finally rotation
         vectors and translations smoothed in time (median filter, then Gaussian).
    """
    cfg = cfg or PoseConfig()
    p2 = np.asarray(points2d, np.float64)
    p3 = np.asarray(points3d, np.float64)
    if p2.ndim != 3 or p2.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(f"points2d must be (T, 478, 2), got {p2.shape}")
    if p3.shape[:2] != p2.shape[:2] or p3.shape[2] != 3:
        raise ValueError(f"points3d must be (T, 478, 3) like points2d, got {p3.shape}")
    if not (np.all(np.isfinite(p2)) and np.all(np.isfinite(p3))):
        raise ValueError("points contain NaN; fill missing frames first (LandmarkTrack.filled)")
    T = len(p2)
    idx = list(cfg.rigid_idx)
    p2r = p2[:, idx]
    sample = np.unique(np.linspace(0, T - 1, min(cfg.focal_frames, T)).round().astype(int))

    def cost(f: float) -> tuple[float, float]:
        """(mean reprojection error px, median camera distance m) at focal f."""
        canon = canonical_shape(lift_points(p3[sample], f, res), cfg)
        _, tv_s, err = _solve_frames(canon[idx], p2r, _K(f, res), sample)
        return float(err.mean()), float(np.median(np.linalg.norm(tv_s, axis=1)))

    scale = res / 512.0
    lo, hi = (v * scale for v in cfg.focal_range_512)
    grid = np.geomspace(lo, hi, cfg.focal_steps)
    costs = np.array([cost(f) for f in grid])
    k = int(np.argmin(costs[:, 0]))
    fine = np.geomspace(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)], cfg.focal_steps)
    fs = np.concatenate([grid, fine])
    cs = np.concatenate([costs, [cost(f) for f in fine]])
    ok = cs[:, 0] <= cs[:, 0].min() * (1.0 + cfg.focal_tolerance)
    pick = np.argmin(np.abs(np.log(cs[ok, 1] / cfg.distance_prior_m)))
    focal = float(fs[ok][int(pick)])

    canon = canonical_shape(lift_points(p3, focal, res), cfg)
    rv, tv, _ = _solve_frames(canon[idx], p2r, _K(focal, res), range(T))
    # rotation vectors: keep the branch continuous (|r| near pi can flip)
    for i in range(1, T):
        n = np.linalg.norm(rv[i])
        if n > 1e-6:
            alt = rv[i] * (1 - 2 * np.pi / n)
            if np.linalg.norm(alt - rv[i - 1]) < np.linalg.norm(rv[i] - rv[i - 1]):
                rv[i] = alt
    if cfg.refine_iters > 0 and T >= 3:
        rv, tv = _refine_batched(canon[idx], p2r, focal, res, rv, tv, cfg)
    rv = _smooth(rv, cfg.median_window, cfg.smooth_sigma)
    tv = _smooth(tv, cfg.median_window, cfg.smooth_sigma)
    R = _rodrigues(rv)
    return HeadPose(canon, R.astype(np.float32), tv.astype(np.float32), focal, int(res))


def _refine_batched(canon_r: np.ndarray, p2r: np.ndarray, focal: float, res: int,
                    rv0: np.ndarray, tv0: np.ndarray, cfg: PoseConfig) -> tuple[np.ndarray, np.ndarray]:
    """Joint refinement of all frames' poses: Levenberg-Marquardt over all frames.

    Cost (pixels^2)::

        sum_t,n huber(|proj(R_t X_n + t_t) - obs_tn|; cfg.huber_px)
        + cfg.accel_weight * sum_t,n |(Xc_{t-1,n} - 2 Xc_{t,n} + Xc_{t+1,n}) * focal / z_mean|^2

    i.e. robust reprojection error of the rigid landmarks plus the squared
    temporal second difference (acceleration) of the same landmarks in camera
    space, converted to pixels. The acceleration term removes tracking jitter
    but lets smooth head motion through. Each iteration linearises in
    (rotation vector, translation) per frame with analytic Jacobians
    (Huber by iteratively reweighted least squares) and solves the sparse
    banded normal equations (blocks couple frames at most 2 apart).
    ``cfg.refine_iters`` iterations at most.
    """
    import cv2
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    T, N = p2r.shape[:2]
    X = np.asarray(canon_r, np.float64)
    obs = np.asarray(p2r, np.float64)
    wa = np.sqrt(2.0 * cfg.accel_weight) * focal / float(np.mean(tv0[:, 2]))
    c = res / 2.0
    d = cfg.huber_px

    def forward(rv: np.ndarray, tv: np.ndarray, need_jac: bool):
        R = np.empty((T, 3, 3))
        dR = np.empty((T, 3, 3, 3))  # dR[t, k] = d R_t / d r_k
        for t in range(T):
            Rt, J = cv2.Rodrigues(rv[t])
            R[t] = Rt
            dR[t] = J.reshape(3, 3, 3)
        Xc = np.einsum("tij,nj->tni", R, X) + tv[:, None, :]
        uv = focal * Xc[..., :2] / Xc[..., 2:3] + c
        rd = uv - obs
        ra = wa * (Xc[:-2] - 2 * Xc[1:-1] + Xc[2:])
        r = np.linalg.norm(rd, axis=-1)
        cost = np.where(r < d, 0.5 * r * r, d * (r - 0.5 * d)).sum() + 0.5 * (ra * ra).sum()
        if not need_jac:
            return cost, None
        A = np.zeros((T, N, 3, 6))
        A[..., :3] = np.einsum("tkij,nj->tnik", dR, X)
        A[..., 3:] = np.eye(3)
        z = Xc[..., 2]
        P = np.zeros((T, N, 2, 3))
        P[..., 0, 0] = P[..., 1, 1] = focal / z
        P[..., 0, 2] = -focal * Xc[..., 0] / z**2
        P[..., 1, 2] = -focal * Xc[..., 1] / z**2
        Jd = P @ A  # (T, N, 2, 6)
        w = np.minimum(1.0, d / np.maximum(r, 1e-12))[..., None, None]  # IRLS Huber weights
        H = {}
        g = np.einsum("tnij,tni->tj", w * Jd, rd)
        H[0] = np.einsum("tnij,tnik->tjk", w * Jd, Jd)
        B = [wa * A[:-2], -2 * wa * A[1:-1], wa * A[2:]]
        for i in range(3):
            g[i:T - 2 + i] += np.einsum("tnij,tni->tj", B[i], ra)
            for k in range(3):
                blk = np.einsum("tnij,tnik->tjk", B[i], B[k])  # frames (i, k) offsets of the triple
                key = (i, k)
                H[key] = blk
        return cost, (H, g)

    def solve(H, g, lam: float) -> np.ndarray:
        rows, cols, vals = [], [], []
        ii, jj = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
        base = np.arange(T)[:, None, None] * 6
        rows.append((base + ii).ravel()); cols.append((base + jj).ravel()); vals.append(H[0].ravel())
        tb = np.arange(T - 2)[:, None, None] * 6
        for (i, k), blk in ((key, v) for key, v in H.items() if key != 0):
            rows.append((tb + i * 6 + ii).ravel()); cols.append((tb + k * 6 + jj).ravel()); vals.append(blk.ravel())
        M = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(6 * T, 6 * T)).tocsr()
        diag = M.diagonal()
        M = M + coo_matrix((lam * diag + 1e-9, (np.arange(6 * T), np.arange(6 * T))), shape=M.shape).tocsr()
        return spsolve(M.tocsc(), -g.ravel()).reshape(T, 6)

    rv, tv = np.array(rv0, np.float64), np.array(tv0, np.float64)
    cost, jac = forward(rv, tv, True)
    lam = 1e-3
    for _ in range(cfg.refine_iters):
        step = solve(*jac, lam)
        rv_n, tv_n = rv + step[:, :3], tv + step[:, 3:]
        if not (np.all(np.isfinite(step)) and np.all(tv_n[:, 2] > 0)):
            lam *= 10
            continue
        cost_n, _ = forward(rv_n, tv_n, False)
        if cost_n < cost:
            done = (cost - cost_n) < 1e-6 * cost
            rv, tv, cost = rv_n, tv_n, cost_n
            lam = max(lam / 3, 1e-7)
            if done:
                break
            cost, jac = forward(rv, tv, True)
        else:
            lam *= 10
            if lam > 1e6:
                break
    return rv, tv


def _rodrigues(rv: np.ndarray) -> np.ndarray:
    """(T, 3) rotation vectors -> (T, 3, 3) matrices."""
    th = np.linalg.norm(rv, axis=1)[:, None, None]
    k = rv / np.maximum(th[:, :, 0], 1e-12)
    Kx = np.zeros((len(rv), 3, 3))
    Kx[:, 0, 1], Kx[:, 0, 2] = -k[:, 2], k[:, 1]
    Kx[:, 1, 0], Kx[:, 1, 2] = k[:, 2], -k[:, 0]
    Kx[:, 2, 0], Kx[:, 2, 1] = -k[:, 1], k[:, 0]
    eye = np.eye(3)[None]
    return eye + np.sin(th) * Kx + (1 - np.cos(th)) * Kx @ Kx


def rotation_angles_deg(R: np.ndarray) -> np.ndarray:
    """(T-1,) angle in degrees of the relative rotation between consecutive frames."""
    rel = np.einsum("tij,tkj->tik", R[1:], R[:-1])
    c = (np.trace(rel, axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def reprojection_error(pose: HeadPose, points2d: np.ndarray, subset: str | Sequence[int] = "all") -> np.ndarray:
    """(T,) mean pixel distance between projected canonical landmarks and ``points2d``.

    Args:
        pose: fitted pose; ``points2d`` must be at ``pose.res``.
        points2d: (T, 478, 2) detected landmarks (crop pixels).
        subset: "all" (478 points; includes expression, so larger), "rigid"
            (:data:`core.data.landmarks.SKULL_LANDMARKS`) or explicit landmark indices.
    """
    idx = list(range(N_LANDMARKS)) if subset == "all" else list(SKULL_LANDMARKS) if subset == "rigid" else list(subset)
    proj = pose.project()[:, idx]
    return np.linalg.norm(proj - np.asarray(points2d)[:, idx, :2], axis=-1).mean(1).astype(np.float32)
