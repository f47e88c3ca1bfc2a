"""The BioEngine worker launcher and the ``bioengine`` command-line client."""

from ._cli import read_app_folder
from ._launcher import CONNECTION_FILE, Launcher, WorkerSettings
from ._process import WorkerProcess

__all__ = ["CONNECTION_FILE", "Launcher", "WorkerProcess", "WorkerSettings", "read_app_folder"]
