"""The avatar folder: everything needed to render one person, and nothing else.

``model.safetensors`` (one checkpoint, :mod:`core.model.checkpoint`, kind ``avatar``):
    ``face.*`` / ``mouth.*`` Gaussian sets; ``umf.*`` the fine-tuned Universal Motion
    Field; ``face_aligner.*`` / ``mouth_aligner.*`` (absent for a from-scratch avatar);
    ``viewmats`` (n, 4, 4), ``K`` (3, 3), ``expr`` (n, 6): poses and expression signals of
    the avatar's own n frames (looped when driving it with new audio; for a model with a
    mouth-code input, the expression input is blink only);
    ``drive.*``: the :class:`core.model.mouth_drive.MouthDrive` of such a model (audio-to-
    mouth predictor, its gain, the person's code statistics, clip offset).
    Metadata: res, fps, audio feature spec, ``code_dim`` (0 or 4), ``drive`` (predictor
    architecture, offset), source clip hash, training config and losses.
``plates.mp4``
    the n torso/background plates (the recorded frames with the head replaced by the
    background plate), 25 fps, H.264 4:4:4.
``source.mp4`` (avatars made from a clip that kept its recorded frames)
    the n recorded frames at the output size (:class:`core.data.full_frame.FullFrame`: the
    source's size, long side at most 1920 px, even sides), 25 fps, H.264 4:2:0 at crf
    :data:`SOURCE_CRF` with a key frame every :data:`SOURCE_KEYINT` frames (random access in
    bounded memory, :class:`core.data.media.FrameLoop`), no audio. With it the metadata
    holds ``full_frame`` (sizes, the crop box in output pixels, version) and the checkpoint
    ``full.landmarks`` (n, 478, 2) float32: the frames' tracked FaceMesh landmarks as
    fractions of the crop's side (the lower-face mask of full-frame output). Avatars
    without them render in crop mode.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.model import checkpoint
from core.atomic import atomic_folder
from core.data.full_frame import SOURCE_FILE, FullFrame
from core.errors import InputError
from core.model.head import Identity, UMF
from core.model.mouth_drive import MouthDrive

KIND = "avatar"
#: The recorded frames' x264 crf and key-frame interval in the avatar folder (the file:
#: :data:`core.data.full_frame.SOURCE_FILE`).
SOURCE_CRF, SOURCE_KEYINT = 20, 10
#: The square sides (px) an avatar can be drawn at (:meth:`Avatar.at_res`).
MIN_RENDER_RES, MAX_RENDER_RES = 16, 2048


@dataclass
class FullFrameFrames:
    """What :func:`save_avatar` keeps for full-frame output.

    full: the :class:`core.data.full_frame.FullFrame` of the frames.
    frames: the avatar's n recorded frames, (full.height, full.width, 3) uint8 each
        (streamed; a generator is fine).
    landmarks: (n, 478, 2) float32 tracked FaceMesh landmarks, fractions of the crop side.
    """

    full: FullFrame
    frames: Iterable[np.ndarray]
    landmarks: Tensor


@dataclass
class Avatar:
    """A loaded avatar. plates: (n, res, res, 3) uint8; drive: None for a model without a
    mouth-code input."""

    umf: UMF
    ident: Identity
    viewmats: Tensor
    K: Tensor
    expr: Tensor
    plates: Tensor
    meta: dict[str, Any]
    drive: MouthDrive | None = None
    full: FullFrame | None = None
    landmarks: Tensor | None = None
    root: Path | None = None
    full_note: str | None = None

    def source_frames(self):
        """The recorded frames as a :class:`core.data.media.FrameLoop` (random access,
        bounded memory); close it after use. Only with :attr:`full`."""
        from core.data.media import FrameLoop

        if self.full is None or self.root is None:
            raise ValueError("this avatar keeps no recorded frames")
        return FrameLoop(self.root / SOURCE_FILE, self.num_frames, SOURCE_KEYINT)

    def full_frame_frames(self) -> "FullFrameFrames | None":
        """What :func:`save_avatar` needs to keep this avatar's recorded frames (streamed
        from its folder), or None for an avatar without them."""
        from core.data.media import iter_frames

        if self.full is None or self.root is None or self.landmarks is None:
            return None
        return FullFrameFrames(full=self.full, frames=iter_frames(
            self.root / SOURCE_FILE, fps=25.0, max_frames=self.num_frames),
            landmarks=self.landmarks.cpu())

    @property
    def res(self) -> int:
        return int(self.meta["res"])

    @property
    def num_frames(self) -> int:
        return int(self.viewmats.shape[0])

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def at_res(self, res: int) -> "Avatar":
        """This avatar rendering ``res x res`` crops instead of its own ``meta['res']``: the
        same model (shared, not copied), the intrinsics scaled by ``res / self.res`` about
        the crop's centre as :class:`core.train.stages.TrainFrames` scales them, and the
        plates resized (bilinear; (n, res, res, 3) uint8). ``self`` when ``res`` is its own.
        Gaussians are continuous, so a head adapted at 256² can be drawn with more pixels
        (full-frame output of a larger source), at the cost of the plates' detail, which
        full-frame output replaces with the recording's own pixels outside the head."""
        from core.data.crop import crop_intrinsics, resize_crops

        res = int(res)
        if res == self.res:
            return self
        if not MIN_RENDER_RES <= res <= MAX_RENDER_RES:
            raise ValueError(f"render size must be {MIN_RENDER_RES}-{MAX_RENDER_RES} px, "
                             f"got {res}")
        return replace(self, K=crop_intrinsics(self.K, self.res, res),
                       plates=resize_crops(self.plates, res), meta={**self.meta, "res": res})

    def to(self, device: torch.device | str) -> "Avatar":
        """This avatar with its model, poses, expression inputs and plates on ``device`` (in
        place for the modules; returns self). The mouth drive stays on the CPU: it runs once
        per utterance, before the frame loop, and its codes move to the device once."""
        self.umf.to(device)
        self.ident.to(device)
        self.viewmats, self.K = self.viewmats.to(device), self.K.to(device)
        self.expr, self.plates = self.expr.to(device), self.plates.to(device)
        return self


