"""`bioengine-worker` as a child process, as a user would run it: for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from .._launcher import CONNECTION_FILE, LOGS_DIR, READY_LINE


class WorkerProcess:
    """Start the launcher with ``args``, output in ``<workspace_dir>/launcher.out``."""

    def __init__(self, workspace_dir: Path, *args: str, env: Mapping[str, str] | None = None):
        self.dir = workspace_dir
        self.output = workspace_dir / "launcher.out"
        workspace_dir.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("BIOENGINE_")}
        self.started = time.monotonic()
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bioengine_worker", "--workspace-dir", str(workspace_dir), *args],
                stdout=out, stderr=subprocess.STDOUT, env={**base, **(env or {})},
            )  # fmt: skip
        self.connection: dict[str, Any] = {}

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def service_errors(self, last: int = 5) -> str:
        """The last ``last`` ERROR lines of each service's log (``<workspace>/logs/<name>.log``): why a
        worker that did not get ready did not, in a failed test's message."""
        parts = []
        for log in sorted((self.dir / LOGS_DIR).glob("*.log")):
            if log.name.endswith(".console.log"):
                continue
            lines = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
            if lines:
                parts.append(f"--- {log.name}:\n" + "\n".join(line[:1000] for line in lines[-last:]))
        return "\n".join(parts)

    def wait_ready(self, timeout: float = 180.0) -> dict[str, Any]:
        """Block until the launcher printed that the worker is ready; return its connection file."""
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.text():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"bioengine-worker exited with code {self.process.returncode}:\n{self.text()}"
                    f"\n{self.service_errors()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"bioengine-worker not ready within {timeout:.0f} s:\n{self.text()}\n{self.service_errors()}"
                )
            time.sleep(0.05)
        connection_file = self.dir / CONNECTION_FILE
        self.connection = json.loads(connection_file.read_text()) if connection_file.exists() else {}
        return self.connection

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, timeout: float = 90.0) -> int:
        """Ctrl-C, as a user would; SIGKILL only if it does not end in ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()
