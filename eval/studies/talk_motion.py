"""How much a Talk render's mouth moves, and whether it moves with the voice.

``python -m eval.studies.talk_motion AVATAR CLIP_DIR [AUDIO...] [--text TEXT ...] --out DIR [--videos DIR]``

For each audio file the avatar is driven (:func:`core.synthesize.synthesize`, no visible mark)
and FaceMesh measures the rendered lip aperture per frame (the benchmark's
:func:`eval.metrics.frames.lip_aperture`: inner-lip gap over the eye-corner distance). The same
measure on the avatar's own recording (``CLIP_DIR``: its processed clip) gives the person's
real range, and the same correlation of the recorded lips with the recording's own loudness
(:func:`own_motion`: what real lips reach on this measure). Reported per
audio: the rendered aperture's standard deviation over the recording's (``motion ratio``; 1 =
moves as much as the person does), and the correlation of the rendered aperture with the
audio's loudness per frame (:func:`core.data.phones.loudness_bands`, overall column), at
lag 0 and as the best over lags 0-4 frames (the aperture ``k`` frames after the loudness:
``r(gap[t + k], loud[t])``), beside the correlation that chance gives (:func:`chance_r`:
the same aperture against its own audio's loudness moved by a second or more, which no
longer belongs to it; on 10 s the 95th percentile of ``|r|`` is about 0.2). ``--text`` adds
typed text spoken by the default offline voice (:mod:`core.data.speech`), rendered like an
uploaded recording (the wav is kept beside the videos).

Writes ``DIR/talk_motion.md`` (table) and ``DIR/talk_aperture.png`` (aperture and loudness
against time, one panel per audio). The videos go to ``--videos DIR`` when given (e.g. for
the jaw-line crops of :mod:`eval.studies.jawline`), else to a temporary folder that is deleted.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def aperture(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,) lip aperture (:func:`eval.metrics.frames.lip_aperture`) of (T, H, W, 3) uint8 frames, and
    (T,) bool face found (aperture NaN where not)."""
    from eval.metrics.frames import detect, lip_aperture

    t = detect(frames)
    return np.where(t.valid, lip_aperture(t.points), np.nan), t.valid


