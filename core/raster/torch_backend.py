"""Tile-based front-to-back alpha compositing in plain torch, with a hand-written backward.

Runs on any device (written for CPU). Rules are gsplat's (``rasterize_to_pixels``):

* pixel centre ``(j + 0.5, i + 0.5)``; ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` with
  ``(dx, dy) = mean2d - pixel`` and conic ``(a, b, c)``, evaluated as the equivalent sum of
  squares ``0.5 a (dx + beta dy)^2 + 0.5 gamma dy^2`` (no cancellation for thin Gaussians);
* ``alpha = min(0.999, o * exp(-sigma))``, computed as ``exp(min(log o - sigma, log 0.999))``;
  Gaussians with ``alpha < 1/255`` are skipped;
* front to back, ``T <- T (1 - alpha)``; the first Gaussian that would bring ``T <= 1e-4``
  ends the pixel and is *not* composited (exclusive, as gsplat);
* ``colour = sum_i alpha_i T_i f_i + T_final * background``, ``alpha_out = 1 - T_final``.

Work is organised per 16x16 tile (depth-sorted lists from :mod:`core.raster.tiles`) as
dense ``(tiles, 16, 16, K)`` tensor arithmetic with ``K`` (list position) as the contiguous
axis; ``sigma`` is assembled from per-row and per-column terms (three full-size passes). Memory is bounded by ``budget`` (tile pixels x list entries per chunk) and the
buffers are reused between chunks.

* Forward: depth blocks of 32, 32, 64, 64, ... entries across all unfinished tiles; a tile
  leaves the loop as soon as all its pixels stopped (the CPU counterpart of gsplat's early
  exit). Only the final transmittance and the number of composited entries per pixel are
  kept.
* Backward (hand-written): tiles grouped by the longest composited prefix, recomputed back to
  front, so ``sum over entries behind`` is a prefix sum and the transmittance in front of an
  entry is ``T_final / prod(1 - alpha behind)`` -- no division of running sums by
  ``1 - alpha``, which keeps float32 accurate. Gradients are scattered for the screen-space
  means, the quadratic form, opacities, features and background.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .tiles import TileBins

LOG_ALPHA_MAX = math.log(0.999)
# threshold_ keeps x > thr; the float32 just below 1/255 keeps alpha >= 1/255 as gsplat does
ALPHA_THR = float(np.nextafter(np.float32(1.0 / 255.0), np.float32(0.0)))
T_STOP = 1e-4
LOG_ALPHA_LOW = -12.0
PAD_LOGO = -1.0e4  # log-opacity of the padding Gaussian: alpha = exp(-1e4) = 0
DEFAULT_BUDGET = 1 << 19  # (tile pixels x list entries) per chunk; 2 MB per float buffer
FIRST_BLOCK = 32  # forward depth block; doubles every two blocks up to MAX_BLOCK
MAX_BLOCK = 128


class _Workspace:
    """Reusable flat buffers, so chunk loops do not page-fault fresh memory every time."""

    def __init__(self) -> None:
        self.bufs: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        n = math.prod(shape)
        key = (name, dtype, device)
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(max(n, 1), dtype=dtype, device=device)
            self.bufs[key] = buf
        return buf[:n].view(shape)


_WS = threading.local()


def _workspace() -> _Workspace:
    ws = getattr(_WS, "ws", None)
    if ws is None:
        ws = _WS.ws = _Workspace()
    return ws


def _plan_chunks(need: Tensor, budget: int, px: int) -> list[tuple[Tensor, int]]:
    """Group tiles with ``need > 0`` into chunks of similar list length.

    Returns a list of ``(tile_ids (Tc,), K)`` with ``Tc * px * K <= budget`` (or one tile).
    """
    ids = torch.nonzero(need > 0).squeeze(1)
    if ids.numel() == 0:
        return []
    order = torch.argsort(need[ids], stable=True)
    ids = ids[order]
    ks = need[ids].tolist()
    out: list[tuple[Tensor, int]] = []
    i, n = 0, len(ks)
    while i < n:
        j = i + 1
        while j < n and (j - i + 1) * ks[j] * px <= budget:
            j += 1
        out.append((ids[i:j], int(ks[j - 1])))
        i = j
    return out


def _tile_geometry(tiles: Tensor, bins: TileBins, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(Tc,) tile ids -> pixel-centre x of each column (Tc, t) and y of each row (Tc, t)."""
    t = bins.tile
    base = torch.arange(t, device=tiles.device, dtype=dtype) + 0.5
    colx = (tiles % bins.tiles_x).to(dtype).mul_(t).unsqueeze(1) + base
    rowy = (tiles // bins.tiles_x).to(dtype).mul_(t).unsqueeze(1) + base
    return colx, rowy


def _log_alpha(prm: Tensor, colx: Tensor, rowy: Tensor, out: Tensor,
               u: Tensor) -> tuple[Tensor, Tensor]:
    """Unclamped ``log o - sigma`` for a chunk, written into ``out`` (Tc, t, t, K).

    prm: (Tc, K, 6) rows ``(mean_x, mean_y, a, beta, gamma, log o)`` with
    ``sigma = 0.5 a (dx + beta dy)^2 + 0.5 gamma dy^2``. ``u`` (Tc, t, t, K) receives
    ``dx + beta dy``. Returns the offsets ``dx`` (Tc, t cols, K) and ``dy`` (Tc, t rows, K),
    ``mean - pixel centre``.
    """
    mx, my, a, beta, gamma, lo = prm.unbind(-1)
    dx = mx.unsqueeze(1) - colx.unsqueeze(2)  # (Tc, tc, K)
    dy = my.unsqueeze(1) - rowy.unsqueeze(2)  # (Tc, tr, K)
    row = lo.unsqueeze(1) - 0.5 * gamma.unsqueeze(1) * dy * dy  # (Tc, tr, K)
    torch.add(dx.unsqueeze(1), (beta.unsqueeze(1) * dy).unsqueeze(2), out=u)
    torch.mul(u, u, out=out)
    torch.addcmul(row.unsqueeze(2), out, (-0.5 * a)[:, None, None, :], out=out)
    return dx, dy


def _alpha_(L: Tensor) -> Tensor:
    """In place: log-alpha -> ``alpha = min(0.999, exp(L))``, zeroed below 1/255.

    The lower clamp (alpha = e^-12 there, far below 1/255 and zeroed anyway) keeps ``exp``
    away from denormal results, which are very slow on CPUs.
    """
    L.clamp_(min=LOG_ALPHA_LOW, max=LOG_ALPHA_MAX).exp_()
    return F.threshold_(L, ALPHA_THR, 0.0)


def _outside_image(bins: TileBins, width: int, height: int, device: torch.device) -> Tensor:
    """(n_tiles, P) bool: tile pixels beyond the right / bottom image edge."""
    t = bins.tile
    r = torch.arange(t, device=device)
    ty = torch.arange(bins.tiles_y, device=device).repeat_interleave(bins.tiles_x)
    tx = torch.arange(bins.tiles_x, device=device).repeat(bins.tiles_y)
    out_y = (ty.unsqueeze(1) * t + r) >= height  # (n_tiles, t rows)
    out_x = (tx.unsqueeze(1) * t + r) >= width  # (n_tiles, t cols)
    return (out_y.unsqueeze(2) | out_x.unsqueeze(1)).reshape(-1, t * t)


def _forward(table: Tensor, ftab: Tensor, bins: TileBins, width: int, height: int, budget: int,
             ws: _Workspace) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of all tiles, in depth blocks with early exit.

    Returns premultiplied features (n_tiles, P, C), final transmittance (n_tiles, P) and the
    number of composited list entries per pixel (n_tiles, P) int64 (P = pixels per tile).
    """
    dev, dtype = table.device, table.dtype
    t = bins.tile
    P = t * t
    n_tiles = bins.tiles_x * bins.tiles_y
    C = ftab.shape[1]
    pad = ftab.shape[0] - 1
    last = max(bins.gauss_ids.numel() - 1, 0)
    out_t = torch.zeros(n_tiles, C, P, dtype=dtype, device=dev)  # channel-major: fast bmm
    T = torch.ones(n_tiles, P, dtype=dtype, device=dev)
    n_incl = torch.zeros(n_tiles, P, dtype=torch.int64, device=dev)
    done = _outside_image(bins, width, height, dev)  # never composited: no work, no early-exit block
    one = torch.ones((), dtype=dtype, device=dev)
    active = torch.nonzero(bins.counts > 0).squeeze(1)
    j0, it = 0, 0
    while active.numel():
        Kb = min(MAX_BLOCK, FIRST_BLOCK << (it // 2))
        k = torch.arange(Kb, device=dev)
        per = max(1, budget // (P * Kb))
        keep = []
        for s in range(0, active.numel(), per):
            tiles = active[s:s + per]
            Ta = tiles.numel()
            rem = (bins.counts[tiles] - j0).clamp_max(Kb)  # valid entries in this block
            pos = (bins.offsets[tiles].unsqueeze(1) + j0 + k).clamp_max(last)
            idx = torch.where(k < rem.unsqueeze(1), bins.gauss_ids[pos], pad)
            colx, rowy = _tile_geometry(tiles, bins, dtype)
            L = ws.get("f0", (Ta, t, t, Kb), dtype, dev)
            _log_alpha(table[idx], colx, rowy, L, ws.get("f1", (Ta, t, t, Kb), dtype, dev))
            alpha = _alpha_(L).view(Ta, P, Kb)
            om = ws.get("f1", (Ta, P, Kb), dtype, dev)
            torch.sub(one, alpha, out=om)
            Tb = ws.get("f2", (Ta, P, Kb), dtype, dev)
            torch.cumprod(om, -1, out=Tb)  # transmittance after each entry
            dprev = done[tiles]
            carry = torch.where(dprev, torch.zeros_like(T[tiles]), T[tiles])  # done pixels: 0
            if j0 > 0 or bool(dprev.any()):
                Tb.mul_(carry.unsqueeze(-1))
            gt = ws.get("b0", (Ta, P, Kb), torch.bool, dev)
            torch.gt(Tb, T_STOP, out=gt)
            # composited entries form a prefix; padding entries never count
            n_new = torch.minimum(gt.sum(-1), rem.unsqueeze(1))
            tf = Tb.gather(-1, (n_new - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
            tf = torch.where(n_new > 0, tf, carry)
            Tb.clamp_(min=tf.unsqueeze(-1))  # entries after the stop keep T_final: weight 0
            w = om  # reuse: w_i = T_{i-1} - T_i = alpha_i T_{i-1}
            torch.sub(carry, Tb[..., 0], out=w[..., 0])
            torch.sub(Tb[..., :-1], Tb[..., 1:], out=w[..., 1:])
            # (f^T w^T) is several times faster than (w f) for few channels
            out_t.index_add_(0, tiles, torch.bmm(ftab[idx].transpose(1, 2), w.transpose(1, 2)))
            T[tiles] = torch.where(dprev, T[tiles], tf)
            n_incl[tiles] += torch.where(dprev, torch.zeros_like(n_new), n_new)
            dnow = dprev | (n_new < rem.unsqueeze(1))
            done[tiles] = dnow
            keep.append(tiles[~dnow.all(1)])
        active = torch.cat(keep)
        active = active[bins.counts[active] > j0 + Kb]
        j0 += Kb
        it += 1
    return out_t.transpose(1, 2).contiguous(), T, n_incl


def _backward_chunk(tiles: Tensor, K: int, bins: TileBins, need: Tensor, table: Tensor,
                    ftab: Tensor, g_col: Tensor, g_alpha: Tensor, t_fin: Tensor,
                    n_incl: Tensor, bg: Tensor, g_table: Tensor, g_feats: Tensor,
                    ws: _Workspace) -> None:
    """Gradients for one chunk, accumulated into ``g_table`` (N+1, 6) and ``g_feats`` (N+1, C).

    g_col: (Tc, P, C) dL/d colour; g_alpha: (Tc, P) dL/d alpha; t_fin, n_incl as from the
    forward. Entries are laid out back to front: position ``k`` holds list entry
    ``need - 1 - k``, so sums over the entries behind are prefix sums and transmittances are
    ``T_final / (suffix product of 1 - alpha)``, with no cancellation.
    """
    dev, dtype = table.device, table.dtype
    Tc = tiles.numel()
    t = bins.tile
    P = t * t
    pad = ftab.shape[0] - 1
    k = torch.arange(K, device=dev)
    nd = need[tiles]
    orig = nd.unsqueeze(1) - 1 - k  # list index of position k
    pos = (bins.offsets[tiles].unsqueeze(1) + orig).clamp(0, max(bins.gauss_ids.numel() - 1, 0))
    idx = torch.where(orig >= 0, bins.gauss_ids[pos], pad)
    colx, rowy = _tile_geometry(tiles, bins, dtype)
    prm = table[idx]
    f = ftab[idx]  # (Tc, K, C)
    shp = (Tc, P, K)
    A = ws.get("f0", (Tc, t, t, K), dtype, dev)
    U = ws.get("f7", (Tc, t, t, K), dtype, dev)
    _, dy = _log_alpha(prm, colx, rowy, A, U)
    A = A.view(shp)
    clamped = None
    if float(prm[..., 5].max()) >= LOG_ALPHA_MAX:  # only opacities >= 0.999 can hit the cap
        clamped = ws.get("b0", shp, torch.bool, dev)
        torch.ge(A, LOG_ALPHA_MAX, out=clamped)
    alpha = _alpha_(A)
    # composited entries: list index < n_incl  <=>  k >= need - n_incl
    kstart = nd.unsqueeze(1) - n_incl  # (Tc, P)
    if bool((kstart > 0).any()):  # some pixel stopped before the end of its tile's list
        late = ws.get("b1", shp, torch.bool, dev)
        torch.lt(k, kstart.unsqueeze(-1), out=late)
        alpha.masked_fill_(late, 0.0)
    om = ws.get("f1", shp, dtype, dev)
    torch.sub(torch.ones((), dtype=dtype, device=dev), alpha, out=om)
    Tbf = ws.get("f2", shp, dtype, dev)
    torch.cumprod(om, -1, out=Tbf)  # product of (1 - alpha) over this entry and those behind
    torch.div(t_fin.unsqueeze(-1), Tbf, out=Tbf)  # transmittance in front of each entry
    w = ws.get("f3", shp, dtype, dev)
    torch.mul(Tbf, alpha, out=w)
    G = ws.get("f4", shp, dtype, dev)
    torch.bmm(g_col, f.transpose(1, 2), out=G)  # dL/dcolour . f
    wG = ws.get("f5", shp, dtype, dev)
    torch.mul(w, G, out=wG)
    S = ws.get("f6", shp, dtype, dev)  # sum over entries behind (exclusive prefix sum)
    S[..., 0] = 0.0
    if K > 1:
        torch.cumsum(wG[..., :-1], -1, out=S[..., 1:])
    tail = t_fin * ((g_col * bg).sum(-1) - g_alpha)  # background and alpha terms
    S.add_(tail.unsqueeze(-1))
    # dL/dalpha_i = T_i G_i - (sum_{j behind} w_j G_j + T_fin (g.bg - gA)) / (1 - alpha_i)
    G.mul_(Tbf)
    S.div_(om)
    G.sub_(S)
    gL = G.mul_(alpha)  # d/d(log alpha); zero for skipped / stopped entries
    if clamped is not None:
        gL.masked_fill_(clamped, 0.0)
    # sigma = 0.5 a u^2 + 0.5 gamma dy^2, u = dx + beta dy, dx = mean_x - px; log alpha = log o - sigma
    a, beta, gamma = prm[..., 2], prm[..., 3], prm[..., 4]
    gL4 = gL.view(Tc, t, t, K)
    rows = gL4.sum(2)  # (Tc, tr, K): sum over columns of gL
    GU = wG.view(Tc, t, t, K)  # reuse buffer
    torch.mul(gL4, U, out=GU)
    s_u = GU.sum((1, 2))  # sum gL u
    s_udy = (GU.sum(2) * dy).sum(1)  # sum gL u dy
    GU.mul_(U)
    s_uu = GU.sum((1, 2))  # sum gL u^2
    s_dy = (rows * dy).sum(1)
    s_dydy = (rows * dy * dy).sum(1)
    g_lo = rows.sum(1)
    g_mx = -a * s_u
    g = torch.stack([g_mx, beta * g_mx - gamma * s_dy, -0.5 * s_uu, -a * s_udy, -0.5 * s_dydy, g_lo], -1)
    flat = idx.reshape(-1)
    g_table.index_add_(0, flat, g.reshape(-1, 6))
    g_f = torch.bmm(g_col.transpose(1, 2), w)  # (Tc, C, K); faster than w^T g_col
    g_feats.index_add_(0, flat, g_f.transpose(1, 2).reshape(-1, f.shape[-1]))


def _to_tiles(img: Tensor, bins: TileBins) -> Tensor:
    """(H, W, C) image -> (n_tiles, P, C), zero padded at the right/bottom edge."""
    H, W, C = img.shape
    t = bins.tile
    Hp, Wp = bins.tiles_y * t, bins.tiles_x * t
    if (Hp, Wp) != (H, W):
        img = F.pad(img, (0, 0, 0, Wp - W, 0, Hp - H))
    return (img.reshape(bins.tiles_y, t, bins.tiles_x, t, C).permute(0, 2, 1, 3, 4)
            .reshape(bins.tiles_y * bins.tiles_x, t * t, C))


def _from_tiles(x: Tensor, bins: TileBins, height: int, width: int) -> Tensor:
    """(n_tiles, P, C) -> (H, W, C)."""
    C = x.shape[-1]
    t = bins.tile
    img = (x.reshape(bins.tiles_y, bins.tiles_x, t, t, C).permute(0, 2, 1, 3, 4)
           .reshape(bins.tiles_y * t, bins.tiles_x * t, C))
    return img[:height, :width].contiguous()


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d: Tensor, quad: Tensor, opacities: Tensor, feats: Tensor,
                background: Tensor, bins: TileBins, width: int, height: int, budget: int):
        C = feats.shape[1]
        lo = torch.log(opacities.detach().clamp_min(1e-30)).unsqueeze(1)
        table = torch.cat([means2d.detach(), quad.detach(), lo.to(means2d.dtype)], 1)
        table = torch.cat([table, table.new_tensor([[0, 0, 0, 0, 0, PAD_LOGO]])], 0).contiguous()
        ftab = torch.cat([feats.detach(), feats.new_zeros(1, C)], 0).contiguous()
        ws = _workspace()
        out, t_fin, n_incl = _forward(table, ftab, bins, width, height, budget, ws)
        out.addcmul_(t_fin.unsqueeze(-1), background.detach())
        ctx.save_for_backward(table, ftab, background, t_fin, n_incl, opacities)
        ctx.bins, ctx.size, ctx.budget = bins, (height, width), budget
        img = _from_tiles(out, bins, height, width)
        alpha = _from_tiles((1.0 - t_fin).unsqueeze(-1), bins, height, width)
        return img, alpha

    @staticmethod
    def backward(ctx, g_img: Tensor, g_alpha: Tensor):
        table, ftab, bg, t_fin, n_incl, opacities = ctx.saved_tensors
        bins, (H, W), budget = ctx.bins, ctx.size, ctx.budget
        N = ftab.shape[0] - 1
        if g_img is None:
            g_img = ftab.new_zeros(H, W, ftab.shape[1])
        if g_alpha is None:
            g_alpha = ftab.new_zeros(H, W, 1)
        gc = _to_tiles(g_img.to(ftab.dtype).contiguous(), bins).contiguous()
        ga = _to_tiles(g_alpha.to(ftab.dtype).contiguous(), bins).squeeze(-1).contiguous()
        g_table = torch.zeros_like(table)
        g_feats = torch.zeros_like(ftab)
        need = n_incl.max(1).values
        ws = _workspace()
        bgd = bg.detach().to(ftab.dtype)
        for tiles, K in _plan_chunks(need, budget, bins.tile * bins.tile):
            _backward_chunk(tiles, K, bins, need, table, ftab, gc[tiles], ga[tiles],
                            t_fin[tiles], n_incl[tiles], bgd, g_table, g_feats, ws)
        g_bg = None
        if ctx.needs_input_grad[4]:
            g_bg = (gc * t_fin.unsqueeze(-1)).sum((0, 1)).to(bg.dtype)
        g_means2d = g_table[:N, 0:2]
        g_quad = g_table[:N, 2:5]
        g_op = (g_table[:N, 5] / opacities.detach().clamp_min(1e-30)).to(opacities.dtype)
        return g_means2d, g_quad, g_op, g_feats[:N], g_bg, None, None, None, None


def composite(means2d: Tensor, quad: Tensor, opacities: Tensor, feats: Tensor,
              background: Tensor, bins: TileBins, width: int, height: int,
              budget: int = DEFAULT_BUDGET) -> tuple[Tensor, Tensor]:
    """Differentiable tile compositing.

    Args:
        means2d: (N, 2) pixels.  opacities: (N,) in [0, 1].
        quad: (N, 3) ``(a, beta, gamma)`` of :class:`core.raster.projection.Projected`, the
            inverse 2D covariance written as ``0.5 a (dx + beta dy)^2 + 0.5 gamma dy^2``.
        feats: (N, C) per-Gaussian features (colours, extras, depth...).
        background: (C,) composited behind everything.
        bins: tile lists of the visible Gaussians.
        budget: max (tile pixels x list entries) per chunk; bounds temporary memory
            (about 40 bytes per entry in the backward).
    Returns:
        image (H, W, C) and alpha (H, W, 1).
    """
    return _Composite.apply(means2d, quad, opacities, feats, background, bins,
                            width, height, budget)
