"""Resolving shipped and hub-hosted weights (priors) by name, offline first.

``weights/manifest.json`` lists every prior the project knows: the shipped ones (a file in
``weights/``, with its sha256) and hub-hosted ones for GPU deployments (a Hugging Face repo,
file name and pinned revision). :func:`resolve_prior` returns a local path:

1. an existing file path is used as is;
2. a manifest name whose file is shipped in ``weights/`` resolves to that file (sha256
   checked);
3. a manifest name hosted on the Hub resolves through ``huggingface_hub.hf_hub_download``
   at the pinned revision -- from the local cache only unless ``allow_download`` (or the
   ``INSTAG_ALLOW_DOWNLOAD=1`` environment variable) permits fetching.

Anything else raises :class:`core.errors.InputError` ('wrong_weights') naming what is
missing and how to provide it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"
DEFAULT_PRIOR = "prior_mel_code_cpu"
#: the shipped audio-to-mouth prior (:mod:`core.model.mouth_predictor`), manifest section
#: ``mouth_priors``
DEFAULT_MOUTH_PRIOR = "mouth_prior"


@dataclass(frozen=True)
class PriorEntry:
    """One manifest entry. ``file``: name in ``weights/`` (shipped) or in the hub repo;
    ``sha256``: of the shipped file; ``repo_id`` / ``revision``: Hub location (pinned)."""

    name: str
    file: str
    audio: str
    sha256: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    description: str = ""


def manifest(path: Path = MANIFEST, section: str = "priors") -> dict[str, PriorEntry]:
    """The entries of one section of ``weights/manifest.json`` by name: ``priors`` (motion
    field priors) or ``mouth_priors`` (audio-to-mouth priors)."""
    data = json.loads(path.read_text())
    return {e["name"]: PriorEntry(**e) for e in data.get(section, [])}


def resolve_prior(name_or_path: str | os.PathLike = DEFAULT_PRIOR,
                  allow_download: bool | None = None, manifest_path: Path = MANIFEST,
                  section: str = "priors") -> Path:
    """Local path of a prior given a file path or a manifest name of ``section`` (see module
    doc and :func:`manifest`)."""
    p = Path(name_or_path)
    if p.suffix == ".safetensors" and p.is_file():
        return p
    entries = manifest(manifest_path, section)
    entry = entries.get(str(name_or_path))
    if entry is None:
        raise InputError("wrong_weights", f"Unknown prior {str(name_or_path)!r}: not a file and "
                         f"not in {manifest_path.name} ({', '.join(sorted(entries))}).",
                         "Pass a .safetensors path or one of the listed names.")
    local = manifest_path.parent / entry.file
    if entry.repo_id is None:
        if not local.is_file():
            raise InputError("wrong_weights", f"The shipped prior {entry.file} is missing from "
                             f"{manifest_path.parent}.", "Restore it from the repository "
                             "(git checkout weights/) or re-create it with core.train.pretrain "
                             "(weights/README.md has the command).")
        if entry.sha256:
            from core.data.preprocess import sha256_file

            if sha256_file(local) != entry.sha256:
                raise InputError("corrupt", f"{entry.file} does not match its manifest checksum.",
                                 "Restore it from the repository or re-create it "
                                 "(weights/README.md).")
        return local
    return hub_file(entry.repo_id, entry.file, entry.revision, allow_download)


def hub_file(repo_id: str, filename: str, revision: str | None,
             allow_download: bool | None = None) -> Path:
    """A file of a Hugging Face repo at a pinned revision, from the local cache unless
    ``allow_download`` (default: ``INSTAG_ALLOW_DOWNLOAD=1``) permits fetching it.

    Raises:
        InputError('wrong_weights'): not cached (offline) or not fetchable; the message names
        the repo, file and revision and how to provide them.
    """
    if allow_download is None:
        allow_download = os.environ.get("INSTAG_ALLOW_DOWNLOAD") == "1"
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = f"{repo_id}/{filename} @ {revision or 'main'}"
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision,
                                    local_files_only=not allow_download))
    except LocalEntryNotFoundError as e:
        raise InputError("wrong_weights", f"{where} is not in the local Hugging Face cache.",
                         "Download it on a networked machine (`huggingface-cli download "
                         f"{repo_id} {filename} --revision {revision or 'main'}`), or set "
                         "INSTAG_ALLOW_DOWNLOAD=1, or pass a local .safetensors path.") from e
    except Exception as e:  # network or repository errors: say what failed
        raise InputError("wrong_weights", f"Could not fetch {where} "
                         f"({e.__class__.__name__}: {e}).",
                         "Check the network, the repo id, file name and revision, or pass a "
                         "local path.") from e
