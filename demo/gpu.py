"""``spaces.GPU`` when running on a Hugging Face ZeroGPU Space, a no-op elsewhere."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def gpu(duration: int) -> Callable[[F], F]:
    """Decorator requesting a GPU for up to ``duration`` seconds per call (ZeroGPU only)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)
