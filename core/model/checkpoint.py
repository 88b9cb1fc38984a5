"""The one checkpoint format: a single ``.safetensors`` file whose header metadata holds JSON.

``save(path, tensors, meta)`` writes flat tensors plus ``meta`` (any JSON-able dict) under
the header key ``"instag"``, with a sha256 over every tensor's bytes (names sorted) under
``"sha256"``; the file is written to a temporary name beside ``path`` and renamed, so a crash
never leaves a half-written checkpoint. ``load(path)`` verifies the header, the checksum and
the declared ``kind``, and raises :class:`core.errors.InputError` ('corrupt' / 'wrong_weights')
with a clear message otherwise.

Optimizer state (for ``--resume``) is flattened into the same tensor dict by
:func:`optimizer_tensors` / restored by :func:`load_optimizer_tensors`; RNG state by
:func:`rng_tensors` / :func:`load_rng_tensors`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from core.atomic import atomic_file
from core.errors import InputError

FORMAT_VERSION = 1


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` (must contain ``kind``) atomically to ``path``."""
    if "kind" not in meta:
        raise ValueError("checkpoint meta needs a 'kind'")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"instag": json.dumps({**meta, "format_version": FORMAT_VERSION}),
              "sha256": _digest(flat)}
    with atomic_file(out) as tmp:
        save_file(flat, str(tmp), metadata=header)
    return out


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint without loading its tensors."""
    p = Path(path)
    if not p.is_file():
        raise InputError("corrupt", f"Checkpoint not found: {p}.", "Check the path.")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
        return json.loads(header["instag"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as e:
        raise InputError("corrupt", f"{p.name} is not a valid checkpoint "
                         f"({e.__class__.__name__}).",
                         "Re-download or re-create it (pre-training / adaptation writes it).") from e


def load(path: str | os.PathLike, kind: str | None = None,
         verify: bool = True) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load ``(tensors, meta)``; check the checksum and, if given, that ``meta['kind'] == kind``.

    Raises:
        InputError('corrupt'): unreadable, truncated or modified file.
        InputError('wrong_weights'): a checkpoint of another kind.
    """
    p = Path(path)
    meta = read_meta(p)
    if kind is not None and meta.get("kind") != kind:
        raise InputError("wrong_weights", f"{p.name} holds a '{meta.get('kind')}' checkpoint, "
                         f"not a '{kind}'.", f"Pass a {kind} file.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError("wrong_weights", f"{p.name} has checkpoint format "
                         f"v{meta.get('format_version')}; this code reads v{FORMAT_VERSION}.",
                         "Re-create it with this version of the code.")
    try:
        tensors = load_file(str(p))
        with safe_open(str(p), framework="pt") as f:
            digest = (f.metadata() or {}).get("sha256")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError("corrupt", f"{p.name} is damaged ({e.__class__.__name__}).",
                         "Re-download or re-create it.") from e
    if verify and digest != _digest(tensors):
        raise InputError("corrupt", f"{p.name} is damaged (checksum mismatch).",
                         "Re-download or re-create it.")
    return tensors, meta


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix`` with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, Tensor]:
    """``module.state_dict()`` under ``prefix``."""
    return {prefix + k: v for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- optimizer / rng
def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, Tensor]:
    """Flatten an Adam/AdamW optimizer's per-parameter state: ``{prefix}{group}.{j}.{key}``.
    Learning rates live in the param groups and are recomputed by the schedules."""
    out: dict[str, Tensor] = {}
    for g, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            for key, val in opt.state.get(p, {}).items():
                t = val if torch.is_tensor(val) else torch.tensor(val)
                out[f"{prefix}{g}.{j}.{key}"] = t
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor],
                           prefix: str) -> None:
    """Inverse of :func:`optimizer_tensors` for an optimizer over same-shaped parameters."""
    for g, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            state = {}
            for key in ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                name = f"{prefix}{g}.{j}.{key}"
                if name in tensors:
                    state[key] = tensors[name].clone().to(p.device)
            if state:
                if state["exp_avg"].shape != p.shape:
                    raise InputError("corrupt", f"optimizer state {prefix}{g}.{j} does not match "
                                     "its parameter.", "Start the run again without --resume.")
                opt.state[p] = state


def rng_tensors(gen: torch.Generator, prefix: str = "rng.") -> dict[str, Tensor]:
    """The generator's state (and torch's global CPU RNG) as tensors."""
    return {prefix + "gen": gen.get_state(), prefix + "torch": torch.get_rng_state()}


def load_rng_tensors(gen: torch.Generator, tensors: dict[str, Tensor], prefix: str = "rng.") -> None:
    gen.set_state(tensors[prefix + "gen"])
    torch.set_rng_state(tensors[prefix + "torch"])
