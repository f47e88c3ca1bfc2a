"""Support for tests and benchmarks of the one-command worker; not part of the public API.

:class:`WorkerProcess` runs ``bioengine-worker`` as a child process, as a user would.
:mod:`bioengine_worker.testing.faults` kills its processes the way a crash would and probes the
worker through the faults (the chaos tests, ``bench/recovery.py``; extra ``chaos``).
"""

from ._process import READY_LINE, WorkerProcess

__all__ = ["READY_LINE", "WorkerProcess"]
