"""Benchmark plots (PNG, matplotlib Agg; charts only, no frames): metric bars per method with
the audio-ablation controls, and held-out PSNR vs adaptation steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.bench.methods import LABELS
from eval.bench.tables import num

#: (row key, axis title, higher is better, control keys drawn as markers) of the bar plot,
#: headline first.
BAR_METRICS: tuple[tuple[str, str, bool | None, tuple[str, ...]], ...] = (
    ("psnr_head", "head PSNR (dB)", True, ()),
    ("aperture_r", "aperture r (x: shuffled audio, o: silence)", True,
     ("shuffled_aperture_r", "silence_aperture_r")),
    ("aperture_spread", "aperture spread (1 = as the person)", None,
     ("shuffled_aperture_spread", "silence_aperture_spread")),
    ("psnr", "full-frame PSNR incl. recorded plate (dB)", True, ()),
    ("lmd_mouth", "LMD mouth (px)", False, ()),
    ("av_corr_ref", "AV corr @ real offset", True, ()),
)
_MARKERS = ("x", "o")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _values(ok: list[dict], key: str, m: str, s: float) -> list[float]:
    return [x for x in (num(r.get(key)) for r in ok
                        if r["method"] == m and float(r["train_seconds"]) == s) if x is not None]


def metric_bars(rows: list[dict], methods: list[str], train_seconds: list[float],
                path: Path) -> Path:
    """One panel per metric; a bar per method and training length, mean ± sample std over
    clips (error bar omitted for one clip); controls as markers at their mean."""
    plt = _plt()
    ok = [r for r in rows if r.get("status") == "ok"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    width = 0.8 / max(1, len(train_seconds))
    colors = plt.get_cmap("tab10")
    for ax, (key, title, hib, controls) in zip(axes.flat, BAR_METRICS):
        for k, s in enumerate(train_seconds):
            x = np.arange(len(methods)) + (k - (len(train_seconds) - 1) / 2) * width
            vals = [_values(ok, key, m, s) for m in methods]
            means = [np.mean(v) if v else np.nan for v in vals]
            errs = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]
            ax.bar(x, means, width, yerr=errs, capsize=3, color=colors(k), label=f"{s:g} s")
            for ck, mk in zip(controls, _MARKERS):
                cm = [np.mean(v) if v else np.nan
                      for v in (_values(ok, ck, m, s) for m in methods)]
                ax.scatter(x, cm, marker=mk, color="black", s=22, zorder=3,
                           facecolors="none" if mk == "o" else None)
        if key.startswith("aperture_r"):
            ax.axhline(0.0, color="grey", lw=0.8)
        if key == "aperture_spread":
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels([LABELS.get(m, m) for m in methods], rotation=30, ha="right",
                           fontsize=8)
        better = {True: "higher is better", False: "lower is better", None: "closer to 1"}[hib]
        ax.set_title(f"{title}\n({better})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(title="training", fontsize=8)
    clips = sorted({r["clip"] for r in ok})
    fig.suptitle(f"Held-out metrics, mean ± std over clips ({', '.join(clips) or 'none'}); "
                 "empty = n/a", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def psnr_vs_steps(rows: list[dict], path: Path) -> Path:
    """Held-out head PSNR (face PSNR for curves recorded without it) against adaptation
    steps, prior (solid) vs scratch (dashed), one colour per clip and training length."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab10")
    adapted = [r for r in rows if r.get("status") == "ok" and r.get("curve")
               and r["method"] in ("instag", "scratch")]
    keys = sorted({(r["clip"], float(r["train_seconds"])) for r in adapted})
    region = "head" if all("psnr_head" in p for r in adapted for p in r["curve"]) else "face"
    for r in adapted:
        k = keys.index((r["clip"], float(r["train_seconds"])))
        steps = [p["step"] for p in r["curve"]]
        ps = [num(p.get(f"psnr_{region}")) for p in r["curve"]]
        prior = r["method"] == "instag"
        ax.plot(steps, [np.nan if v is None else v for v in ps], "-" if prior else "--",
                marker="o" if prior else "s", ms=3, color=cmap(k % 10),
                label=f"{r['clip']} {float(r['train_seconds']):g} s, "
                      f"{'prior' if prior else 'scratch'}")
    if not adapted:
        ax.text(0.5, 0.5, "no adaptation curves recorded", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("adaptation step (face + mouth + fuse)")
    what = "hair + face + mouth" if region == "head" else "face + mouth"
    ax.set_ylabel(f"held-out {region} PSNR (dB, {what} pixels)")
    ax.set_title(f"Held-out {region} PSNR vs training steps: prior (solid) vs from scratch "
                 "(dashed)", fontsize=10)
    ax.grid(alpha=0.3)
    if adapted:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
