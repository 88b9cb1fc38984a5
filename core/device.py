"""Where tensors live: one device choice for every job, and an audit of host/device traffic.

Every job (``core.pretrain``, ``core.adapt``, ``core.synthesize``, ``eval.benchmark``, the app)
takes ``--device auto|cpu|cuda[:N]`` and resolves it once with :func:`resolve_device`.
Preprocessing (FaceMesh, pocketsphinx, log-mel) stays on the CPU; its outputs move to the
device once, before the training or rendering loop. Files on disk are device-free: checkpoints
and avatars are written from CPU copies and load on any device.

:class:`TransferAudit` is the test hook behind "no per-step host/device copies": a torch
function mode that records, with their call sites, every call that copies or synchronises
between host and device (``.item()``, ``float(t)``, ``.tolist()``, ``.numpy()``, ``.cpu()``,
a ``.to()`` that changes device) and every tensor factory called without ``device=`` (on a
GPU such a tensor is made on the host and must be copied). Code that decides on the host by
design (frame sampling from the CPU generator) is marked with :func:`host_side`; the
rasterizer's own internals are reported apart (gsplat sizes its buffers by the intersection
count, which it reads back once per render).
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Callable, TypeVar

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from core.errors import InputError

__all__ = ["DEVICE_HELP", "resolve_device", "device_names", "host_side", "host_values",
           "TransferAudit",
           "TransferEvent", "gpu_memory_error"]

#: help text of every CLI's ``--device`` option
DEVICE_HELP = ("where tensors live: auto (CUDA when available, else CPU), cpu, cuda or cuda:N "
               "(default auto)")


def device_names() -> list[str]:
    """The devices this process can use, e.g. ``['cpu', 'cuda:0 (NVIDIA H100)']``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i} ({torch.cuda.get_device_name(i)})"
                  for i in range(torch.cuda.device_count())]
    return names


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``'auto'`` / None: ``cuda`` (the current CUDA device) when CUDA is available, else
    ``cpu``; ``'cpu'``; ``'cuda'`` or ``'cuda:N'``, checked against the devices present.

    Raises:
        InputError('missing_dependency'): CUDA asked for where there is none, or an index
            past the last GPU (the message names the devices present).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or s.startswith("cuda:"):
        idx_text = s[5:] if s.startswith("cuda:") else ""
        if idx_text and not idx_text.isdigit():
            raise InputError("missing_dependency", f"Unknown device {spec!r}.",
                             "Use auto, cpu, cuda or cuda:N (N a GPU index).")
        if not torch.cuda.is_available():
            raise InputError("missing_dependency",
                             f"--device {spec} asks for CUDA, but this machine has none "
                             f"(devices present: {', '.join(device_names())}).",
                             "Use --device cpu (or auto, which picks CUDA when there is one).")
        idx = int(idx_text) if idx_text else torch.cuda.current_device()
        if idx >= torch.cuda.device_count():
            raise InputError("missing_dependency",
                             f"--device {spec}: there is no GPU {idx} "
                             f"(devices present: {', '.join(device_names())}).",
                             "Pick one of the devices listed, or use auto.")
        return torch.device("cuda", idx)
    raise InputError("missing_dependency", f"Unknown device {spec!r}.",
                     "Use auto, cpu, cuda or cuda:N (N a GPU index).")


def gpu_memory_error(what: str, settings: str, fix: str) -> InputError:
    """The error a job raises when the GPU runs out of memory: what was being done, with
    which settings (preset, resolution), and what to do."""
    free = ""
    if torch.cuda.is_available():
        try:
            f, t = torch.cuda.mem_get_info()
            free = f" ({f / 2**30:.1f} of {t / 2**30:.1f} GiB free now)"
        except RuntimeError:
            pass
    return InputError("too_large", f"Out of GPU memory while {what} with {settings}{free}.", fix)


# ---------------------------------------------------------------------------------------------
# the transfer audit
# ---------------------------------------------------------------------------------------------
F = TypeVar("F", bound=Callable)

#: code objects of functions that work on the host by design (see :func:`host_side`)
_HOST_SIDE: set[CodeType] = set()


def host_side(fn: F) -> F:
    """Mark a function whose tensor work is on the host by design (random draws from the
    CPU generator that pick a frame, a hook size, a coin flip). :class:`TransferAudit`
    does not count what happens inside it. Returns ``fn`` unchanged."""
    _HOST_SIDE.add(fn.__code__)
    return fn


@host_side
def host_values(t: Tensor) -> int | float | list:
    """The values of a tensor kept on the host by design (frame indices, crop boxes) as
    Python numbers: a number for a 0-d tensor, else a (nested) list. Raises ValueError for a
    tensor on a GPU, where reading it would wait for the device."""
    if t.device.type != "cpu":
        raise ValueError(f"host_values reads host tensors only, got one on {t.device}")
    return t.tolist()


_SYNC = {Tensor.item: "item", Tensor.tolist: "tolist", Tensor.numpy: "numpy",
         Tensor.__float__: "float", Tensor.__int__: "int", Tensor.__bool__: "bool",
         Tensor.__index__: "index", Tensor.cpu: "cpu"}
