"""The BioEngine worker launcher and the ``bioengine`` command-line client."""

from ._launcher import CONNECTION_FILE, Launcher, WorkerSettings

__all__ = ["CONNECTION_FILE", "Launcher", "WorkerSettings"]
