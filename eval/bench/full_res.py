"""Scoring at the source's resolution (``python -m eval.benchmark --full-res``).

The benchmark scores renders at the evaluation resolution (256² on a CPU). What a user sees
in full-frame output is that render put back into a frame of the source's size (long side
at most 1920 px). This module scores that:

The full-resolution render of held-out frame ``k``: the cell's stored render (``res²``,
driven by the test span's own audio, pose and expression, over the test frame's plate, as
:mod:`eval.bench.protocol` makes it) resized into the crop box of the recorded frame ``k``
at the output size, with the weight :func:`head_alpha`: 1 on the recorded head (hair, face,
mouth labels) grown by ``grow`` px, falling to 0 over ``feather`` px outside it. Outside
that ring the frame is the recording's own, which is what the render's plate already
carries at ``res`` (the torso and background of the test frame): no held-out pixel of the
head enters the render, since its weight is exactly 1 on the head.

Scores, per frame, averaged over the held-out frames (:func:`score_frames`):

- ``psnr_head`` / ``ssim_head``: PSNR and mean SSIM map (:func:`eval.metrics.frames.ssim`)
  over the recorded head at the output size, rendered against recorded.
- ``sharpness``: Sobel gradient energy (3x3 Sobel on the grey image, ``gx² + gy²``) over
  the head, rendered / recorded: 1 = as much fine detail as the recording, below 1 blur.
- ``psnr_seam``: PSNR in the seam band, where the weight is strictly between 0.02 and
  0.98 (the blend of render and recording).
- the same head scores for the recorded crop itself at the clip's resolution, resized the
  same way (``*_ceiling``): what a perfect ``res²`` render would reach at the source's size
  (the resolution bottleneck alone).

Lengths are in pixels at 256 px of crop and scale with the crop box's side.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FullResConfig:
    """grow: the head mask grown by this many px (at 256 px of crop) before the fade;
    feather: the fade's width (px at 256 px of crop); seam: weights strictly between
    ``seam`` and ``1 - seam`` form the seam band."""

    grow: float = 4.0
    feather: float = 8.0
    seam: float = 0.02


def head_alpha(head: np.ndarray, side: int, cfg: FullResConfig = FullResConfig()
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, head_big)``: the render's weight (side, side) float32 and the head mask
    resized to the box (nearest), from a (r, r) bool head mask."""
    import cv2

    big = cv2.resize(head.astype(np.uint8), (side, side),
                     interpolation=cv2.INTER_NEAREST).astype(bool)
    scale = side / 256.0
    dist = cv2.distanceTransform((~big).astype(np.uint8), cv2.DIST_L2, 5)
    x = np.clip((dist - cfg.grow * scale) / max(cfg.feather * scale, 1e-6), 0.0, 1.0)
    alpha = 1.0 - x * x * (3.0 - 2.0 * x)
    return alpha.astype(np.float32), big