def ident_tensors(ident: Identity) -> dict[str, Tensor]:
    """Flat tensors of an identity (Gaussians any N, fields/aligners by state dict)."""
    out = {**ident.face.to_tensors("face."), **ident.mouth.to_tensors("mouth.")}
    for name in ("face_aligner", "mouth_aligner", "face_personal", "mouth_personal"):
        mod = getattr(ident, name)
        if mod is not None:
            out.update(checkpoint.module_tensors(mod, name + "."))
    return out


def ident_from_tensors(t: dict[str, Tensor]) -> Identity:
    """Inverse of :func:`ident_tensors`."""
    deg = int(t["face.max_sh_degree"])
    ident = Identity(sh_degree=deg, personalised=any(k.startswith("face_personal.") for k in t),
                     aligners=any(k.startswith("face_aligner.") for k in t))
    ident.face.load_tensors(t, "face.")
    ident.mouth.load_tensors(t, "mouth.")
    for name in ("face_aligner", "mouth_aligner", "face_personal", "mouth_personal"):
        mod = getattr(ident, name)
        if mod is not None:
            mod.load_state_dict(checkpoint.prefixed(t, name + "."))
    return ident


def save_avatar(out: str | os.PathLike, umf: UMF, ident: Identity, viewmats: Tensor, K: Tensor,
                expr: Tensor, plates: np.ndarray, meta: dict[str, Any],
                overwrite: bool = True, drive: MouthDrive | None = None,
                full: FullFrameFrames | None = None) -> Path:
    """Write the avatar folder atomically (temporary sibling folder, then rename).
    ``drive``: the mouth drive of a model with a mouth-code input (stored as ``drive.*``).
    ``full``: the recorded frames for full-frame output (``source.mp4``, ``full_frame``,
    ``full.landmarks``); without it the avatar renders in crop mode only."""
    from core.data.media import write_video

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(out)
    meta = {k: v for k, v in meta.items() if k != "full_frame"}  # set from ``full`` only
    with atomic_folder(out) as tmp:
        tensors = {**ident_tensors(ident), **checkpoint.module_tensors(umf, "umf."),
                   "viewmats": viewmats, "K": K, "expr": expr}
        extra: dict[str, Any] = {"code_dim": umf.code_dim}
        if umf.mouth.field.max_offset is not None:
            extra["mouth_max_offset"] = umf.mouth.field.max_offset
        if drive is not None:
            tensors.update(drive.tensors())
            extra["drive"] = drive.meta()
        if full is not None:
            n = int(viewmats.shape[0])
            if tuple(full.landmarks.shape) != (n, 478, 2):
                raise ValueError(f"full.landmarks must be ({n}, 478, 2), got "
                                 f"{tuple(full.landmarks.shape)}")
            tensors["full.landmarks"] = full.landmarks.float().contiguous()
            extra["full_frame"] = {**full.full.to_dict(), "file": SOURCE_FILE,
                                   "crf": SOURCE_CRF, "keyint": SOURCE_KEYINT}
            count = 0

            def counted() -> Iterable[np.ndarray]:
                nonlocal count
                for f in full.frames:
                    count += 1
                    yield f

            write_video(tmp / SOURCE_FILE, counted(), fps=25.0, crf=SOURCE_CRF,
                        preset="veryfast", keyint=SOURCE_KEYINT)
            if count != n:
                raise ValueError(f"full.frames gave {count} frames, the avatar has {n}")
        checkpoint.save(tmp / "model.safetensors", tensors,
                        {**meta, **extra, "kind": KIND, "num_frames": int(viewmats.shape[0]),
                         "audio_dim": umf.audio_dim})
        write_video(tmp / "plates.mp4", iter(plates), fps=25.0, crf=4, pix_fmt="yuv444p",
                    preset="veryfast")
    return out