_MOVE = {Tensor.to: "to", Tensor.cuda: "cuda"}
_FACTORIES = {torch.tensor: "tensor", torch.as_tensor: "as_tensor", torch.zeros: "zeros",
              torch.ones: "ones", torch.full: "full", torch.empty: "empty",
              torch.arange: "arange", torch.linspace: "linspace", torch.eye: "eye",
              torch.rand: "rand", torch.randn: "randn", torch.randint: "randint",
              torch.randperm: "randperm"}

_ROOT = Path(__file__).resolve().parents[1]
_RASTER = _ROOT / "core" / "raster"
_SELF = Path(__file__).resolve()


@dataclass(frozen=True)
class TransferEvent:
    """One recorded call: ``kind`` (``sync``, ``move`` or ``factory``), the torch call's
    name, and the project source line that led to it (``core/train/stages.py:123``).
    ``in_rasterizer``: made by ``core/raster``; ``in_library``: made inside a library
    (e.g. the optimizer reading its CPU step counters), not by the project's own line."""

    kind: str
    call: str
    site: str
    in_rasterizer: bool
    in_library: bool = False


@dataclass
class TransferAudit(TorchFunctionMode):
    """Records host/device copies and synchronisations made inside a ``with`` block.

    ``device``: the training device; a ``.to()`` / ``.cuda()`` counts when it changes a
    tensor's device, a sync call when its tensor lives on ``device`` (on a CPU run every
    sync counts: the audit then shows what *would* cross on a GPU). Factories count when
    called without ``device=`` (an explicit CPU ``generator=`` makes them host-side draws,
    not counted). Calls from inside :func:`host_side` functions are not recorded; calls
    from ``core/raster`` are recorded with ``in_rasterizer`` set.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    events: list[TransferEvent] = field(default_factory=list)
    #: record only while True (switch it between steps to audit a window of a loop)
    recording: bool = True

    def __post_init__(self) -> None:
        super().__init__()
        self.device = torch.device(self.device)

    # -- recording ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = None
        if not self.recording:
            pass
        elif func in _SYNC:
            t = args[0] if args else None
            if isinstance(t, Tensor) and _same_device(t.device, self.device):
                kind = "sync"
        elif func in _MOVE:
            t = args[0] if args else None
            if isinstance(t, Tensor):
                target = _target_device(func, args[1:], kwargs)
                if target is not None and not _same_device(t.device, target):
                    kind = "move"
        elif func in _FACTORIES:
            gen = kwargs.get("generator")
            host_draw = gen is not None and gen.device.type == "cpu"
            if "device" not in kwargs and not host_draw:
                kind = "factory"
        if kind is not None:
            self._record(kind, _FACTORIES.get(func) or _SYNC.get(func) or _MOVE.get(func, "?"))
        return func(*args, **kwargs)

    def _record(self, kind: str, call: str) -> None:
        f = sys._getframe(2)
        site, raster, library, caller = None, False, False, None
        while f is not None:
            if f.f_code in _HOST_SIDE:
                return
            p = Path(f.f_code.co_filename)
            if caller is None and not _is_dispatch_glue(p):
                caller = p
            if site is None and p != _SELF and _ROOT in p.parents and "site-packages" not in p.parts:
                site = f"{p.relative_to(_ROOT).as_posix()}:{f.f_lineno}"
                raster = _RASTER in p.parents
                library = caller is not None and caller != p
            f = f.f_back
        self.events.append(TransferEvent(kind, call, site or "<outside the project>", raster,
                                         library))

    # -- reading -----------------------------------------------------------------------------
    def outside_rasterizer(self) -> list[TransferEvent]:
        """The events the project's own training / driving lines made (the rasterizer's and
        libraries' internals excluded)."""
        return [e for e in self.events if not e.in_rasterizer and not e.in_library]

    def summary(self) -> dict[str, int]:
        """``{'kind call @ site': count}`` of the events outside the rasterizer."""
        return dict(Counter(f"{e.kind} {e.call} @ {e.site}" for e in self.outside_rasterizer()))

    def clear(self) -> None:
        self.events.clear()


def _is_dispatch_glue(p: Path) -> bool:
    """torch's Python wrappers between a call and its ``__torch_function__`` handler."""
    return p.name in ("_tensor.py", "overrides.py", "_device.py") and "torch" in p.parts


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def _target_device(func, args: tuple, kwargs: dict) -> torch.device | None:
    """The device a ``Tensor.to`` / ``Tensor.cuda`` call moves to (None: not a move)."""
    if func is Tensor.cuda:
        d = args[0] if args else kwargs.get("device")
        return torch.device("cuda", d) if isinstance(d, int) else torch.device(d or "cuda")
    d = kwargs.get("device")
    if d is None and args:
        a = args[0]
        if isinstance(a, Tensor):
            d = a.device
        elif isinstance(a, (str, torch.device)):
            d = a
    return torch.device(d) if d is not None else None
