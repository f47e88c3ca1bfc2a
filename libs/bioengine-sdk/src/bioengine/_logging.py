"""``bioengine.logger``: Ray Serve's logger inside a replica, else ``bioengine.app``."""

from __future__ import annotations

import logging
import os
import sys


def in_replica() -> bool:
    """True inside a Ray Serve replica (the platform sets ``BIOENGINE_REPLICA=1``; else ask Serve,
    only if the process has already imported it)."""
    if os.environ.get("BIOENGINE_REPLICA") == "1":
        return True
    serve = sys.modules.get("ray.serve")
    if serve is None:
        return False
    try:
        serve.get_replica_context()
    except Exception:
        return False
    return True


def current_logger() -> logging.Logger:
    return logging.getLogger("ray.serve" if in_replica() else "bioengine.app")
