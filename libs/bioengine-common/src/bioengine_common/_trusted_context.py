"""Only the Hypha server says who is calling: a ``context`` the caller wrote is dropped.

hypha-rpc (0.21.47) builds the ``context`` a service method receives from the routing fields
the Hypha server stamps on each message (``from``, ``to``, ``ws``, ``user``), but it keeps a
``ctx`` the *sender* put in the message instead, in either of its two segments, and lets the
second segment overwrite the stamped fields. So any client of the workspace could call a
service as any user, the admin included, with a few bytes of its own. Every permission check
of the worker reads that context.

:func:`install` (run by :func:`bioengine_common.connect` before it connects) makes every RPC of
this process build the context from the stamped fields only: a sender's ``ctx`` is dropped and
the second segment cannot overwrite a stamped field. Messages within one process (dicts) are
unchanged. ``tests/test_trusted_context.py`` forges both segments and a chunked message on a
real server.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import msgpack
from hypha_rpc import rpc as _rpc

from .errors import ConfigurationError

__all__ = ["install"]

#: The fields the Hypha server writes on the first segment of every message it routes.
STAMPED = ("from", "to", "ws", "user")
_installed = False


def _payload(extra: dict[str, Any]) -> dict[str, Any]:
    """The second segment without anything that could speak for the sender."""
    return {key: value for key, value in extra.items() if key not in (*STAMPED, "ctx")}


def _on_message(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def on_message(self: Any, message: Any) -> None:
        if isinstance(message, str):
            main, extra = json.loads(message), {}
        elif isinstance(message, bytes):
            unpacker = msgpack.Unpacker(
                io.BytesIO(message), max_buffer_size=max(512000, self._long_message_chunk_size * 2)
            )
            main = unpacker.unpack()
            try:
                extra = unpacker.unpack()
            except msgpack.exceptions.OutOfData:
                extra = {}
        else:  # a dict: a message of this process to itself
            original(self, message)
            return
        if not isinstance(main, dict) or not isinstance(extra, dict):
            raise ValueError("malformed RPC message")
        main.pop("ctx", None)
        main = self._add_context_to_message(main)
        main.update(_payload(extra))
        self._fire(main["type"], main)

    return on_message


def _process_message(original: Callable[..., None]) -> Callable[..., None]:
    """A chunked message: hypha-rpc stamps it from the trusted ``context`` of its last chunk,
    then merges the second segment over it; put the stamped fields and the context back."""

    def process_message(self: Any, key: str, heartbeat: bool = False, context: Any = None) -> None:
        fire = self._fire

        def fire_trusted(event: str, main: dict[str, Any]) -> None:
            main.update({field: context[field] for field in STAMPED})
            main["ctx"] = {
                **{k: v for k, v in main.items() if k not in ("ctx", "args", "kwargs", "promise")},
                **self.default_context,
            }
            fire(event, main)

        self._fire = fire_trusted
        try:
            original(self, key, heartbeat=heartbeat, context=context)
        finally:
            del self._fire  # back to the class's method

    return process_message


def install() -> None:
    """Patch hypha-rpc's RPC class once per process (before any connection is made)."""
    global _installed
    if _installed:
        return
    cls = _rpc.RPC
    needed = ("_on_message", "_process_message", "_add_context_to_message", "_fire")
    missing = [name for name in needed if not hasattr(cls, name)]
    if missing:
        raise ConfigurationError(
            f"hypha-rpc {getattr(_rpc, '__version__', '?')} has no {', '.join(missing)}: the check "
            "that callers cannot write their own context cannot be installed"
        )
    cls._on_message = _on_message(cls._on_message)
    cls._process_message = _process_message(cls._process_message)
    _installed = True
