"""Side-by-side videos of the benchmark: the recording next to every method's held-out
render, labelled, marked as synthetic, with the test audio (never shipped: they show the
clips)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.bench.cells import (BenchmarkConfig, cell_name, load_clip, read_render, render_path,
                              test_span)
from eval.bench.methods import LABELS, MARKS, RENDERED


def _label(frame: np.ndarray, text: str) -> np.ndarray:
    """The frame with ``text`` in a black box at its top-left corner."""
    import cv2

    out = np.ascontiguousarray(frame)
    w = out.shape[1]
    scale = max(0.35, w / 700)
    th = max(1, round(scale * 1.5))
    (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    cv2.rectangle(out, (0, 0), (min(w, tw + 6), tht + base + 6), (0, 0, 0), -1)
    cv2.putText(out, text, (3, tht + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th,
                cv2.LINE_AA)
    return out


def side_by_side(out: Path, clip_dir: Path, stem: str, seconds: float, methods: list[str],
                 train_seconds: list[float], cfg: BenchmarkConfig) -> Path | None:
    """``videos/{stem}_{s}s_side_by_side.mp4``: ground truth | each rendered method, labelled,
    marked, with the test audio. Skipped when up to date; None when nothing was rendered."""
    from core.data.media import write_video
    from core.synthesize import AI_STATEMENT, draw_mark
    from eval.bench import baselines as B
    from eval.bench.protocol import ground_truth, heldout_frames

    renders = [(m, render_path(out, cell_name(stem, m, seconds))) for m in methods
               if m in RENDERED]
    renders = [(m, p) for m, p in renders if p.is_file()]
    if not renders:
        return None
    path = out / "videos" / f"{stem}_{seconds:g}s_side_by_side.mp4"
    if path.is_file() and all(path.stat().st_mtime >= p.stat().st_mtime for _, p in renders):
        return path
    clip = load_clip(clip_dir)
    idx = test_span(clip, train_seconds, cfg.test_seconds)
    gt = ground_truth(heldout_frames(clip, idx, cfg.eval_res, int(round(seconds * 25)))).frames
    panels = [("gt", gt)] + [(m, read_render(p)) for m, p in renders]
    n = min(len(f) for _, f in panels)
    up = max(1, 256 // cfg.eval_res)

    def frames():
        for t in range(n):
            row = []
            for m, f in panels:
                img = f[t]
                if up > 1:
                    img = np.repeat(np.repeat(img, up, 0), up, 1)
                img = _label(img, LABELS.get(m, m))
                if m in MARKS:
                    img = draw_mark(img, MARKS[m])
                row.append(img)
            yield np.concatenate(row, 1)

    meta = {"title": f"{stem}: held-out frames, {seconds:g} s training",
            "comment": "Left: the recording. Others: " + AI_STATEMENT}
    return write_video(path, frames(), fps=25.0, audio=B.test_audio(clip, idx)[: n * 640],
                       sample_rate=16000, metadata=meta)
