"""Shared test fixtures: the real clips and audio live in ../shared/data (never copied here)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared test data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def clips_dir(data_dir: Path) -> Path:
    return data_dir / "clips"


@pytest.fixture(scope="session")
def audio_dir(data_dir: Path) -> Path:
    return data_dir / "audio"


@pytest.fixture(scope="session")
def short_dir(data_dir: Path) -> Path:
    return data_dir / "short"