def sobel_energy(img: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``gx² + gy²`` (3x3 Sobel on the grey image, 0-255 scale) over ``mask``."""
    import cv2

    grey = np.asarray(img, np.float32).mean(-1)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return float((gx * gx + gy * gy)[mask].mean())


def score_frame(render: np.ndarray, recorded: np.ndarray, head: np.ndarray,
                box: tuple[int, int, int, int], crop_recorded: np.ndarray | None = None,
                cfg: FullResConfig = FullResConfig()) -> dict[str, float]:
    """Scores of one held-out frame.

    Args:
        render: (r, r, 3) uint8, the cell's render at the evaluation resolution.
        recorded: (H, W, 3) uint8, the recorded frame at the output size.
        head: (r', r') bool, the recorded head mask at the clip's resolution.
        box: the crop box in output pixels.
        crop_recorded: (r', r', 3) uint8, the recorded crop (for the ``*_ceiling`` scores).
    """
    from core.data.full_frame import composite
    from eval.metrics.frames import psnr, ssim

    x0, y0, x1, y1 = box
    side = x1 - x0
    alpha, big = head_alpha(head, side, cfg)
    rec_box = recorded[y0:y1, x0:x1]
    out = composite(recorded, render, box, alpha)[y0:y1, x0:x1]
    seam = (alpha > cfg.seam) & (alpha < 1.0 - cfg.seam)
    row = {"psnr_head": psnr(out, rec_box, big), "ssim_head": ssim(out, rec_box, mask=big),
           "sharpness": sobel_energy(out, big) / max(sobel_energy(rec_box, big), 1e-9),
           "psnr_seam": psnr(out, rec_box, seam) if seam.any() else float("nan")}
    if crop_recorded is not None:
        ceil = composite(recorded, crop_recorded, box, alpha)[y0:y1, x0:x1]
        row.update(psnr_head_ceiling=psnr(ceil, rec_box, big),
                   ssim_head_ceiling=ssim(ceil, rec_box, mask=big),
                   sharpness_ceiling=sobel_energy(ceil, big) / max(sobel_energy(rec_box, big),
                                                                   1e-9))
    return row


def score_frames(clip_dir: Path, renders: np.ndarray, test_idx: Sequence[int],
                 cfg: FullResConfig = FullResConfig(), stride: int = 1
                 ) -> dict[str, float] | None:
    """Mean scores over the held-out frames ``test_idx`` (one contiguous span) of
    ``renders`` (n, r, r, 3), every ``stride``-th of them, or None for a processed clip
    without its recorded frames (made before full-frame output)."""
    from core.data.dataset import ProcessedClip
    from core.data.masks import head_mask
    from core.data.media import iter_frames

    clip = ProcessedClip.load(clip_dir, verify=False)
    full, src = clip.full_frame, clip.source_path
    if full is None or src is None:
        return None
    idx = [int(i) for i in test_idx]
    if len(idx) != renders.shape[0]:
        raise ValueError(f"{len(idx)} held-out frames, {renders.shape[0]} renders")
    heads = head_mask(clip.labels[idx].numpy())
    rows: list[dict[str, float]] = []
    want = {k: j for j, k in enumerate(idx) if j % stride == 0}
    for k, recorded in enumerate(iter_frames(src, fps=25.0, max_frames=idx[-1] + 1)):
        if k in want:
            j = want[k]
            rows.append(score_frame(renders[j], recorded, heads[j], full.box,
                                    clip.frames[k].numpy(), cfg))
    keys = rows[0].keys()
    return {"frames": len(rows), "width": full.width, "height": full.height,
            "box_side": full.side, "res": int(renders.shape[1]),
            **{k: float(np.nanmean([r[k] for r in rows])) for k in keys}}


COLUMNS = ("psnr_head", "ssim_head", "sharpness", "psnr_seam", "psnr_head_ceiling",
           "ssim_head_ceiling", "sharpness_ceiling")


#: What ``head=`` of :func:`full_res_rows` accepts.
HEAD_MODES = ("stored", "native")


def native_renders(avatar_dir: Path, clip_dir: Path, test_idx: Sequence[int],
                   train_frames: int, stride: int = 1, progress=None) -> np.ndarray:
    """(n, s, s, 3) uint8 held-out renders of an avatar drawn at the crop box's own side
    ``s`` at the output size (:func:`core.synthesize.native_head_side`: at most 512 px, never
    below the avatar's res; ``head_res='native'`` of :func:`core.synthesize.head_resolution`, as
    full-frame Talk draws the head on a GPU). The held-out frames are the benchmark's
    (:func:`eval.bench.protocol.heldout_frames` at the avatar's res: their audio, pose,
    expression and plates, the codes of the avatar's mouth drive); only every
    ``stride``-th is drawn, the others stay black (the scorer skips them). ``progress(text,
    fraction)`` is called every 25 frames drawn."""
    import torch

    from core.model.avatar import load_avatar
    from core.synthesize import native_head_side
    from eval.bench.cells import load_clip
    from eval.bench.protocol import frame_subset, heldout_frames, render_frames

    av = load_avatar(avatar_dir)
    clip = load_clip(clip_dir)
    if clip.full_frame is None:
        raise ValueError(f"{clip_dir} keeps no recorded frames: preprocess it again")
    side = native_head_side(av.res, clip.full_frame.side)
    idx = torch.as_tensor(list(test_idx))
    frames = heldout_frames(clip, idx, av.res, train_frames, drive=av.drive)
    pick = torch.arange(0, len(idx), stride)
    out = np.zeros((len(idx), side, side, 3), np.uint8)
    for s in range(0, len(pick), 25):
        part = pick[s:s + 25]
        out[part.numpy()] = render_frames(av.umf, av.ident, frame_subset(frames, part), side=side)
        if progress:
            progress(f"{avatar_dir.name}: drawn {s + len(part)}/{len(pick)} held-out heads "
                     f"at {side}²", (s + len(part)) / len(pick))
    return out


def full_res_rows(out: Path, clip_dirs: dict[str, Path], methods: Sequence[str],
                  train_seconds: Sequence[float], test_seconds: float,
                  progress=None, stride: int = 1, head: str = "stored") -> list[dict]:
    """One row per (clip, method, training seconds) whose render is stored under ``out``:
    :func:`score_frames` of it (every ``stride``-th held-out frame), or a ``note`` when the
    clip kept no recorded frames or the render is missing.

    ``head``: ``'stored'`` scores the benchmark's own renders (the evaluation resolution,
    resized into the box); ``'native'`` draws the held-out heads of the methods that keep
    an avatar again at the crop box's own side (:func:`native_renders`) and scores those,
    the others' stored renders as they are."""
    from eval.bench.cells import cell_name, load_clip, read_render, render_path, test_span

    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
    rows: list[dict] = []
    for stem, d in clip_dirs.items():
        idx = test_span(load_clip(d), list(train_seconds), test_seconds)
        for s in train_seconds:
            for m in methods:
                name = cell_name(stem, m, s)
                path = render_path(out, name)
                row: dict = {"clip": stem, "method": m, "train_seconds": float(s)}
                if progress:
                    progress(f"full-resolution scores: {name}", 0.95)
                if not path.is_file():
                    rows.append({**row, "note": "no stored render"})
                    continue
                avatar = out / "avatars" / name
                if (head == "native" and (avatar / "model.safetensors").is_file()
                        and load_clip(d).full_frame is not None):
                    renders = native_renders(avatar, d, idx.tolist(), round(25 * s), stride,
                                             progress)
                else:
                    renders = read_render(path)
                scores = score_frames(d, renders, idx.tolist(), stride=stride)
                rows.append({**row, **scores} if scores is not None else
                            {**row, "note": "the processed clip keeps no recorded frames "
                             "(made before full-frame output): preprocess it again"})
    return rows


def full_res_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    head = ("| clip | method | train s | output | head PSNR | head SSIM | sharpness | "
            "seam PSNR | recorded crop upscaled: head PSNR / SSIM / sharpness |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['clip']} | {r['method']} | {r['train_seconds']:g} | "
                         f"{r['note']} | | | | | |")
            continue
        lines.append(
            f"| {r['clip']} | {r['method']} | {r['train_seconds']:g} | {r['width']}x{r['height']}"
            f" (box {r['box_side']} px from {r['res']}²) | {r['psnr_head']:.2f} | "
            f"{r['ssim_head']:.3f} | {r['sharpness']:.2f} | {r['psnr_seam']:.2f} | "
            f"{r['psnr_head_ceiling']:.2f} / {r['ssim_head_ceiling']:.3f} / "
            f"{r['sharpness_ceiling']:.2f} |")
    return head + "\n".join(lines) + "\n"


def write_full_res_csv(rows: list[dict], path: Path) -> Path:
    """The rows as CSV (every key of any row, in first-seen order), written atomically."""
    import csv
    import io

    from core.atomic import write_text

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())
    return path


