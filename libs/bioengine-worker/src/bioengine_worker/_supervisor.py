"""Keeps the service processes running: start, restart with backoff, stop in order."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bioengine_common import EXIT_WORKER_STOP, spawn, stop_process

#: A run shorter than this counts as a crash loop: the next restart waits longer.
STABLE_AFTER_S = 60.0


@dataclass
class ManagedProcess:
    """One supervised child: its command, a fresh environment per start, its console log."""

    name: str
    argv: Sequence[str]
    environment: Callable[[], Mapping[str, str]]
    console_log: Path
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    #: Set when the child exited with EXIT_WORKER_STOP: it asked for the whole worker to stop.
    stop_requested: bool = False
    backoff: float = field(init=False)

    def __post_init__(self) -> None:
        self.backoff = self.backoff_initial

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def start(self) -> None:
        self.process = spawn(self.argv, env=self.environment(), log_path=self.console_log)
        self.started_at = time.monotonic()
        self.restart_at = None

    def check(self, log: Callable[[str], None]) -> None:
        """Notice an exit and schedule (or perform) the restart."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                log(f"Restarting {self.name} (restart #{self.restarts})")
                self.start()
            return
        if self.process is None or self.process.poll() is None:
            return
        if self.process.returncode == EXIT_WORKER_STOP:
            if not self.stop_requested:
                log(f"{self.name} asked to stop the worker")
            self.stop_requested = True
            return
        ran_for = now - self.started_at
        if ran_for >= STABLE_AFTER_S:
            self.backoff = self.backoff_initial
        delay = self.backoff
        self.backoff = min(self.backoff * 2, self.backoff_max)
        self.restart_at = now + delay
        log(
            f"{self.name} exited with code {self.process.returncode} after {ran_for:.0f} s; "
            f"restarting in {delay:.0f} s (see {self.console_log})"
        )

    def stop(self, timeout: float) -> None:
        self.restart_at = None
        stop_process(self.process, timeout=timeout)


class Supervisor:
    def __init__(self, processes: Sequence[ManagedProcess], log: Callable[[str], None] | None = None):
        self.processes = list(processes)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    def start_all(self) -> None:
        for managed in self.processes:
            managed.start()

    def check_all(self) -> bool:
        """Restart what exited; True when a child asked for the whole worker to stop."""
        for managed in self.processes:
            managed.check(self.log)
        return any(managed.stop_requested for managed in self.processes)

    def stop_all(self, timeout: float = 15.0) -> None:
        """Stop the last process first (the gateway: the public service goes before what it
        depends on), then the others in parallel."""
        if not self.processes:
            return
        *rest, last = self.processes
        last.stop(timeout)
        threads = [threading.Thread(target=m.stop, args=(timeout,)) for m in rest]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
