"""Where the project lives, for child processes that run its code (a phone decode in a
process of its own, Ray workers): the folder, and the ``PYTHONPATH`` that puts it first."""
from __future__ import annotations

import os
from pathlib import Path

#: The project folder (the one holding ``core/``).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def python_path() -> str:
    """``PYTHONPATH`` for a child Python process that imports the project: the project folder,
    then this process's own ``PYTHONPATH`` entries."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([str(PROJECT_ROOT), *rest])
