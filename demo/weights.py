"""Finding the prior for the app: ``core.weights`` does the resolving (shipped ``weights/``
first, the Hugging Face Hub at a pinned revision for hub-hosted priors)."""
from __future__ import annotations

from pathlib import Path

from core.weights import hub_file, resolve_prior as resolve_named_prior
from demo.config import AppConfig


def resolve_prior(cfg: AppConfig) -> Path | None:
    """The prior checkpoint to adapt from, or None when ``cfg.prior == 'none'``.

    ``cfg.prior_repo`` set: that repo's ``cfg.prior_filename`` at ``cfg.prior_revision``
    (:func:`core.weights.hub_file`, cached copy only unless ``cfg.allow_download``);
    otherwise ``cfg.prior`` as a file path or a ``weights/manifest.json`` name
    (:func:`core.weights.resolve_prior`).

    Raises:
        InputError('wrong_weights' | 'corrupt'): no usable prior; the message says how to
        provide one.
    """
    spec = cfg.prior.strip()
    if spec.lower() == "none":
        return None
    if cfg.prior_repo and not Path(spec).expanduser().is_file():
        return hub_file(cfg.prior_repo, cfg.prior_filename, cfg.prior_revision, cfg.allow_download)
    return resolve_named_prior(Path(spec).expanduser() if spec.endswith(".safetensors") else spec,
                               allow_download=cfg.allow_download)
