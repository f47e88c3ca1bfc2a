"""The launcher's supervision of its infrastructure: the restart policy, the restart cycle of a
dependency, and the port check that lets a quickly restarted launcher keep its port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bioengine_common import spawn, stop_process
from bioengine_common.local_stack import port_free
from bioengine_worker._supervisor import Backoff, Dependency, ManagedProcess, Supervisor


def test_backoff_restarts_at_once_then_doubles_to_the_cap_and_forgets_after_a_stable_run():
    backoff = Backoff(initial=1.0, maximum=8.0, stable_after=60.0)
    assert [backoff.next_delay(ran_for=0.5) for _ in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.failures == 6
    # A run long enough to count as stable: the next failure is a first failure again.
    assert backoff.next_delay(ran_for=61.0) == 0.0
    assert backoff.next_delay(ran_for=3.0) == 1.0
    assert Backoff().next_delay(ran_for=0.0) == 0.0  # the very first failure too


def _script(tmp_path: Path, name: str, code: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    return [sys.executable, str(path)]


def _run_until(supervisor: Supervisor, done, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        supervisor.check_all()
        time.sleep(0.05)


def test_a_killed_dependency_is_restarted_and_announced_when_ready(tmp_path):
    # "Ready" is a marker file the child writes after a short start-up, like a readiness probe.
    marker = tmp_path / "ready"
    argv = _script(
        tmp_path,
        "dep",
        f"import pathlib, time\ntime.sleep(0.3)\npathlib.Path({str(marker)!r}).write_text('x')\ntime.sleep(60)\n",
    )
    spawned: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        marker.unlink(missing_ok=True)
        spawned.append(spawn(argv))
        return spawned[-1]

    dependency = Dependency("hypha server", start, marker.exists, log_hint="server.log")
    dependency.adopt(start())
    messages: list[str] = []
    supervisor = Supervisor([], log=messages.append, dependencies=[dependency])
    try:
        _run_until(supervisor, marker.exists)
        supervisor.check_all()
        assert dependency.up and messages == []
        spawned[0].kill()
        _run_until(supervisor, lambda: dependency.restarts == 1)
        assert dependency.up and len(spawned) == 2 and spawned[1].poll() is None
        assert messages[0] == "hypha server exited with code -9; restarting (attempt 1) (see server.log)"
        assert messages[1].startswith("hypha server back after ") and messages[1].endswith(" s")
    finally:
        for process in spawned:
            stop_process(process, timeout=2)


def test_a_dependency_that_keeps_failing_backs_off_and_holds_back_the_services(tmp_path):
    crash = _script(tmp_path, "crash", "import sys\nsys.exit(5)\n")
    spawned: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        spawned.append(spawn(crash))
        return spawned[-1]

    dependency = Dependency("seaweedfs", start, lambda: False, backoff=Backoff(initial=0.2, maximum=0.4))
    dependency.adopt(start())
    service = ManagedProcess(
        name="cluster",
        argv=_script(tmp_path, "svc", "import sys\nsys.exit(1)\n"),
        environment=dict,
        console_log=tmp_path / "svc.log",
        backoff_initial=0.05,
    )
    messages: list[str] = []
    supervisor = Supervisor([service], log=messages.append, dependencies=[dependency])
    service.start()
    _run_until(supervisor, lambda: dependency.attempt >= 4)
    # The service's own exit may be reported before or after the dependency's (both exit at once).
    seaweedfs = [m for m in messages if m.startswith("seaweedfs")]
    assert seaweedfs[0].startswith("seaweedfs exited with code 5; restarting (attempt 1)")
    failed = [m for m in messages if m.startswith("seaweedfs failed to start")]
    assert failed[:3] == [
        "seaweedfs failed to start (exited with code 5); retrying in 0.2 s (attempt 2)",
        "seaweedfs failed to start (exited with code 5); retrying in 0.4 s (attempt 3)",
        "seaweedfs failed to start (exited with code 5); retrying in 0.4 s (attempt 4)",
    ]
    assert dependency.backoff.failures >= 4 and not dependency.up
    # The service exited meanwhile; it is not restarted while its dependency is down.
    assert service.restart_at is not None and service.restarts == 0
    assert "cluster exited with code 1" in "\n".join(messages)
    supervisor.stop_all(timeout=2)


def test_a_failed_start_never_resets_the_backoff():
    backoff = Backoff(initial=1.0, maximum=30.0, stable_after=60.0)
    dependency = Dependency("x", lambda: None, lambda: False, backoff=backoff)  # type: ignore[arg-type, return-value]
    dependency.state = "waiting"
    assert dependency._schedule(time.monotonic(), 0.0) == 0.0
    assert dependency._schedule(time.monotonic(), 0.0) == 1.0
    assert dependency._schedule(time.monotonic(), 0.0) == 2.0


def _time_wait_on(port: int) -> None:
    """Leave ``127.0.0.1:port`` with a connection in TIME_WAIT and nothing listening: the state a
    server's port is in right after the server stopped (it closed its connections first)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    time.sleep(0.1)
    client.close()
    listener.close()


def test_a_port_held_only_by_time_wait_counts_as_free_one_listened_on_does_not():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _time_wait_on(port)
    # The old check (a plain bind) calls such a port taken: that is what moved the server.
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    assert port_free(port)
    with socket.socket() as listening:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", port))
        listening.listen()
        assert not port_free(port)
