"""``bioengine``: write BioEngine apps (the public BioEngine's authoring SDK, reimplemented).

Every name is loaded on first use (PEP 562): ``import bioengine`` imports neither Ray nor an
app's own dependencies. See the package README for the surface and an example.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BioEngineRuntimeHandle",
    "BioEngineUserError",
    "CompositionCycleError",
    "MissingDataServerError",
    "ReservedMethodNameError",
    "__version__",
    "app",
    "async_init",
    "datasets",
    "health_check",
    "logger",
    "method",
    "smoke_test",
]

#: exported name -> module (relative) that defines it
_EXPORTS = {
    "app": ".decorators",
    "method": ".decorators",
    "async_init": ".decorators",
    "smoke_test": ".decorators",
    "health_check": ".decorators",
    "BioEngineRuntimeHandle": ".runtime",
    "BioEngineUserError": ".errors",
    "ReservedMethodNameError": ".errors",
    "CompositionCycleError": ".errors",
    "MissingDataServerError": ".errors",
}

if TYPE_CHECKING:
    import logging

    from . import datasets
    from .decorators import app, async_init, health_check, method, smoke_test
    from .errors import (
        BioEngineUserError,
        CompositionCycleError,
        MissingDataServerError,
        ReservedMethodNameError,
    )
    from .runtime import BioEngineRuntimeHandle

    logger: logging.Logger
    __version__: str


def __getattr__(name: str) -> Any:
    if name == "logger":  # not cached: a module imported before the replica started gets the right one later
        from ._logging import current_logger

        return current_logger()
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("bioengine-services-sdk")
        except PackageNotFoundError:  # a source tree on sys.path without the distribution
            value = "0+unknown"
        globals()[name] = value
        return value
    if name == "datasets":
        return importlib.import_module(".datasets", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bioengine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
