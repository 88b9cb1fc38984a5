"""``python -m core.preprocess``: preprocess a clip into a processed-clip folder.

The command-line entry point under its documented name; the code lives in
:mod:`core.data.preprocess`.
"""
from __future__ import annotations

import sys

from core.data.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
