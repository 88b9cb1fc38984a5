"""``python -m core.adapt``: adapt the prior to one person (an avatar folder).

The command-line entry point under its documented name; the code lives in
:mod:`core.train.adapt`.
"""
from __future__ import annotations

import sys

from core.train.adapt import main

if __name__ == "__main__":
    sys.exit(main())
