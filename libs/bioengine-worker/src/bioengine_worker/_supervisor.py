"""Keeps the worker's processes running: start, restart with backoff, stop in order.

Two kinds of child: the services (``ManagedProcess``) and the infrastructure they depend on, the
embedded Hypha server and SeaweedFS (``Dependency``). A dependency is restarted at once the first
time it dies, then with growing delays while it keeps failing; it counts as back only when its
readiness probe passes, and services that exit meanwhile wait for it before they restart.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bioengine_common import CONTINUATION, EXIT_WORKER_STOP, escape_control, mask_secrets, spawn, stop_process

#: A run shorter than this counts as a crash loop: the next restart waits longer.
STABLE_AFTER_S = 60.0
#: How much of the end of a run's console output is searched for the error that ended it.
LAST_ERROR_BYTES = 65536
#: Longest error quoted in the supervisor's line (the log has all of it).
LAST_ERROR_CHARS = 300


def last_error(output: str) -> str | None:
    """The error a run's console ``output`` ended with: the exception line of its last
    traceback, else the message of its last ERROR or CRITICAL record; masked, escaped, short."""
    lines = [line.removeprefix(CONTINUATION) for line in output.splitlines()]
    found = None
    headers = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if headers:
        found = next((line for line in lines[headers[-1] + 1 :] if line and not line[0].isspace()), None)
    if found is None:
        records = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
        if records:
            found = records[-1].split("] ", 1)[-1]
    if not found:
        return None
    text = escape_control(mask_secrets(found.strip()))
    return text if len(text) <= LAST_ERROR_CHARS else text[: LAST_ERROR_CHARS - 3] + "..."


@dataclass
class ManagedProcess:
    """One supervised child: its command, a fresh environment per start, its console log."""

    name: str
    argv: Sequence[str]
    environment: Callable[[], Mapping[str, str]]
    console_log: Path
    #: File descriptors the child inherits (the listening socket of its metrics endpoint).
    pass_fds: Sequence[int] = ()
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    #: Size of the console log when the current run started: its output follows.
    log_offset: int = 0
    #: Set when the child exited with EXIT_WORKER_STOP: it asked for the whole worker to stop.
    stop_requested: bool = False
    backoff: float = field(init=False)

    def __post_init__(self) -> None:
        self.backoff = self.backoff_initial

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def start(self) -> None:
        try:
            self.log_offset = self.console_log.stat().st_size
        except OSError:
            self.log_offset = 0
        self.process = spawn(
            self.argv, env=self.environment(), log_path=self.console_log, pass_fds=self.pass_fds
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    def check(self, log: Callable[[str], None], may_start: bool = True) -> None:
        """Notice an exit and schedule (or perform, when ``may_start``) the restart."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at and may_start:
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
        error = self.run_error()
        log(
            f"{self.name} exited with code {self.process.returncode} after {ran_for:.0f} s"
            + (f" ({error})" if error else "")
            + f"; restarting in {delay:.0f} s (see {self.console_log})"
        )

    def run_error(self) -> str | None:
        """The error the last run ended with, from its console output (see :func:`last_error`)."""
        try:
            with open(self.console_log, "rb") as handle:
                size = handle.seek(0, 2)
                handle.seek(max(self.log_offset, size - LAST_ERROR_BYTES))
                output = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return None
        return last_error(output)

    def stop(self, timeout: float) -> None:
        self.restart_at = None
        stop_process(self.process, timeout=timeout)


@dataclass
class Backoff:
    """Delays between restarts of a dependency: pure, so the policy is tested on its own.

    The first failure after a stable run (or the first ever) restarts at once; each further
    consecutive failure waits ``initial`` seconds, doubled each time up to ``maximum``. A run that
    lasted ``stable_after`` seconds starts the count again.
    """

    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = STABLE_AFTER_S
    failures: int = 0

    def next_delay(self, ran_for: float) -> float:
        """Record a failure after a run of ``ran_for`` seconds; the delay before the next start."""
        if ran_for >= self.stable_after:
            self.failures = 0
        self.failures += 1
        if self.failures == 1:
            return 0.0
        return float(min(self.initial * 2 ** (self.failures - 2), self.maximum))


