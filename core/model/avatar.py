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
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.model import checkpoint
from core.atomic import atomic_folder
from core.errors import InputError
from core.model.head import Identity, UMF
from core.model.mouth_drive import MouthDrive

KIND = "avatar"


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

    @property
    def res(self) -> int:
        return int(self.meta["res"])

    @property
    def num_frames(self) -> int:
        return int(self.viewmats.shape[0])

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

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
                overwrite: bool = True, drive: MouthDrive | None = None) -> Path:
    """Write the avatar folder atomically (temporary sibling folder, then rename).
    ``drive``: the mouth drive of a model with a mouth-code input (stored as ``drive.*``)."""
    from core.data.media import write_video

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(out)
    with atomic_folder(out) as tmp:
        tensors = {**ident_tensors(ident), **checkpoint.module_tensors(umf, "umf."),
                   "viewmats": viewmats, "K": K, "expr": expr}
        extra: dict[str, Any] = {"code_dim": umf.code_dim}
        if drive is not None:
            tensors.update(drive.tensors())
            extra["drive"] = drive.meta()
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
    drive = MouthDrive.from_tensors(t, meta["drive"]) if "drive" in meta else None
    ident = ident_from_tensors(t)
    plates = np.stack(list(iter_frames(root / "plates.mp4", fps=25.0)))
    n = int(meta["num_frames"])
    if plates.shape[0] != n:
        raise InputError("corrupt", f"{root}: plates.mp4 has {plates.shape[0]} frames, the model "
                         f"{n}.", "Re-create the avatar.")
    umf.eval()
    ident.eval()
    return Avatar(umf=umf, ident=ident, viewmats=t["viewmats"], K=t["K"], expr=t["expr"],
                  plates=torch.from_numpy(plates), meta=meta, drive=drive)
