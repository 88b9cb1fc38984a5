"""LPIPS (AlexNet, v0.1) re-implemented in torch, so it runs without ``torchvision``.

One concept: *the learned perceptual distance* of Zhang et al. 2018 ("The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric"), the ``lpips`` package's default
``LPIPS(net='alex', version='0.1')``. The ``lpips`` package itself cannot be imported here
(it imports torchvision), so the network is rebuilt layer for layer:

    x in [-1, 1]  ->  (x - shift) / scale            shift (-.030, -.088, -.188),
                                                     scale (.458, .448, .450)
    AlexNet trunk (torchvision ``alexnet().features`` layout, same state-dict keys):
        relu1: conv 3->64 k11 s4 p2, ReLU                      (features.0)
        relu2: maxpool 3/2, conv 64->192 k5 p2, ReLU           (features.3)
        relu3: maxpool 3/2, conv 192->384 k3 p1, ReLU          (features.6)
        relu4: conv 384->256 k3 p1, ReLU                       (features.8)
        relu5: conv 256->256 k3 p1, ReLU                       (features.10)
    per layer l: unit-normalise features over channels (f / (||f||_2 + 1e-10)),
        d_l = spatial mean of  w_l . (f0_l - f1_l)^2          (w_l: 1x1 conv, no bias)
    LPIPS = sum_l d_l                                          (0 = identical)

Weights (both are needed; nothing is ever made up):
  * backbone: torchvision's ImageNet AlexNet ``alexnet-owt-7be5be79.pth`` (keys
    ``features.{0,3,6,8,10}.{weight,bias}``; ``classifier.*`` is ignored);
  * linear heads: the lpips wheel's ``lpips/weights/v0.1/alex.pth`` (keys
    ``lin{0..4}.model.1.weight``, shape (1, C, 1, 1)).
:func:`resolve_lpips_weights` looks for them (explicit paths, environment variables,
``weights/``, the torch hub cache, an installed lpips wheel found *without importing it*,
or a Hugging Face repo). :func:`try_load_lpips` returns ``(None, reason)`` when either
file is missing, and the metrics then report "unavailable", never a number.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import InputError

#: Channels of the five AlexNet ReLU outputs LPIPS compares.
ALEX_CHANNELS: tuple[int, ...] = (64, 192, 384, 256, 256)
#: torchvision's file name of the ImageNet AlexNet weights.
ALEX_BACKBONE_FILE = "alexnet-owt-7be5be79.pth"
#: Where the linear heads sit inside the lpips wheel.
LPIPS_LINEAR_SUBPATH = ("weights", "v0.1", "alex.pth")
ENV_BACKBONE = "INSTAG_LPIPS_BACKBONE"
ENV_LINEAR = "INSTAG_LPIPS_LINEAR"
_ROOT = Path(__file__).resolve().parents[2]


class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk. Call with two image batches, get (N,) distances.

    State-dict keys: ``features.*`` (torchvision AlexNet layout) and
    ``lin{0..4}.model.1.weight`` (lpips layout), so both original files load directly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),    # 0, 1
            nn.MaxPool2d(3, 2),                                                  # 2
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),             # 3, 4
            nn.MaxPool2d(3, 2),                                                  # 5
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),            # 6, 7
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),            # 8, 9
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),            # 10, 11
        )
        self._taps = (1, 4, 7, 9, 11)  # indices whose outputs are compared
        for i, c in enumerate(ALEX_CHANNELS):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
            self.add_module(f"lin{i}", lin)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval()

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out.append(x / (torch.sqrt((x * x).sum(1, keepdim=True)) + 1e-10))
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Distances between (N, 3, H, W) float images in [-1, 1] (RGB); returns (N,)."""
        f0, f1 = self._feats(x0), self._feats(x1)
        total = x0.new_zeros(x0.shape[0])
        for i, (a, b) in enumerate(zip(f0, f1)):
            lin = getattr(self, f"lin{i}").model
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total

    @torch.no_grad()
    def distance(self, img0: np.ndarray, img1: np.ndarray, batch: int = 8) -> np.ndarray:
        """LPIPS of (H, W, 3) or (N, H, W, 3) images, uint8 or float in [0, 1]; (N,) float64."""
        a, b = _to_tensor(img0), _to_tensor(img1)
        if a.shape != b.shape:
            raise ValueError(f"LPIPS needs equal shapes, got {tuple(a.shape)} vs {tuple(b.shape)}")
        dev = self.shift.device
        out = [self(a[i:i + batch].to(dev), b[i:i + batch].to(dev)).cpu()
               for i in range(0, a.shape[0], batch)]
        return torch.cat(out).double().numpy()


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) / (N, H, W, 3) uint8 or [0, 1] float -> (N, 3, H, W) float32 in [-1, 1]."""
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a)).float()
    if a.dtype == np.uint8:
        x = x / 255.0
    return (x * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class LPIPSWeights:
    """Where LPIPS weights come from.

    Attributes:
        backbone: AlexNet ImageNet state dict file (``alexnet-owt-7be5be79.pth``) or None
            (search the defaults).
        linear: lpips ``alex.pth`` linear-head file or None (search the defaults).
        hub_repo: optional Hugging Face repo id holding ``backbone_name`` / ``linear_name``.
        revision: pinned hub revision (commit / tag) or None.
        backbone_name / linear_name: file names inside ``hub_repo``.
        allow_download: let huggingface_hub download (False: local cache only).
    """

    backbone: str | os.PathLike | None = None
    linear: str | os.PathLike | None = None
    hub_repo: str | None = None
    revision: str | None = None
    backbone_name: str = ALEX_BACKBONE_FILE
    linear_name: str = "alex.pth"
    allow_download: bool = False


def _lpips_wheel_linear() -> Path | None:
    """alex.pth inside an installed lpips package, located without importing it."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc).joinpath(*LPIPS_LINEAR_SUBPATH)
        if p.is_file():
            return p
    return None


