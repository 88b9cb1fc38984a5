"""The jaw-line crop grid (eval/studies/jawline.py) on real frames: grid size, nearest-neighbour
zoom, frames without a face skipped and named."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.data.media import read_clip, write_video
from eval.studies.jawline import (
    BACKGROUND,
    JawGridConfig,
    fit_scale,
    jawline_grid,
    main,
    pick_indices,
    scale_label,
    zoom,
)


def test_pick_indices_and_zoom():
    assert pick_indices(10, 4) == [0, 3, 6, 9]
    assert pick_indices(125, 3) == [0, 62, 124]
    assert pick_indices(2, 5) == [0, 1] and pick_indices(0, 3) == []
    crop = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert fit_scale(2, 3, (10, 9)) == (3, 1)  # min(10 // 3, 9 // 2) = 3
    big = zoom(crop, (3, 1))
    assert scale_label((3, 1)) == "x3" and big.shape == (6, 9, 3)
    assert np.array_equal(big[::3, ::3], crop) and np.array_equal(big[2, 8], crop[0, 2])
    assert fit_scale(100, 50, (40, 40)) == (1, 3)  # ceil(100 / 40) = 3
    small = zoom(np.zeros((100, 50, 3), np.uint8), (1, 3))
    assert scale_label((1, 3)) == "1/3" and small.shape == (34, 17, 3)


def _blocks(tile: np.ndarray, k: int) -> bool:
    """True when the image is made of constant k x k blocks (nearest-neighbour zoom)."""
    h, w = tile.shape[:2]
    b = tile[: h // k * k, : w // k * k].reshape(h // k, k, w // k, k, 3)
    return bool((b == b[:, :1, :, :1]).all())


def test_grid_of_real_frames(clips_dir: Path, tmp_path: Path):
    # 10 frames of may_5s at 256 px, the last five blanked (no face there)
    frames = read_clip(clips_dir / "may_5s.mp4", size=256, max_frames=10).frames.copy()
    frames[5:] = 128
    mixed = write_video(tmp_path / "mixed.mp4", iter(frames), crf=0, pix_fmt="yuv444p")
    cfg = JawGridConfig(frames=4, tile=(340, 220), title_px=24, caption_px=20, gap_px=4)
    out = tmp_path / "grid" / "jaw.png"
    rows = jawline_grid([clips_dir / "may_5s.mp4", mixed], out, cfg)
    img = cv2.imread(str(out))[..., ::-1]
    # width = gap + frames (tile_w + gap); height = gap + videos (title + tile_h + caption + gap)
    assert img.shape == (4 + 2 * (24 + 220 + 20 + 4), 4 + 4 * (340 + 4), 3)
    assert [p.name for p in out.parent.iterdir()] == ["jaw.png"]  # atomic: no leftovers
    may, mix = rows
    assert may.total_frames == 125 and may.shown == [0, 41, 83, 124] and not may.skipped
    assert mix.total_frames == 10 and mix.shown == [0, 3] and mix.skipped == [6, 9]
    # 256 px frames: the padded jaw box (about 160 x 100 px) is enlarged x2 into 340 x 220
    assert mix.scale == "x2"
    assert may.scale == "1/2"  # 512 px frames: the largest jaw crop needs a stride of 2
    row_y = 4 + (24 + 220 + 20 + 4) + 24  # second row's tiles
    for j in range(4):
        x = 4 + j * 344
        tile = img[row_y:row_y + 220, x:x + 340]
        filled = (tile != BACKGROUND).any(-1)
        if j >= 2:  # the skipped frames leave their tiles empty
            assert not filled.any()
            continue
        ys, xs = np.nonzero(filled)
        crop = tile[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert crop.shape[0] > 150 and crop.shape[1] > 250
        assert _blocks(crop, 2)
        # the crop holds the chin: the lower face, skin-coloured (red above blue) mid-crop
        mid = crop[crop.shape[0] // 3: 2 * crop.shape[0] // 3,
                   crop.shape[1] // 3: 2 * crop.shape[1] // 3].reshape(-1, 3).astype(int)
        assert (mid[:, 0] - mid[:, 2]).mean() > 20


def test_cli_and_bad_input(clips_dir: Path, tmp_path: Path, capsys):
    with pytest.raises(ValueError, match=r"\.png"):
        jawline_grid([clips_dir / "may_5s.mp4"], tmp_path / "jaw.jpg")
    assert not (tmp_path / "jaw.jpg").exists()
    out = tmp_path / "cli.png"
    assert main([str(clips_dir / "may_5s.mp4"), "--out", str(out), "--frames", "2"]) == 0
    assert "may_5s.mp4: 2 crops" in capsys.readouterr().out
    # defaults: 600 x 420 tiles, 24 px title, 20 px caption, 4 px gaps
    assert cv2.imread(str(out)).shape[:2] == (4 + 24 + 420 + 20 + 4, 4 + 2 * (600 + 4))


def test_background_line_is_counted_only_where_it_is_drawn() -> None:
    """Known answer: a skin disc over a neck on a cyan background; a one-pixel cyan arc just
    inside the disc's lower edge fails every checked pixel it covers, the clean frame none."""
    from scipy.ndimage import distance_transform_edt

    from eval.studies.jawline import background_line_pixels

    H = W = 96
    bg = np.zeros((H, W, 3))
    bg[:] = (0.0, 0.8, 0.85)
    skin, neck = np.array([0.85, 0.65, 0.55]), np.array([0.45, 0.3, 0.25])
    yy, xx = np.mgrid[:H, :W]
    head = (yy - 40) ** 2 + (xx - 48) ** 2 < 24 ** 2
    torso = ~head & (yy > 40) & (np.abs(xx - 48) < 14)
    img = bg.copy()
    img[torso], img[head] = neck, skin
    clean_bad, checked = background_line_pixels(img, head, torso, bg)
    assert clean_bad == 0 and checked > 20
    edge = head & (distance_transform_edt(head) <= 1.0) & (yy > 55)
    lined = img.copy()
    lined[edge] = bg[edge]
    bad, checked2 = background_line_pixels(lined, head, torso, bg)
    assert checked2 == checked and bad >= 0.8 * (edge & (distance_transform_edt(~torso) <= 3)).sum()
    # the same line in the recording too is not the renderer's fault
    assert background_line_pixels(lined, head, torso, bg, rec=lined)[1] < checked
