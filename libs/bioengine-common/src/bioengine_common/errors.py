"""The exceptions BioEngine services raise, in one place.

::

    BioEngineError                      base of everything below
    ├── ConfigurationError  (ValueError)   a setting or flag is invalid
    ├── InvalidRequest      (ValueError)   an RPC argument is invalid
    ├── PermissionDenied    (PermissionError)  the caller may not do this
    ├── NotFound            (KeyError, FileNotFoundError)  a named thing does not exist
    ├── ServiceUnavailable  (ConnectionError)  Hypha or another service cannot be reached
    │   └── ConnectionLost                     the Hypha connection is gone for good
    ├── ResourceUnavailable                    the cluster cannot fit a request
    └── AppFailed           (RuntimeError)     an app waited for failed or was stopped

Each also subclasses the matching built-in, so callers that only know the standard library
(``except KeyError``, ``except PermissionError``) keep working. Over Hypha RPC an exception
arrives as a remote error carrying the message, so messages name the thing that is wrong.
"""

from __future__ import annotations

import re

__all__ = [
    "AppFailed",
    "BioEngineError",
    "ConfigurationError",
    "ConnectionLost",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "ResourceUnavailable",
    "ServiceUnavailable",
    "error_summary",
    "from_remote",
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


class AppFailed(BioEngineError, RuntimeError):
    """An app waited for is DEPLOY_FAILED or UNHEALTHY, or was stopped; the message says why."""


# Lines of a traceback that name no error: its header, hypha-rpc's "RemoteError:Traceback ..." /
# "Exception: Traceback ..." wrappers, and the separators of chained exceptions.
_FRAMING = re.compile(
    r"^(Traceback \(most recent call last\)|\w+:\s*Traceback \(most recent call last\)"
    r"|The above exception was the direct cause|During handling of the above exception)"
)
# "package.module.TypeName: message" or a bare "TypeName" (an error raised without a message).
_ERROR_HEADER = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*)(?:: ?(.*))?$")
# A qualified error name inside a message (a service quoting another's error): keep its last part.
_QUALIFIED_NAME = re.compile(r"\b(?:[a-z_]\w*\.)+([A-Z]\w*): ")


def _name_and_message(exc: BaseException) -> tuple[str, str]:
    lines = [line.rstrip() for line in str(exc).strip().splitlines() if line.strip()]
    name, message = type(exc).__name__, " ".join(line.strip() for line in lines)
    if len(lines) > 1:
        # The last line at column 0 that is an error header; lines after it at column 0 are the
        # rest of a message that spans lines.
        top_level = [i for i, line in enumerate(lines) if not line[0].isspace() and not _FRAMING.match(line)]
        headers = [
            i
            for i in top_level
            if _ERROR_HEADER.match(lines[i])
            and (":" in lines[i] or lines[i].endswith(("Error", "Exception")))
        ]
        if headers:
            first = headers[-1]
            match = _ERROR_HEADER.match(lines[first])
            assert match is not None
            name = match.group(1)
            rest = [lines[i].strip() for i in top_level if i > first]
            message = " ".join(part for part in [match.group(2) or "", *rest] if part)
    elif lines:
        match = _ERROR_HEADER.match(lines[0])
        remote = type(exc).__name__ in ("RemoteException", "Exception")
        if match and match.group(2) is not None and (remote or "." in lines[0].split(":", 1)[0]):
            name, message = match.group(1), match.group(2)  # a remote error's one line
    return name, _QUALIFIED_NAME.sub(r"\1: ", message).strip()


def error_summary(exc: BaseException) -> str:
    """One line ``TypeName: message`` for an error, also for one raised by a remote service.

    hypha-rpc delivers a remote error as an exception whose text is the server's whole
    traceback (often twice, wrapped in ``RemoteError:``/``Exception:`` lines); the line that says
    what went wrong is the last error header of that text, e.g.
    ``bioengine_common.errors.PermissionDenied: User 'x' is not authorized ...``, summarised as
    ``PermissionDenied: User 'x' is not authorized ...``. Module paths of errors quoted inside the
    message are dropped too; a message over several lines is joined.
    """
    name, message = _name_and_message(exc)
    return f"{name}: {message}" if message else name


def from_remote(exc: BaseException) -> BioEngineError | None:
    """The BioEngine error a remote service raised, rebuilt here with its one-line message (so a
    service passing it on does not wrap a traceback in its own); None for any other error."""
    name, message = _name_and_message(exc)
    kind = _BY_NAME.get(name)
    return kind(message) if kind is not None and not isinstance(exc, BioEngineError) else None


_BY_NAME: dict[str, type[BioEngineError]] = {
    kind.__name__: kind
    for kind in (
        ConfigurationError,
        InvalidRequest,
        PermissionDenied,
        NotFound,
        ServiceUnavailable,
        ConnectionLost,
        ResourceUnavailable,
        AppFailed,
    )
}
