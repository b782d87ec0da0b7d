"""The two asyncio functions shardflow awaits, imported on first use.

Only the async methods (``asubmit``, ``aacquire``, ``acall``, ``async for`` over a pipeline)
need asyncio, and importing it (ssl comes with it) costs more than the rest of
``import shardflow``; so the modules call these instead of importing asyncio themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["sleep", "to_thread"]

R = TypeVar("R")


async def sleep(delay: float) -> None:
    """``asyncio.sleep(delay)``."""
    import asyncio

    await asyncio.sleep(delay)


async def to_thread(fn: Callable[..., R], /, *args: Any) -> R:
    """``asyncio.to_thread(fn, *args)``."""
    import asyncio

    return await asyncio.to_thread(fn, *args)
