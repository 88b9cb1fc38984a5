"""Loading a processed-clip folder (written by :mod:`core.data.preprocess`) for training.

``ProcessedClip.load(folder)`` checks the manifest (format, version, file hashes) and
returns the clip's tensors; frames and labels stay ``uint8`` in memory (a 5-minute clip at
256² holds about 2 GB); :class:`core.train.stages.TrainFrames` converts the frames it trains on.
Time splits follow METHOD.md §8: train on the first N seconds, test on held-out later
seconds of the same clip.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from core.errors import InputError
from core.data.full_frame import SOURCE_FILE
from core.data.preprocess import FPS, READABLE_VERSIONS, sha256_file

_FILES = ("frames.mp4", "arrays.safetensors", "labels.npz")


@dataclass
class ProcessedClip:
    """A processed clip in memory.

    Attributes:
        root: the folder; manifest: its parsed ``manifest.json``.
        frames: (T, res, res, 3) uint8 RGB at 25 fps.
        labels: (T, res, res) uint8, :class:`core.data.masks.Label` values.
        bg: (res, res, 3) uint8 static background plate.
        arrays: every tensor of ``arrays.safetensors`` (see :mod:`core.data.preprocess`),
            cut to the loaded frames.
    """

    root: Path
    manifest: dict
    frames: torch.Tensor
    labels: torch.Tensor
    bg: torch.Tensor
    arrays: dict[str, torch.Tensor]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, folder: str | Path, max_frames: int | None = None,
             verify: bool = True) -> ProcessedClip:
        """Load a processed-clip folder.

        Args:
            folder: written by ``python -m core.preprocess``.
            max_frames: load only the first N frames (e.g. the training seconds).
            verify: check every file's sha256 against the manifest.

        Raises:
            InputError('corrupt'): missing or damaged files, or an unknown format version.
        """
        from core.data.media import iter_frames

        root = Path(folder)
        mpath = root / "manifest.json"
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError("corrupt", f"{root} is not a processed clip ({e.__class__.__name__}: "
                             f"missing or unreadable manifest.json).",
                             "Run `python -m core.preprocess CLIP --out DIR` again.") from e
        if manifest.get("format") != "instag-processed-clip" or \
                manifest.get("format_version") not in READABLE_VERSIONS:
            raise InputError("corrupt", f"{root}: unknown processed-clip format "
                             f"{manifest.get('format')!r} v{manifest.get('format_version')}.",
                             "Preprocess the clip again with this version of the code.")
        for name in (*_FILES, *((SOURCE_FILE,) if "full_frame" in manifest else ())):
            p = root / name
            if not p.is_file():
                raise InputError("corrupt", f"{root}: {name} is missing.",
                                 "Preprocess the clip again.")
            if verify and sha256_file(p) != manifest["files"][name]:
                raise InputError("corrupt", f"{root}: {name} is damaged (checksum mismatch).",
                                 "Preprocess the clip again.")
        T = int(manifest["num_frames"]) if max_frames is None else min(int(max_frames), int(manifest["num_frames"]))
        res = int(manifest["res"])
        frames = np.empty((T, res, res, 3), np.uint8)
        n = 0
        for n, img in enumerate(iter_frames(root / "frames.mp4", fps=FPS, max_frames=T), 1):
            frames[n - 1] = img
        if n != T:
            raise InputError("corrupt", f"{root}: frames.mp4 holds {n} frames, expected {T}.",
                             "Preprocess the clip again.")
        with np.load(root / "labels.npz") as z:
            labels = z["labels"][:T]
        arrays = load_file(str(root / "arrays.safetensors"))
        spf = int(manifest["sample_rate"] / manifest["fps"])
        per_frame = ("points2d", "points3d", "valid", "viewmats", "expr", "au", "signals", "lips_box")
        for k in per_frame:
            arrays[k] = arrays[k][:T]
        arrays["audio"] = arrays["audio"][: T * spf]
        arrays["audio_steps"] = arrays["audio_steps"][: 2 * T]
        bg = arrays.pop("bg")
        return cls(root=root, manifest=manifest, frames=torch.from_numpy(frames),
                   labels=torch.from_numpy(np.ascontiguousarray(labels)), bg=bg, arrays=arrays)

    # ------------------------------------------------------------------ properties
    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def full_frame(self):
        """The :class:`core.data.full_frame.FullFrame` of the recorded frames kept in
        ``source.mp4``; None for folders made without them (format version 1, or
        ``PreprocessConfig.full_frame`` off)."""
        from core.data.full_frame import FullFrame

        entry = self.manifest.get("full_frame")
        return None if entry is None else FullFrame.from_dict(entry)

    @property
    def source_path(self) -> Path | None:
        """``source.mp4``, the recorded frames at :attr:`full_frame`'s size (None without)."""
        return None if "full_frame" not in self.manifest else self.root / SOURCE_FILE

    @property
    def av_offset(self) -> int | None:
        """The recording's audio-video offset measured in preprocessing (frames, audio late
        > 0; manifest ``av_offset``, :mod:`core.preprocess`); None for folders made without
        it."""
        entry = self.manifest.get("av_offset")
        return None if entry is None else int(entry["frames"])

    @property
    def res(self) -> int:
        return int(self.frames.shape[1])

    @property
    def viewmats(self) -> torch.Tensor:
        """(T, 4, 4) float32 world-to-camera matrices."""
        return self.arrays["viewmats"]

    @property
    def K(self) -> torch.Tensor:
        """(3, 3) float32 intrinsics at ``res``."""
        return self.arrays["K"]

    @property
    def expr(self) -> torch.Tensor:
        """(T, 6) float32 expression inputs."""
        return self.arrays["expr"]

    def audio_features(self, span: tuple[int, int] | None = None) -> torch.Tensor:
        """Per-frame audio windows (see ``core.data.audio.frame_windows``), float32.

        ``span=None``: the stored features of the whole clip, (T, 16, D). ``span=(a, b)``:
        the audio of frames ``[a, b)`` featurised on its own, as one utterance (its
        normalisation and window edges see no audio outside the span), (b - a, 16, D).
        """
        from core.data.audio import AudioFeatureSpec, frame_windows
        from core.data.features import feature_config, feature_steps

        window = int(self.manifest["audio"]["window"])
        if span is None:
            return frame_windows(self.arrays["audio_steps"], self.num_frames, window)
        a, b = int(span[0]), int(span[1])
        if not 0 <= a < b <= self.num_frames:
            raise ValueError(f"audio span {span} outside the clip's {self.num_frames} frames")
        spf = int(self.manifest["sample_rate"] / self.manifest["fps"])
        cfg = feature_config(AudioFeatureSpec.from_dict(self.manifest["audio"]))
        steps = feature_steps(self.arrays["audio"][a * spf: b * spf].numpy(), cfg)
        return frame_windows(steps, b - a, window)

    def expression(self, fit_frames: int | None = None):
        """``core.data.expression.Expression`` of every loaded frame, normalised with statistics
        of the first ``fit_frames`` frames only (None = all loaded frames), recomputed from
        ``points3d`` (the stored ``expr`` / ``au`` / ``signals`` use the whole clip)."""
        from core.data.expression import expression_signals

        return expression_signals(self.arrays["points3d"].double().numpy(), fit_frames=fit_frames)

    # ------------------------------------------------------------------ splits
    def split(self, train_seconds: float, test_seconds: float | None = None,
              gap_seconds: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame indices ``(train, test)`` by time (METHOD.md §8).

        ``train`` = the first ``train_seconds``; ``test`` = the last ``test_seconds`` (all
        frames after the training part and the gap when None), never overlapping train.

        Raises:
            ValueError: the clip is too short for the requested split.
        """
        T = self.num_frames
        n_train = int(round(train_seconds * FPS))
        first_test = n_train + int(round(gap_seconds * FPS))
        if n_train < 1 or n_train > T:
            raise ValueError(f"train_seconds={train_seconds} needs {n_train} frames; the clip has {T}")
        start = first_test if test_seconds is None else max(first_test, T - int(round(test_seconds * FPS)))
        return torch.arange(n_train), torch.arange(min(start, T), T)
