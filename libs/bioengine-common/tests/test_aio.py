"""within(): a time limit that never loses a cancellation (asyncio.wait_for on 3.11 can)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bioengine_common import within


async def test_returns_the_result_and_times_out():
    assert await within(asyncio.sleep(0, result="done"), 1.0) == "done"
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(10), 0.05)
    assert await within(asyncio.sleep(0, result=1), None) == 1


async def _loops_still_running(limit: Callable[[Awaitable[Any], float], Awaitable[Any]]) -> int:
    """Start 200 loops that await a call that is just finishing under ``limit`` and cancel each at
    that moment; count the loops that went on after their cancellation."""

    async def poll() -> None:
        while True:
            await limit(asyncio.sleep(0), 5.0)

    tasks = [asyncio.create_task(poll()) for _ in range(200)]
    for _ in range(3):
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.sleep(0.2)
    running = sum(not task.done() for task in tasks)
    for task in tasks:  # stop the stragglers for good
        while not task.done():
            task.cancel()
            await asyncio.sleep(0)
    return running


async def test_a_cancelled_loop_stops():
    assert await _loops_still_running(within) == 0