def talk_sharpness(video: Path, avatar, every: int = 10) -> float:
    """Mean sharpness ratio of a Talk video over the face: Sobel gradient energy inside the
    face oval (the looped frame's landmarks) of the video's frame, over that of the
    avatar's recorded frame it was made on (``pingpong(t, n)``; the training frames, never
    held-out ones), every ``every``-th frame. A crop-mode video is resized into the crop box
    first, as a player showing it at the source's size would."""
    import cv2

    from core.data.masks import FACE_OVAL
    from core.data.media import iter_frames
    from core.synthesize import pingpong

    assert avatar.full is not None
    x0, y0, x1, y1 = avatar.full.box
    side = x1 - x0
    ratios: list[float] = []
    with avatar.source_frames() as src:
        for t, frame in enumerate(iter_frames(video, fps=25.0)):
            if t % every:
                continue
            i = pingpong(t, avatar.num_frames)
            rec = src[i][y0:y1, x0:x1]
            if frame.shape[:2] == (avatar.full.height, avatar.full.width):
                got = frame[y0:y1, x0:x1]  # a full frame
            else:  # the crop, shown at the box's size
                got = cv2.resize(frame, (side, side), interpolation=cv2.INTER_CUBIC)
            pts = avatar.landmarks[i].numpy()[list(FACE_OVAL)] * side
            mask = np.zeros((side, side), np.uint8)
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
            m = mask.astype(bool)
            ratios.append(sobel_energy(got, m) / max(sobel_energy(rec, m), 1e-9))
    return float(np.mean(ratios))