def frame_loudness(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """(num_frames,) per-utterance normalised loudness in [0, 1] (mean of a frame's 2 steps)."""
    from core.data.phones import loudness_bands

    steps = -(-len(audio) // 320)
    loud = loudness_bands(audio, steps)[:, -1]
    idx = np.minimum(np.arange(num_frames)[:, None] * 2 + np.arange(2)[None], steps - 1)
    return loud[idx].mean(1)


def lagged_r(gap: np.ndarray, loud: np.ndarray, ok: np.ndarray,
             lags: range = range(5)) -> dict[int, float]:
    """Correlation of the aperture ``k`` frames after the loudness, ``r(gap[t+k], loud[t])``,
    over frames with a face, for each ``k`` in ``lags``."""
    out = {}
    n = len(gap)
    for k in lags:
        g, lo, m = gap[k:], loud[: n - k], ok[k:]
        out[k] = float(np.corrcoef(g[m], lo[m])[0, 1]) if m.sum() > 2 else float("nan")
    return out


def chance_r(gap: np.ndarray, loud: np.ndarray, ok: np.ndarray, min_shift: int = 25,
             quantile: float = 95.0) -> float:
    """The ``quantile``-th percentile of ``|r(gap, roll(loud, s))|`` over every circular shift
    ``s`` of at least ``min_shift`` frames (1 s) either way, over frames with a face: how large
    an ``r`` an aperture reaches against a loudness it has nothing to do with, with the same
    rhythm and length. An ``r`` inside it says nothing about lip sync. NaN when the
    audio is shorter than ``2 min_shift + 1`` frames."""
    n = len(gap)
    rs = []
    for s in range(min_shift, n - min_shift + 1):
        lo = np.roll(loud, s)
        if ok.sum() > 2 and np.std(gap[ok]) > 0 and np.std(lo[ok]) > 0:
            rs.append(abs(float(np.corrcoef(gap[ok], lo[ok])[0, 1])))
    return float(np.percentile(rs, quantile)) if rs else float("nan")


def own_motion(clip_dir: Path) -> dict:
    """The person's recorded lips (a processed clip's frames, FaceMesh as for the renders):
    aperture ``std`` and ``mean``, and their correlation with the recording's own loudness by
    lag (``r_lags``, ``best_lag``) with its chance level (``r_chance``), the recording's
    audio-video offset (``av_offset``, frames, audio late > 0; None where not measured)
    beside it."""
    from core.data.dataset import ProcessedClip

    clip = ProcessedClip.load(clip_dir)     # decodes frames.mp4 (at 25 fps) once
    own, ok = aperture(clip.frames.numpy())
    loud = frame_loudness(clip.arrays["audio"].numpy(), len(own))
    lags = lagged_r(own, loud, ok)
    return {"std": float(np.nanstd(own)), "mean": float(np.nanmean(own)), "r_lags": lags,
            "best_lag": max(lags, key=lambda k: lags[k]), "r_chance": chance_r(own, loud, ok),
            "av_offset": clip.av_offset}


def measure(avatar: Path, clip_dir: Path, audios: list[Path], videos: Path | None = None
            ) -> tuple[dict, list[dict]]:
    """The person's own lips (:func:`own_motion`) and one row per audio (see module doc); the
    Talk renders are kept in ``videos`` when given."""
    from core.data.media import iter_frames, read_audio
    from core.synthesize import synthesize

    ref = own_motion(clip_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if videos is None else videos
        folder.mkdir(parents=True, exist_ok=True)
        for a in audios:
            out = folder / f"{a.stem}.mp4"
            synthesize(avatar, a, out, mark=False, frame="crop")  # the crop, as its own frames
            gap, ok = aperture(np.stack(list(iter_frames(out, fps=25.0))))
            loud = frame_loudness(read_audio(a), len(gap))
            lags = lagged_r(gap, loud, ok)
            best = max(lags, key=lambda k: lags[k])
            rows.append({"audio": a.name, "frames": int(len(gap)), "std": float(np.nanstd(gap)),
                         "ratio": float(np.nanstd(gap)) / max(ref["std"], 1e-9),
                         "r_loudness": lags[0], "r_lags": lags, "best_lag": best,
                         "r_chance": chance_r(gap, loud, ok),
                         "gap": gap, "loud": loud})
    return ref, rows


def write(out: Path, ref: dict, rows: list[dict], avatar: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.atomic import write_bytes, write_text

    offset = "not measured" if ref["av_offset"] is None else f"{ref['av_offset']:+d} frames"
    lines = [f"Avatar `{avatar.name}`; the person's own recording: aperture std {ref['std']:.4f} "
             f"(mean {ref['mean']:.3f}, inner-lip gap / eye-corner distance); its lips against "
             f"its own loudness: r {ref['r_lags'][0]:.2f} at lag 0, best "
             f"{ref['r_lags'][ref['best_lag']]:.2f} (lag {ref['best_lag']}), chance "
             f"{ref['r_chance']:.2f} (the recording's audio-video offset: "
             f"{offset}).", "",
             "| audio | frames | rendered aperture std | motion ratio (rendered / own) | "
             "r with loudness | best r, lags 0-4 (lag) | chance (95 % of \\|r\\|) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['audio']} | {r['frames']} | {r['std']:.4f} | {r['ratio']:.2f} | "
                     f"{r['r_loudness']:.2f} | {r['r_lags'][r['best_lag']]:.2f} "
                     f"({r['best_lag']}) | {r['r_chance']:.2f} |")
    write_text(out / "talk_motion.md", "\n".join(lines) + "\n")
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.2 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        t = np.arange(r["frames"]) / 25.0
        ax.plot(t, r["gap"], color="tab:red", lw=1.2, label="rendered aperture")
        ax.set_ylabel("aperture")
        ax2 = ax.twinx()
        ax2.fill_between(t, r["loud"], color="tab:blue", alpha=0.2, label="loudness")
        ax2.set_ylim(0, 1.05)
        ax.set_title(f"{r['audio']}: motion ratio {r['ratio']:.2f}, r(loudness) {r['r_loudness']:.2f}",
                     fontsize=9)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    write_bytes(out / "talk_aperture.png", buf.getvalue())


def _speak_to(folder: Path, i: int, text: str) -> Path:
    """The default voice speaking ``text``, as ``folder/tts_<i>.wav``."""
    from core.data.speech import speak

    folder.mkdir(parents=True, exist_ok=True)
    return speak(text).write_wav(folder / f"tts_{i}.wav")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.studies.talk_motion",
                                description=__doc__.split("\n")[0])
    p.add_argument("avatar", type=Path)
    p.add_argument("clip", type=Path, help="the avatar's processed clip (its own recording)")
    p.add_argument("audio", type=Path, nargs="*")
    p.add_argument("--text", action="append", default=[],
                   help="typed text spoken by the default offline voice (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--videos", type=Path, default=None, help="keep the Talk renders here")
    a = p.parse_args(argv)
    if not a.audio and not a.text:
        p.error("give AUDIO files or --text")
    with tempfile.TemporaryDirectory() as tmp:
        spoken = [_speak_to(Path(tmp) if a.videos is None else a.videos, i, t)
                  for i, t in enumerate(a.text)]
        ref, rows = measure(a.avatar, a.clip, [*a.audio, *spoken], a.videos)
    a.out.mkdir(parents=True, exist_ok=True)
    write(a.out, ref, rows, a.avatar)
    own = " ".join(f"{k}:{v:.2f}" for k, v in ref["r_lags"].items())
    print(f"the recording's own lips: r(loudness) by lag {own}, chance {ref['r_chance']:.2f}")
    for r in rows:
        lags = " ".join(f"{k}:{v:.2f}" for k, v in r["r_lags"].items())
        print(f"{r['audio']}: {r['frames'] / 25:.1f} s, motion ratio {r['ratio']:.2f}, "
              f"r(loudness) {r['r_loudness']:.2f}, by lag {lags}, chance {r['r_chance']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
