"""The errors an app author sees. All are ``BioEngineUserError``: a mistake in the app (or its
deployment request) that the author can fix, as opposed to a fault of the platform."""

from __future__ import annotations

__all__ = [
    "BioEngineUserError",
    "CompositionCycleError",
    "MissingDataServerError",
    "ReservedMethodNameError",
]


class BioEngineUserError(Exception):
    """A mistake in an app or its deployment request; the message says what and where."""


class ReservedMethodNameError(BioEngineUserError):
    """A method uses a name the platform installs itself (``check_health``, ...), or a class
    marks two methods with the same lifecycle hook."""


class CompositionCycleError(BioEngineUserError):
    """The classes' ``__init__`` type hints form a cycle (A needs B, B needs A)."""


class MissingDataServerError(BioEngineUserError):
    """``bioengine.datasets`` was used where no dataset server is configured
    (``BIOENGINE_DATA_SERVER_URL`` is unset)."""