@dataclass
class Dependency:
    """A piece of infrastructure the services need (the Hypha server, the S3 store).

    ``spawn`` starts it without waiting and returns the process; ``ready`` is its readiness
    probe (cheap, called every round while it starts). Prints one line when it exits, one per
    failed start and one when it is back.
    """

    name: str
    spawn: Callable[[], subprocess.Popen[bytes]]
    ready: Callable[[], bool]
    log_hint: str = ""
    start_timeout: float = 120.0
    backoff: Backoff = field(default_factory=Backoff)
    process: subprocess.Popen[bytes] | None = None
    state: str = "stopped"  # running | waiting (restart due at restart_at) | starting | stopped
    attempt: int = 0
    started_at: float = 0.0
    down_since: float | None = None
    restart_at: float = 0.0
    restarts: int = 0

    @property
    def up(self) -> bool:
        return self.state == "running"

    def adopt(self, process: subprocess.Popen[bytes] | None) -> None:
        """Watch a process started (and waited for) elsewhere, e.g. at the worker's start."""
        self.process = process
        self.state = "running"
        self.started_at = time.monotonic()

    def _schedule(self, now: float, ran_for: float) -> float:
        delay = self.backoff.next_delay(ran_for)
        self.restart_at = now + delay
        self.state = "waiting"
        return delay

    def check(self, log: Callable[[str], None], may_start: bool = True) -> None:
        """Notice an exit, a start that failed or succeeded; start again when due and
        ``may_start`` (what this one depends on is up)."""
        now = time.monotonic()
        hint = f" (see {self.log_hint})" if self.log_hint else ""
        if self.state == "running":
            if self.process is None or self.process.poll() is None:
                return
            code = self.process.returncode
            self.down_since = now
            delay = self._schedule(now, now - self.started_at)
            self.attempt = self.backoff.failures
            log(
                f"{self.name} exited with code {code}; restarting "
                + (f"in {delay:g} s " if delay else "")
                + f"(attempt {self.attempt}){hint}"
            )
        if self.state == "starting":
            assert self.process is not None
            exited = self.process.poll() is not None
            if not exited and self.ready():
                self.state = "running"
                self.restarts += 1
                down = now - (self.down_since or now)
                log(f"{self.name} back after {down:.1f} s")
                self.down_since = None
                self.attempt = 0
                return
            if not exited and now - self.started_at < self.start_timeout:
                return
            reason = (
                f"exited with code {self.process.returncode}"
                if exited
                else f"not ready within {self.start_timeout:.0f} s"
            )
            stop_process(self.process, timeout=5)
            delay = self._schedule(now, 0.0)  # a failed start never counts as a stable run
            self.attempt = self.backoff.failures
            log(
                f"{self.name} failed to start ({reason}); retrying in {delay:g} s "
                f"(attempt {self.attempt}){hint}"
            )
        if self.state == "waiting" and now >= self.restart_at and may_start:
            self.process = self.spawn()
            self.started_at = time.monotonic()
            self.state = "starting"

    def stop(self) -> None:
        """Stop watching (the owner stops the process itself)."""
        self.state = "stopped"


class Supervisor:
    def __init__(
        self,
        processes: Sequence[ManagedProcess],
        log: Callable[[str], None] | None = None,
        dependencies: Sequence[Dependency] = (),
    ):
        self.processes = list(processes)
        #: Checked first, in order (the store before the server that uses it); their processes
        #: are stopped by their owner, after the services.
        self.dependencies = list(dependencies)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    def start_all(self) -> None:
        for managed in self.processes:
            managed.start()

    def check_all(self) -> bool:
        """Restart what exited; True when a child asked for the whole worker to stop.

        A service that exited while a dependency is down waits for it (a restart could only
        fail, and cluster-svc would start and stop a Ray head each time)."""
        dependencies_up = True
        for dependency in self.dependencies:
            dependency.check(self.log, may_start=dependencies_up)
            dependencies_up = dependencies_up and dependency.up
        for managed in self.processes:
            managed.check(self.log, may_start=dependencies_up)
        return any(managed.stop_requested for managed in self.processes)

    def stop_all(self, timeout: float = 15.0) -> None:
        """Stop the last process first (the gateway: the public service goes before what it
        depends on), then the others in parallel."""
        for dependency in self.dependencies:
            dependency.stop()
        if not self.processes:
            return
        *rest, last = self.processes
        last.stop(timeout)
        threads = [threading.Thread(target=m.stop, args=(timeout,)) for m in rest]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
