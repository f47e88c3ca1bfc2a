"""The exceptions BioEngine services raise, in one place.

::

    BioEngineError                      base of everything below
    ├── ConfigurationError  (ValueError)   a setting or flag is invalid
    ├── InvalidRequest      (ValueError)   an RPC argument is invalid
    ├── PermissionDenied    (PermissionError)  the caller may not do this
    ├── NotFound            (KeyError, FileNotFoundError)  a named thing does not exist
    ├── ServiceUnavailable  (ConnectionError)  Hypha or another service cannot be reached
    │   └── ConnectionLost                     the Hypha connection is gone for good
    └── ResourceUnavailable                    the cluster cannot fit a request

Each also subclasses the matching built-in, so callers that only know the standard library
(``except KeyError``, ``except PermissionError``) keep working. Over Hypha RPC an exception
arrives as a remote error carrying the message, so messages name the thing that is wrong.
"""

from __future__ import annotations

__all__ = [
    "BioEngineError",
    "ConfigurationError",
    "ConnectionLost",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "ResourceUnavailable",
    "ServiceUnavailable",
    "error_summary",
]


class BioEngineError(Exception):
    """Base class of every error raised on purpose by BioEngine code."""


class ConfigurationError(BioEngineError, ValueError):
    """A setting, flag or environment variable has an invalid value."""


class InvalidRequest(BioEngineError, ValueError):
    """An argument of an RPC call is invalid; the message names the argument."""


class PermissionDenied(BioEngineError, PermissionError):
    """The caller is not allowed to use this method or resource."""


class NotFound(BioEngineError, KeyError, FileNotFoundError):
    """A named resource (service, app, dataset, file) does not exist."""

    def __str__(self) -> str:
        # KeyError quotes its argument; show the message as written instead.
        return str(self.args[0]) if self.args else ""


class ServiceUnavailable(BioEngineError, ConnectionError):
    """Hypha or another BioEngine service cannot be reached right now."""


class ConnectionLost(ServiceUnavailable):
    """The Hypha connection is gone and will not come back; the process should exit."""


class ResourceUnavailable(BioEngineError):
    """The cluster cannot provide the resources a request needs."""


def error_summary(exc: BaseException) -> str:
    """One line for an error, also for one that came back over Hypha with a whole remote
    traceback in its message: the last non-empty line, e.g. ``KeyError: 'Service not found'``."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) == 1 and not lines[0].startswith(type(exc).__name__):
        return f"{type(exc).__name__}: {lines[0]}"
    return lines[-1]
