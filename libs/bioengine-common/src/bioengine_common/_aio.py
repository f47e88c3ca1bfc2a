"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable``; ``TimeoutError`` after ``seconds`` (None: no limit).

    Use this, not ``asyncio.wait_for``: on Python 3.11, ``wait_for`` returns the inner result when
    a cancellation of the waiting task arrives just as the inner call ends, and the cancellation
    is lost. A loop that awaits it then goes on after being cancelled (a watch that never stops,
    a shutdown that hangs). ``asyncio.timeout`` keeps the cancellation.
    """
    async with asyncio.timeout(seconds):
        return await awaitable
