"""Benchmark tables: the markdown of ``results.md`` and the flat ``results.csv``.

Rows are the cell dicts of :mod:`eval.bench.cells`. Columns are declared once here
(:data:`COLUMNS` for the markdown, :data:`CSV_COLUMNS` for the CSV); a column whose value
is unavailable in every row (weights absent offline) is left out of the markdown and named
in a note instead. Adding a metric's column = one :class:`Column` entry.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_text
from eval.bench.cells import cell_name
from eval.bench.methods import LABELS
from eval.bench.scoring import NA


@dataclass(frozen=True)
class Column:
    """A table column: row key, header, better direction ('up', 'down', 'one' = closer to
    1, '' = a control, read against the method's own value) and decimals."""

    key: str
    header: str
    better: str
    decimals: int


#: Markdown columns, headline first: head PSNR (with the head-boundary band beside it) and
#: aperture r, then the audio-ablation controls, then the rest (full-frame PSNR includes the
#: recorded plate).
COLUMNS: tuple[Column, ...] = (
    Column("psnr_head", "head PSNR", "up", 2),
    Column("psnr_band", "band PSNR", "up", 2),
    Column("aperture_r", "aperture r", "up", 3),
    Column("aperture_spread", "aperture spread", "one", 2),
    Column("speckles", "stray dots / frame", "down", 2),
    Column("aperture_ratio_top", "gap ratio, widest-open tenth", "one", 2),
    Column("psnr_mouth_open", "mouth PSNR, open quarter", "up", 2),
    Column("shuffled_aperture_r", "r, shuffled audio", "", 3),
    Column("aperture_r_pose", "aperture r, pose partialled", "up", 3),
    Column("shuffled_aperture_r_pose", "r pose partialled, shuffled audio", "", 3),
    Column("silence_aperture_r", "r, silence", "", 3),
    Column("silence_aperture_spread", "spread, silence", "", 2),
    Column("ssim_head", "head SSIM", "up", 3),
    Column("ssim_band", "band SSIM", "up", 3),
    Column("psnr_face", "face PSNR", "up", 2),
    Column("psnr", "full PSNR (incl. plate)", "up", 2),
    Column("lmd_mouth", "LMD mouth", "down", 2),
    Column("av_corr_ref", "AV corr @real offset", "up", 3),
    Column("lpips", "LPIPS", "down", 3),
    Column("lse_c", "LSE-C", "up", 2),
    Column("lse_d", "LSE-D", "down", 2),
    Column("sync_expert_conf", "sync expert conf", "up", 2),
    Column("shuffled_sync_expert_conf", "sync expert conf (shuffled audio)", "", 2),
    Column("sync_expert_dist", "sync expert dist", "down", 2),
    Column("expr_lips_r2", "expression input R² of lips-apart", "down", 3),
    Column("adapt_minutes", "adapt min", "down", 1),
)
#: Columns of the per-clip table (the headline and its controls).
PER_CLIP: tuple[str, ...] = ("psnr_head", "psnr_band", "aperture_r", "aperture_spread",
                             "shuffled_aperture_r", "silence_aperture_r", "aperture_r_pose",
                             "shuffled_aperture_r_pose", "expr_lips_r2")

_CONTROLLED = ("psnr_head", "ssim_head", "psnr_band", "ssim_band", "aperture_r",
               "aperture_r_pose", "aperture_spread", "av_corr_ref", "lse_c", "lse_d", "sync_expert_conf",
               "sync_expert_dist")
CSV_COLUMNS: tuple[str, ...] = (
    "clip", "method", "train_seconds", "status", "preset", "seed", "eval_res", "test_start",
    "test_frames", "psnr_head", "ssim_head", "psnr_band", "ssim_band", "aperture_r",
    "aperture_r_pose", "aperture_spread", "expr_lips_r2", "speckles", "aperture_ratio_top",
    "psnr_head_open", "psnr_mouth_open",
    *(f"{c}_{k}" for c in ("shuffled", "silence") for k in _CONTROLLED),
    "psnr", "ssim", "psnr_face", "ssim_face", "lpips", "lmd_mouth", "lmd_face", "aue_upper",
    "aue_lower", "av_offset", "av_corr", "av_corr_ref", "av_offset_err", "lse_c", "lse_d",
    "syncnet_offset", "sync_expert_conf", "sync_expert_dist", "sync_expert_offset",
    "gt_av_offset", "gt_av_corr", "adapt_steps", "adapt_minutes", "render_fps",
    "cell_seconds", "computed_at", "note")

_BY_KEY = {c.key: c for c in COLUMNS}


def num(v: Any) -> float | None:
    """A finite number, else None (strings such as 'n/a' or 'unavailable: ...')."""
    if isinstance(v, bool) or v is None or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _agg(vals: list[Any]) -> tuple[float, float, int] | None:
    xs = [x for x in (num(v) for v in vals) if x is not None]
    if not xs:
        return None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, len(xs)


def _fmt(a: tuple[float, float, int] | None, decimals: int) -> str:
    if a is None:
        return NA
    m, s, n = a
    return f"{m:.{decimals}f} ± {s:.{decimals}f}" if n > 1 else f"{m:.{decimals}f}"


def _unavailable(v: Any) -> bool:
    return "unavailable" in str(v).lower()


def _shown(ok: list[dict]) -> tuple[list[Column], list[str]]:
    """Columns with at least one value, and the headers of those unavailable everywhere."""
    shown, missing = [], []
    for c in COLUMNS:
        if any(num(r.get(c.key)) is not None for r in ok):
            shown.append(c)
        elif any(_unavailable(r.get(c.key)) for r in ok):
            missing.append(c.header)
    return shown, missing


def _same(s: float, r: dict) -> bool:
    return float(r["train_seconds"]) == float(s)


def results_table(rows: list[dict], methods: list[str], train_seconds: list[float]) -> str:
    """Markdown: per training length, methods x metrics as mean ± sample std over clips,
    then the headline columns per clip; notes on what is missing."""
    ok = [r for r in rows if r.get("status") == "ok"]
    clips = sorted({r["clip"] for r in rows})
    cols, missing = _shown(ok)
    lines = [f"Clips: {', '.join(clips)}. Cells: {len(ok)} of {len(rows)} finished. "
             "Values: mean ± sample std over clips (no ± = one clip). n/a = not applicable "
             "or not computed.", ""]
    for s in train_seconds:
        lines += [f"### Training on the first {s:g} s", "",
                  "| method | " + " | ".join(c.header for c in cols) + " | n |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for m in methods:
            rs = [r for r in ok if r["method"] == m and _same(s, r)]
            cells = [_fmt(_agg([r.get(c.key) for r in rs]), c.decimals) for c in cols]
            bad = sorted({r["status"].split(":")[0] for r in rows
                          if r["method"] == m and _same(s, r) and r.get("status") != "ok"})
            lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) +
                         f" | {len(rs)}{' (' + ', '.join(bad) + ')' if bad else ''} |")
        lines.append("")
    per = [_BY_KEY[k] for k in PER_CLIP if _BY_KEY[k] in cols]
    if per and len(clips) > 1:
        lines += ["### Per clip", "",
                  "| clip | training | method | " + " | ".join(c.header for c in per) + " |",
                  "|---|---|---|" + "---|" * len(per)]
        for c in clips:
            for s in train_seconds:
                for m in methods:
                    r = next((r for r in ok if r["clip"] == c and r["method"] == m
                              and _same(s, r)), None)
                    if r is None or all(num(r.get(k.key)) is None for k in per):
                        continue
                    vals = [_fmt(_agg([r.get(k.key)]), k.decimals) for k in per]
                    lines.append(f"| {c} | {s:g} s | {LABELS.get(m, m)} | " +
                                 " | ".join(vals) + " |")
        lines.append("")
    refs = {}
    for r in ok:
        if num(r.get("gt_av_corr")) is not None:
            refs.setdefault(r["clip"], (r["gt_av_offset"], r["gt_av_corr"]))
    if refs:
        lines.append("Reference, the real test video with its own audio (weight-free AV offset "
                     "/ corr): " + "; ".join(f"{c} {o:+d} / {k:.3f}"
                                             for c, (o, k) in sorted(refs.items())) + ".")
    notes = [f"{cell_name(r['clip'], r['method'], float(r['train_seconds']))}: {r['note']}"
             for r in ok if r.get("note")]
    if notes:
        lines.append("Notes: " + "; ".join(notes) + ".")
    failed = [f"{cell_name(r['clip'], r['method'], float(r['train_seconds']))} "
              f"({r['status']})" for r in rows if r.get("status") != "ok"]
    if failed:
        lines.append("Not finished: " + "; ".join(failed) + ".")
    if missing:
        lines.append("Not shown, unavailable here (weights absent offline; the CSV says "
                     "where they were looked for): " + ", ".join(missing) + ".")
    lines += ["", LEGEND]
    return "\n".join(lines) + "\n"


