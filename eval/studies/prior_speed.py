"""The short schedule against the full one, and the prior's speed: held-out head PSNR and
lip aperture r against adaptation wall time, with the prior and from scratch.

``python -m eval.studies.prior_speed --fast RUN --full RESULTS_CSV [--plot PNG]`` prints markdown
tables and draws the plot:

* ``RUN``: a benchmark folder of a short-schedule run (``--preset fast --curve-aperture``:
  its cells and their held-out curves, which carry wall seconds and aperture r);
* ``RESULTS_CSV``: the ``results.csv`` of a full-schedule run of the same clips (its head
  PSNR, aperture r and adaptation minutes; drawn as the end points of the full schedule).

Per clip and method: the final head PSNR and aperture r of both, their difference, and
the wall time at which the short run's curve first reaches 95 % of its final value (and,
for PSNR, 95 % of its rise from the first curve point to the last). Means over the clips
with speech leave out :data:`SILENT_CLIPS` (no speech to follow: aperture r says nothing
there).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

from eval.bench.tables import num

#: Evaluation clips whose audio track is silent (about -65 dBFS).
SILENT_CLIPS = ("woman_20s_512x480_30fps",)
METHODS = ("instag", "scratch")
NAMES = {"instag": "prior", "scratch": "from scratch"}


def read_cells(run: Path) -> list[dict]:
    """The finished cells of a benchmark folder (``cells/*.json``)."""
    rows = [json.loads(p.read_text()) for p in sorted((run / "cells").glob("*.json"))]
    return [r for r in rows if r.get("status") == "ok"]


def _value(text: str) -> float | str:
    """A CSV cell as a number where it is one ('n/a' and other text stay text)."""
    try:
        return float(text)
    except ValueError:
        return text


def read_csv(path: Path) -> list[dict]:
    """The finished rows of a benchmark ``results.csv``, numeric cells as numbers (the same
    types as the cell files :func:`read_cells` reads)."""
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(f)
                if r.get("status") == "ok"]


def rescale(rows: list[dict], wall_s: float) -> list[dict]:
    """Copies of ``rows`` (cells or CSV rows) as if each adaptation had taken ``wall_s``
    seconds: ``adapt_minutes`` set to it and every curve point's seconds scaled by the same
    factor. For runs whose clocks a loaded machine stretched (each cell by its own factor):
    the shape of each curve over its own adaptation is kept, the seconds become those of one
    adaptation measured alone (``python -m bench.adapt``)."""
    out = []
    for r in rows:
        mins = num(r.get("adapt_minutes"))
        if mins is None or mins <= 0:
            out.append(r)
            continue
        k = wall_s / (mins * 60.0)
        curve = [{**p, "seconds": p["seconds"] * k} if num(p.get("seconds")) is not None
                 else p for p in r.get("curve") or []]
        out.append({**r, "adapt_minutes": wall_s / 60.0, "curve": curve})
    return out


def first_reach(curve: list[dict], key: str, level: float) -> float:
    """Wall seconds of the first curve point at or above ``level`` (NaN: never)."""
    for p in curve:
        v = num(p.get(key))
        if v is not None and v >= level:
            return float(p["seconds"])
    return math.nan


def speed_row(row: dict) -> dict:
    """Times to 95 % of the final value of one short-run cell's curve (seconds)."""
    c = [p for p in row.get("curve") or [] if num(p.get("seconds")) is not None]
    out = {"t95_psnr": math.nan, "t95_rise": math.nan, "t95_r": math.nan}
    if not c:
        return out
    last, first = num(c[-1].get("psnr_head")), num(c[0].get("psnr_head"))
    if last is not None:
        out["t95_psnr"] = first_reach(c, "psnr_head", 0.95 * last)
        if first is not None:
            out["t95_rise"] = first_reach(c, "psnr_head", first + 0.95 * (last - first))
    r = num(c[-1].get("aperture_r"))
    if r is not None and r > 0:
        out["t95_r"] = first_reach(c, "aperture_r", 0.95 * r)
    return out


def _f(v: float | None, d: int = 2, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{d}f}" if sign else f"{v:.{d}f}"


def _mean(vals: list[float | None]) -> float | None:
    xs = [v for v in vals if v is not None and not math.isnan(v)]
    return float(np.mean(xs)) if xs else None


def tables(fast: list[dict], full: list[dict]) -> str:
    """Markdown: per clip and method, the short and full schedule's head PSNR, aperture r
    and adaptation minutes, their differences, and the short run's times to 95 %; then the
    means."""
    key = {(r["clip"], r["method"]): r for r in full}
    lines = ["| clip | method | head PSNR fast | head PSNR cpu | Δ dB | aperture r fast | "
             "aperture r cpu | Δ r | adapt min fast | adapt min cpu | t95 PSNR (s) | "
             "t95 PSNR rise (s) | t95 r (s) |", "|" + "---|" * 13]
    agg: dict[tuple[str, str], list[tuple]] = {}
    for r in sorted(fast, key=lambda r: (r["clip"], r["method"])):
        if r["method"] not in METHODS:
            continue
        f = key.get((r["clip"], r["method"]), {})
        ph, pf = num(r.get("psnr_head")), num(f.get("psnr_head"))
        ah, af = num(r.get("aperture_r")), num(f.get("aperture_r"))
        mh, mf = num(r.get("adapt_minutes")), num(f.get("adapt_minutes"))
        sp = speed_row(r)
        dp = None if ph is None or pf is None else ph - pf
        da = None if ah is None or af is None else ah - af
        silent = r["clip"] in SILENT_CLIPS
        lines.append(f"| {r['clip']}{' (silent)' if silent else ''} | {NAMES[r['method']]} | "
                     f"{_f(ph)} | {_f(pf)} | {_f(dp, sign=True)} | {_f(ah, 3)} | {_f(af, 3)} | "
                     f"{_f(da, 3, True)} | {_f(mh)} | {_f(mf)} | {_f(sp['t95_psnr'], 0)} | "
                     f"{_f(sp['t95_rise'], 0)} | {_f(sp['t95_r'], 0)} |")
        for group in (["all"] + ([] if silent else ["speech"])):
            agg.setdefault((group, r["method"]), []).append(
                (ph, pf, dp, ah, af, da, mh, mf, sp["t95_psnr"], sp["t95_rise"], sp["t95_r"]))
    lines += ["", "| clips | method | n | head PSNR fast | head PSNR cpu | Δ dB | aperture r "
              "fast | aperture r cpu | Δ r | adapt min fast | adapt min cpu | t95 PSNR rise "
              "(s) | t95 r (s) |", "|" + "---|" * 13]
    for group in ("speech", "all"):
        for m in METHODS:
            v = agg.get((group, m))
            if not v:
                continue
            c = [_mean([x[i] for x in v]) for i in range(11)]
            label = "four with speech" if group == "speech" else "all five"
            lines.append(f"| {label} | {NAMES[m]} | {len(v)} | {_f(c[0])} | {_f(c[1])} | "
                         f"{_f(c[2], sign=True)} | {_f(c[3], 3)} | {_f(c[4], 3)} | "
                         f"{_f(c[5], 3, True)} | {_f(c[6])} | {_f(c[7])} | {_f(c[9], 0)} | "
                         f"{_f(c[10], 0)} |")
    return "\n".join(lines) + "\n"


def plot(fast: list[dict], full: list[dict], path: Path,
         xlabel: str = "adaptation wall time (s), one thread on a shared 2-core machine") -> Path:
    """Two panels against adaptation wall seconds: held-out head PSNR and aperture r of
    the short run's curves (prior solid, scratch dashed, one colour per clip), with the
    full schedule's final values as markers at its adaptation time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = sorted({r["clip"] for r in fast})
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    key = {(r["clip"], r["method"]): r for r in full}
    for r in fast:
        if r["method"] not in METHODS or not r.get("curve"):
            continue
        col = cmap(clips.index(r["clip"]) % 10)
        prior = r["method"] == "instag"
        c = [p for p in r["curve"] if num(p.get("seconds")) is not None]
        t = [p["seconds"] for p in c]
        f = key.get((r["clip"], r["method"]), {})
        for ax, k in zip(axes, ("psnr_head", "aperture_r")):
            if k == "aperture_r" and r["clip"] in SILENT_CLIPS:
                continue
            ys = [num(p.get(k)) for p in c]
            ax.plot(t, [np.nan if y is None else y for y in ys], "-" if prior else "--",
                    color=col, lw=1.5 if prior else 1.0,
                    label=f"{r['clip']}, {NAMES[r['method']]}")
            end, mins = num(f.get(k)), num(f.get("adapt_minutes"))
            if end is not None and mins is not None:
                ax.plot([mins * 60], [end], "o" if prior else "s", color=col,
                        mfc=col if prior else "none")
    axes[0].set_ylabel("held-out head PSNR (dB), 25 test frames")
    axes[1].set_ylabel("held-out aperture r, same 25 frames (clips with speech)")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle("fast preset curves (prior solid, scratch dashed); markers: the cpu preset's "
                 "final values at its adaptation time (filled: prior)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.studies.prior_speed",
                                description=__doc__.split("\n")[0])
    p.add_argument("--fast", type=Path, required=True, help="benchmark folder of the short run")
    p.add_argument("--full", type=Path, required=True, help="results.csv of the full run")
    p.add_argument("--plot", type=Path, default=None, help="PNG to write")
    p.add_argument("--fast-wall", type=float, default=None, metavar="S",
                   help="put each short-run adaptation at S seconds (one measured alone, "
                        "e.g. by python -m bench.adapt), its curve scaled to match")
    p.add_argument("--full-wall", type=float, default=None, metavar="S",
                   help="the same for the full run's adaptation times")
    a = p.parse_args(argv)
    fast, full = read_cells(a.fast), read_csv(a.full)
    label = "adaptation wall time (s), one thread on a shared 2-core machine"
    if a.fast_wall:
        fast = rescale(fast, a.fast_wall)
    if a.full_wall:
        full = rescale(full, a.full_wall)
    if a.fast_wall or a.full_wall:
        label = ("adaptation wall time (s), each run scaled to one adaptation measured "
                 "alone on 2 idle cores")
    print(tables(fast, full))
    if a.plot:
        print(f"plot: {plot(fast, full, a.plot, label)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
