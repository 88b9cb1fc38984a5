"""Prior resolution: shipped file by name, checksum, hub entries offline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.model import checkpoint
from core.errors import InputError
from core.data.preprocess import sha256_file
from core.weights import MANIFEST, manifest, resolve_prior


def _write_manifest(folder: Path, entries: list[dict]) -> Path:
    m = folder / "manifest.json"
    m.write_text(json.dumps({"priors": entries}))
    return m


def test_shipped_prior_resolves_and_loads() -> None:
    entries = manifest()
    shipped = [e for e in entries.values() if e.repo_id is None]
    assert shipped, "weights/manifest.json lists no shipped prior"
    for e in shipped:
        path = resolve_prior(e.name)
        assert path == MANIFEST.parent / e.file
        t, meta = checkpoint.load(path, kind="prior")
        assert meta["audio"]["kind"] == e.audio
        assert path.stat().st_size < 16 << 20


def test_checksum_and_missing_files(tmp_path: Path) -> None:
    src = resolve_prior()
    (tmp_path / "p.safetensors").write_bytes(src.read_bytes())
    good = {"name": "p", "file": "p.safetensors", "audio": "mel", "sha256": sha256_file(src)}
    m = _write_manifest(tmp_path, [good, {**good, "name": "bad", "sha256": "0" * 64},
                                   {**good, "name": "gone", "file": "gone.safetensors"}])
    assert resolve_prior("p", manifest_path=m) == tmp_path / "p.safetensors"
    with pytest.raises(InputError) as e:
        resolve_prior("bad", manifest_path=m)
    assert e.value.code == "corrupt"
    with pytest.raises(InputError) as e:
        resolve_prior("gone", manifest_path=m)
    assert e.value.code == "wrong_weights" and "README" in str(e.value)
    with pytest.raises(InputError) as e:
        resolve_prior("nonexistent", manifest_path=m)
    assert "p" in str(e.value)


def test_hub_prior_offline_gives_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = _write_manifest(tmp_path, [{"name": "hub", "file": "prior.safetensors", "audio": "hubert",
                                    "repo_id": "someone/instag-prior", "revision": "v1"}])
    with pytest.raises(InputError) as e:
        resolve_prior("hub", manifest_path=m, allow_download=False)
    msg = str(e.value)
    assert e.value.code == "wrong_weights"
    assert "someone/instag-prior" in msg and "huggingface-cli download" in msg