LEGEND = """Columns. *head PSNR / SSIM*: over the head pixels only (hair + face + mouth labels of the
recording), the pixels an avatar renders. *band PSNR / SSIM*: over the pixels within 4 px (at
256 px; scaled with the frame size) of the recorded head boundary on either side, where halos
and background-coloured lines at the head's edge show. *aperture r*: Pearson correlation of the rendered and
recorded inner-lip gap (FaceMesh on both, over the eye-corner distance) across the held-out
frames; *aperture spread*: std(rendered gap) / std(recorded gap), 1 = moves as much as the
person, 0 = a static mouth. *r, shuffled audio* / *r, silence*: aperture r of the same avatar,
plates, poses and expression driven by time-shuffled audio windows / by silence; a method that
uses the audio loses aperture r under shuffling (compare with its own aperture r). *aperture r,
pose partialled*: the partial correlation with the head pose (rotation and translation of
each held-out frame, which render and recording share) held out, so a mouth that merely
follows the head, or a detector biased by the view, scores 0. *expression input R² of
lips-apart*: how much of the held-out lips-apart signal the expression input the avatar was
driven with could carry (linear fit). *full PSNR
(incl. plate)*: every pixel of the frame, including the torso and background copied from the
recorded test frame, as the paper reports it (not comparable across methods that paste
different amounts of recording). *LMD mouth*: mean lip-landmark distance after centring each
frame (rewards an average mouth). *AV corr @real offset*: weight-free correlation of mouth
opening with 1-4 kHz loudness at the recording's own best offset (noisy; about 0.2 is its
noise floor). AUE and the other CSV columns are defined in `eval/bench/scoring.py`."""


