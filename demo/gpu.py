"""GPU calls: ``spaces.GPU`` on a Hugging Face ZeroGPU Space, plain calls elsewhere.

On ZeroGPU a decorated function runs in a GPU worker process for at most ``duration``
seconds of the visitor's quota, so only GPU work goes inside (adaptation, rendering);
tracking, file checks and bookkeeping stay in the app process. Its arguments, results and
exceptions are pickled across the boundary: :func:`gpu_task` turns an ``InputError`` into
a ``gr.Error`` (whose message survives pickling) before it leaves the worker. Generator
functions (streamed renders) stay generators.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from core.errors import InputError
from demo.errors import user_error

F = TypeVar("F", bound=Callable[..., Any])


def gpu(duration: int) -> Callable[[F], F]:
    """Decorator requesting a GPU for up to ``duration`` seconds per call (ZeroGPU only)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def gpu_task(duration: int) -> Callable[[F], F]:
    """:func:`gpu`, with user errors raised inside as ``gr.Error`` (see the module doc)."""

    def decorate(fn: F) -> F:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args: Any, **kwargs: Any) -> Any:
                try:
                    yield from fn(*args, **kwargs)
                except InputError as e:
                    raise user_error(e) from None

            return gpu(duration)(stream)  # type: ignore[return-value]

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except InputError as e:
                raise user_error(e) from None

        return gpu(duration)(call)  # type: ignore[return-value]

    return decorate