def load_avatar(folder: str | os.PathLike) -> Avatar:
    """Load an avatar folder.

    Raises:
        InputError('corrupt' | 'wrong_weights'): not an avatar, damaged files.
    """
    from core.data.media import iter_frames

    root = Path(folder)
    if not (root / "model.safetensors").is_file() or not (root / "plates.mp4").is_file():
        raise InputError("corrupt", f"{root} is not an avatar folder (model.safetensors and "
                         "plates.mp4 expected).", "Create the avatar with `python -m core.adapt`.")
    t, meta = checkpoint.load(root / "model.safetensors", kind=KIND)
    umf = UMF(int(meta["audio_dim"]), int(meta.get("code_dim", 0)))
    umf.load_state_dict(checkpoint.prefixed(t, "umf."))
    umf.mouth.field.max_offset = meta.get("mouth_max_offset")  # None: made before the bound
    drive = MouthDrive.from_tensors(t, meta["drive"]) if "drive" in meta else None
    ident = ident_from_tensors(t)
    plates = np.stack(list(iter_frames(root / "plates.mp4", fps=25.0)))
    n = int(meta["num_frames"])
    if plates.shape[0] != n:
        raise InputError("corrupt", f"{root}: plates.mp4 has {plates.shape[0]} frames, the model "
                         f"{n}.", "Re-create the avatar.")
    umf.eval()
    ident.eval()
    full, landmarks, note = None, None, None
    if "full_frame" not in meta:
        note = ("this avatar was made without the recorded frames (before full-frame output, "
                "or from a clip preprocessed without them): it renders the crop only")
    elif not (root / SOURCE_FILE).is_file():
        note = f"{SOURCE_FILE} is missing from the avatar folder: it renders the crop only"
    else:
        try:
            full, landmarks = FullFrame.from_dict(meta["full_frame"]), t["full.landmarks"]
        except (ValueError, KeyError) as e:
            note = f"the avatar's full-frame entry cannot be read ({e}): it renders the crop only"
    return Avatar(umf=umf, ident=ident, viewmats=t["viewmats"], K=t["K"], expr=t["expr"],
                  plates=torch.from_numpy(plates), meta=meta, drive=drive, full=full,
                  landmarks=landmarks, root=root, full_note=note)