def _short(v: Any) -> Any:
    """Unavailable-metric strings cut to their reason (the cell JSON keeps the full text)."""
    return re.sub(r"(weights not found|No module named '[\w.]+').*", r"\1", v) \
        if isinstance(v, str) else v


def write_csv(rows: list[dict], path: Path) -> Path:
    """``results.csv``: one line per cell, :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _short(r.get(k, "")) for k in CSV_COLUMNS})
    write_text(path, buf.getvalue())
    return path


#: The paper's published numbers (METHOD.md section 8): other data, other hardware, GPU scale.
PUBLISHED_MD = """### Published reference (InsTaG paper, CVPR 2025) -- published figures on other data

Not comparable one-to-one: the paper's own test clips, 512 px, GPU training at paper scale,
LPIPS (AlexNet) and SyncNet weights available, OpenFace AUs; its PSNR is full-frame (includes
the recorded plate). Our numbers above come from our clips, our presets and weight-free
stand-ins where marked.

| method (5 s training) | PSNR full / face | LPIPS full / face | LMD | Sync-C | training | FPS |
|---|---|---|---|---|---|---|
| InsTaG | 28.86 / 26.32 | 0.039 / 0.026 | 3.167 | 5.318 | 13 min | 82.5 |
| TalkingGaussian (from scratch) | 28.32 / 26.01 | 0.041 / 0.028 | 3.588 | 3.556 | 31 min | 114 |
| ER-NeRF | 28.23 / 25.63 | 0.040 / 0.031 | 3.541 | 3.074 | 2 h | 30.8 |
| MimicTalk | 24.69 / 26.27 | 0.075 / 0.031 | 3.489 | 6.926 | 16 min | 8.2 |

| PSNR by training length (published) | 5 s | 10 s | 20 s |
|---|---|---|---|
| InsTaG | 28.86 | 29.45 | 29.82 |
| TalkingGaussian (from scratch) | 28.32 | 29.13 | 29.54 |
"""
