"""A call that ends within half its caller's timeout sends no heartbeat.

A hypha-rpc caller times a call out after its ``method_timeout`` unless the callee keeps
resetting the timer: the callee's heartbeat loop calls the caller back once right as the method
starts, then once every ``interval`` (half the caller's timeout) until the method ends. That
first beat is one more message through the Hypha server and one more for the caller to decode
on every call, however short: on 2 shared cores, about 1.2 ms of a 10 ms ``run_code`` through
the gateway (two hops, two beats).

:func:`install` makes every heartbeat loop of this process wait one interval before its first
beat. A method that ends sooner (nearly all of them) sends none: hypha-rpc cancels the loop
when the method ends. A longer one is beaten at ``interval``, ``2 * interval``, ... so the
caller's timer (``2 * interval``) is reset in time, as by every later beat of the original loop.
``tests/test_heartbeat.py`` checks both on a real server.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import Callable
from typing import Any

from hypha_rpc import rpc as _rpc

__all__ = ["install"]

logger = logging.getLogger(__name__)

#: While hypha-rpc handles one method call (and in the tasks it starts for it, its heartbeat
#: loop among them): the remote method name of that call's heartbeat, and its interval.
_beat: contextvars.ContextVar[tuple[str, float] | None] = contextvars.ContextVar(
    "bioengine_heartbeat", default=None
)
_installed = False


def beat_of(data: dict[str, Any]) -> tuple[str, float] | None:
    """The heartbeat a method call message asks of its callee: ``(method, interval)``; None for
    a call without one (no promise, or a caller without a timeout)."""
    promise, session = data.get("promise"), data.get("session")
    if promise == "*":  # hypha-rpc's short form: the callee builds the callbacks itself
        interval = data.get("t")
    elif isinstance(promise, dict) and "heartbeat" in promise:
        interval = promise.get("interval")
    else:
        return None
    # The interval comes from the caller: only a finite positive number reaches asyncio.sleep
    # (a NaN would put a timer the event loop cannot order among its others).
    if (
        not isinstance(session, str)
        or isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not math.isfinite(interval)
        or interval <= 0
    ):
        return None
    return f"{session}.heartbeat", float(interval)


def _handle_method(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def handle_method(self: Any, data: Any) -> Any:
        token = _beat.set(beat_of(data) if isinstance(data, dict) else None)
        try:
            return original(self, data)  # starts the heartbeat task: it keeps this context
        finally:
            _beat.reset(token)

    return handle_method


def _call(original: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        beat = _beat.get()
        if beat is None or getattr(self, "_bioengine_beaten", False):
            return original(self, *args, **kwargs)
        method, interval = beat
        if self._encoded_method.get("_rmethod") != method:
            return original(self, *args, **kwargs)
        self._bioengine_beaten = True

        async def first_beat() -> Any:
            await asyncio.sleep(interval)  # cancelled (nothing sent) when the method ends first
            return await original(self, *args, **kwargs)

        return first_beat()

    return call


def install() -> None:
    """Patch hypha-rpc once per process (before any connection is made). Without the hooks (a
    hypha-rpc that changed) calls work as before, each with its first beat."""
    global _installed
    if _installed:
        return
    _installed = True
    rpc_class, function_class = _rpc.RPC, getattr(_rpc, "RemoteFunction", None)
    if not hasattr(rpc_class, "_handle_method") or function_class is None:
        logger.debug("hypha-rpc has no RPC._handle_method or RemoteFunction: heartbeats unchanged")
        return
    rpc_class._handle_method = _handle_method(rpc_class._handle_method)
    function_class.__call__ = _call(function_class.__call__)
