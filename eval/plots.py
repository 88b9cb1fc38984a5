"""Benchmark plots (PNG, matplotlib Agg): metric bars per method, held-out PSNR vs steps."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: (row key, axis title, higher is better) of the bar plot.
BAR_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("psnr", "PSNR (dB)", True), ("psnr_face", "PSNR face (dB)", True),
    ("ssim", "SSIM", True), ("lmd_mouth", "LMD mouth (px)", False),
    ("aue_lower", "AUE lower (stand-in)", False), ("av_corr_ref", "AV corr @ real offset", True))


def _value(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_bars(rows: list[dict], methods: list[str], train_seconds: list[float],
                path: Path) -> Path:
    """One panel per metric; a bar per method and training length, mean ± sample std over
    clips (error bar omitted for one clip)."""
    from eval.methods import LABELS

    plt = _plt()
    ok = [r for r in rows if r.get("status") == "ok"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    width = 0.8 / max(1, len(train_seconds))
    colors = plt.get_cmap("tab10")
    for ax, (key, title, hib) in zip(axes.flat, BAR_METRICS):
        for k, s in enumerate(train_seconds):
            means, errs = [], []
            for m in methods:
                xs = [x for x in (_value(r.get(key)) for r in ok
                                  if r["method"] == m and float(r["train_seconds"]) == s)
                      if x is not None]
                means.append(np.mean(xs) if xs else np.nan)
                errs.append(np.std(xs, ddof=1) if len(xs) > 1 else 0.0)
            x = np.arange(len(methods)) + (k - (len(train_seconds) - 1) / 2) * width
            ax.bar(x, means, width, yerr=errs, capsize=3, color=colors(k), label=f"{s:g} s")
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels([LABELS.get(m, m) for m in methods], rotation=30, ha="right",
                           fontsize=8)
        ax.set_title(f"{title} ({'higher' if hib else 'lower'} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(title="training", fontsize=8)
    clips = sorted({r["clip"] for r in ok})
    fig.suptitle(f"Held-out metrics, mean ± std over clips ({', '.join(clips) or 'none'}); "
                 "n/a bars are empty", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def psnr_vs_steps(rows: list[dict], path: Path) -> Path:
    """Held-out PSNR against adaptation steps, prior (solid) vs scratch (dashed), one line per
    clip and training length."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab10")
    keys = sorted({(r["clip"], float(r["train_seconds"])) for r in rows
                   if r.get("status") == "ok" and r.get("curve")})
    drawn = 0
    for k, (clip, s) in enumerate(keys):
        for r in rows:
            if r.get("status") != "ok" or r["clip"] != clip or float(r["train_seconds"]) != s:
                continue
            curve = r.get("curve") or []
            if not curve:
                continue
            steps = [p["step"] for p in curve]
            ps = [_value(p["psnr"]) for p in curve]
            ls = "-" if r["method"] == "instag" else "--"
            name = "prior" if r["method"] == "instag" else "scratch"
            ax.plot(steps, [np.nan if v is None else v for v in ps], ls,
                    marker="o" if r["method"] == "instag" else "s", ms=3,
                    color=cmap(k % 10), label=f"{clip} {s:g} s, {name}")
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no adaptation curves recorded", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("adaptation step (face + mouth + fuse)")
    ax.set_ylabel("held-out PSNR (dB, evenly spaced test frames)")
    ax.set_title("Held-out PSNR vs training steps: prior (solid) vs from scratch (dashed)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
