"""The BioEngine worker launcher and the ``bioengine`` command-line client.

Test support (``WorkerProcess``, the chaos faults) is in :mod:`bioengine_worker.testing`.
"""

from ._launcher import CONNECTION_FILE, Launcher, WorkerSettings
from .cli import read_app_folder

__all__ = ["CONNECTION_FILE", "Launcher", "WorkerSettings", "read_app_folder"]
