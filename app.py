"""InsTaG talking-head app: ``python app.py`` (Gradio; also the Hugging Face Space entry)."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
try:  # on a Hugging Face ZeroGPU Space `spaces` must be imported before torch
    import spaces  # noqa: F401
except ImportError:
    pass

from demo.config import AppConfig
from demo.ui import build_app, launch

config = AppConfig.from_env()
demo = build_app(config)

if __name__ == "__main__":
    launch(demo, config)
