"""``python -m core.pretrain``: pre-train the Universal Motion Field prior.

The command-line entry point under its documented name; the code lives in
:mod:`core.train.pretrain`.
"""
from __future__ import annotations

import sys

from core.train.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