def _hub_file(cfg: LPIPSWeights, name: str) -> Path | None:
    if not cfg.hub_repo:
        return None
    try:
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(cfg.hub_repo, name, revision=cfg.revision,
                                    local_files_only=not cfg.allow_download))
    except Exception:  # noqa: BLE001 - any hub failure means "not available"
        return None


def resolve_lpips_weights(cfg: LPIPSWeights | None = None) -> tuple[Path | None, Path | None]:
    """(backbone file, linear file); either is None when it cannot be found.

    Search order, backbone: ``cfg.backbone``, $INSTAG_LPIPS_BACKBONE,
    ``weights/alexnet-owt-7be5be79.pth``, the torch hub cache
    (``torch.hub.get_dir()/checkpoints``), ``cfg.hub_repo``. Linear heads: ``cfg.linear``,
    $INSTAG_LPIPS_LINEAR, ``weights/lpips_alex.pth``, an installed lpips wheel,
    ``cfg.hub_repo``. An explicit path that does not exist counts as missing.
    """
    cfg = cfg or LPIPSWeights()

    def first(explicit, env: str, local: list[Path], hub_name: str) -> Path | None:
        if explicit is not None:
            p = Path(explicit).expanduser()
            return p if p.is_file() else None
        cands = [Path(os.environ[env]).expanduser()] if os.environ.get(env) else []
        for p in cands + local:
            if p.is_file():
                return p
        return _hub_file(cfg, hub_name)

    hub_ckpt = Path(torch.hub.get_dir()) / "checkpoints" / ALEX_BACKBONE_FILE
    backbone = first(cfg.backbone, ENV_BACKBONE,
                     [_ROOT / "weights" / ALEX_BACKBONE_FILE, hub_ckpt], cfg.backbone_name)
    wheel = _lpips_wheel_linear()
    linear = first(cfg.linear, ENV_LINEAR,
                   [_ROOT / "weights" / "lpips_alex.pth"] + ([wheel] if wheel else []),
                   cfg.linear_name)
    return backbone, linear


def _state(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError("wrong_weights", f"Cannot read LPIPS weights {path} "
                         f"({exc.__class__.__name__}).",
                         "Provide the original torch state-dict files.") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise InputError("wrong_weights", f"{path} is not a state dict.",
                         "Provide the original torch state-dict files.")
    return {k.removeprefix("module.").removeprefix("net."): v for k, v in sd.items()}


def load_lpips(cfg: LPIPSWeights | None = None, device: str = "cpu") -> LPIPSAlex:
    """Build LPIPS-Alex with the real weights.

    Raises:
        InputError('wrong_weights'): a file is missing or does not fit the network; the
            message names the file and how to provide it.
    """
    backbone, linear = resolve_lpips_weights(cfg)
    missing = []
    if backbone is None:
        missing.append(f"the AlexNet ImageNet backbone ({ALEX_BACKBONE_FILE})")
    if linear is None:
        missing.append("the LPIPS v0.1 linear heads (lpips/weights/v0.1/alex.pth)")
    if missing:
        raise InputError(
            "wrong_weights", "LPIPS weights not found: " + " and ".join(missing) + ".",
            f"Put {ALEX_BACKBONE_FILE} (torchvision's AlexNet) and alex.pth (from the lpips "
            f"wheel) in weights/ (as {ALEX_BACKBONE_FILE} and lpips_alex.pth), or set "
            f"${ENV_BACKBONE} / ${ENV_LINEAR}, or pass LPIPSWeights(hub_repo=..., "
            "allow_download=True).")
    net = LPIPSAlex()
    own = net.state_dict()
    sd = {k: v for k, v in _state(backbone).items() if k.startswith("features.")}
    for k, v in _state(linear).items():
        if k.startswith("lins."):  # ModuleList naming -> lin{i}
            i, rest = k[len("lins."):].split(".", 1)
            k = f"lin{i}.{rest}"
        if k.startswith("lin"):  # NetLinLayer without dropout names the conv model.0
            sd[k.replace(".model.0.weight", ".model.1.weight")] = v
    need = [k for k in own if k not in ("shift", "scale")]
    absent = [k for k in need if k not in sd]
    bad = [k for k in need if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if absent or bad:
        raise InputError("wrong_weights",
                         f"LPIPS weights do not fit AlexNet-LPIPS (missing {absent[:4]}, "
                         f"wrong shape {bad[:4]}) in {backbone} / {linear}.",
                         "Use torchvision's alexnet-owt-7be5be79.pth and lpips v0.1 alex.pth.")
    net.load_state_dict({**own, **{k: sd[k] for k in need}})
    return net.to(device).eval()


_CACHE: dict[tuple, tuple[LPIPSAlex | None, str | None]] = {}


def try_load_lpips(cfg: LPIPSWeights | None = None, device: str = "cpu"
                   ) -> tuple[LPIPSAlex | None, str | None]:
    """(network, None) when the weights are there, else (None, reason); cached per config."""
    cfg = cfg or LPIPSWeights()
    key = (cfg, device, os.environ.get(ENV_BACKBONE), os.environ.get(ENV_LINEAR))
    if key not in _CACHE:
        try:
            _CACHE[key] = (load_lpips(cfg, device), None)
        except InputError as exc:
            _CACHE[key] = (None, f"{exc.problem} {exc.fix}")
    return _CACHE[key]
