"""Contracts: every public method of the worker declared once.

:mod:`.worker` declares the methods of ``bioengine-worker`` (signature, fields, docstring, who
may call it, which internal service implements it, the gateway's call timeout, its errors).
The internal services implement them (``@worker.run_code.implementation``), the gateway builds
its methods from them, and the API docs are generated from them::

    uv run python -m bioengine_common.contracts --write docs
"""

from . import worker
from ._model import SERVICE_IDS, Access, Api, CallTimeout, MethodContract, check_implementations
from .worker import WORKER

__all__ = [
    "SERVICE_IDS",
    "WORKER",
    "Access",
    "Api",
    "CallTimeout",
    "MethodContract",
    "check_implementations",
    "worker",
]
