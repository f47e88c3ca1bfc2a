"""A stuck service process ends instead of lingering: the event loop's watchdog.

A service's event loop can be blocked by what it does not control: a thread of a native library
(Ray's driver, grpc) holding the GIL while it waits for a lock another thread holds. The process
then answers nothing, logs nothing and never exits, so its supervisor never restarts it.

:func:`watch_event_loop` re-arms :func:`faulthandler.dump_traceback_later` every second from the
loop. That timer runs in a C thread that needs neither the loop nor the GIL: when the loop has
not re-armed it for ``stall_s`` seconds, it writes the stack of every thread to the console
(standard error) and ends the process with exit code 1, for the supervisor to restart it. What
users deployed (the Ray head, apps, SLURM jobs) keeps running and the new process adopts it.

Only a service's console entry point arms it (one timer per process: never in a test process).
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import sys
import time

__all__ = ["watch_event_loop"]

#: How often the loop re-arms the timer, and a lag worth a warning (a loop that late is close
#: to the point where Hypha's server drops the connection).
_TICK_S = 1.0
_LAG_WARNING_S = 10.0


async def watch_event_loop(stall_s: float, logger: logging.Logger) -> None:
    """Run until cancelled: end the process (exit code 1, every thread's stack on standard
    error) when this loop is blocked for ``stall_s`` seconds; 0 never."""
    if stall_s <= 0:
        return
    try:
        while True:
            faulthandler.dump_traceback_later(stall_s, exit=True, file=sys.stderr)
            before = time.monotonic()
            await asyncio.sleep(_TICK_S)
            lag = time.monotonic() - before - _TICK_S
            if lag >= _LAG_WARNING_S:
                logger.warning(
                    "The event loop was blocked for %.0f s (the process ends after %g s)", lag, stall_s
                )
    finally:
        faulthandler.cancel_dump_traceback_later()
