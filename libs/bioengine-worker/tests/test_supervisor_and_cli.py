import sys
import time

import pytest

from bioengine_worker._cli import CliError, format_status, parse_arguments
from bioengine_worker._launcher import WorkerSettings
from bioengine_worker._supervisor import ManagedProcess, Supervisor


def _managed(tmp_path, code: str) -> ManagedProcess:
    return ManagedProcess(
        name="child",
        argv=[sys.executable, "-c", code],
        environment=dict,
        console_log=tmp_path / "child.log",
        backoff_initial=0.2,
        backoff_max=0.8,
    )


def test_a_crashing_child_is_restarted_with_growing_backoff(tmp_path):
    managed = _managed(tmp_path, "import sys; print('crash'); sys.exit(7)")
    messages: list[str] = []
    supervisor = Supervisor([managed], log=messages.append)
    supervisor.start_all()
    first_pid = managed.process.pid
    deadline = time.monotonic() + 10
    while managed.restarts < 3 and time.monotonic() < deadline:
        supervisor.check_all()
        time.sleep(0.05)
    assert managed.restarts == 3
    assert managed.process.pid != first_pid
    assert sum("restarting in" in m for m in messages) == 3
    assert managed.backoff == 0.8  # doubled up to the cap
    assert "exited with code 7" in messages[0]
    assert (tmp_path / "child.log").read_text().count("crash") >= 3
    supervisor.stop_all()


def test_stop_all_stops_running_children(tmp_path):
    children = [_managed(tmp_path, "import time; time.sleep(60)") for _ in range(3)]
    supervisor = Supervisor(children, log=lambda m: None)
    supervisor.start_all()
    supervisor.stop_all(timeout=5)
    assert all(c.process.poll() is not None for c in children)
    supervisor.check_all()  # a stopped child is not restarted
    assert all(c.restarts == 0 for c in children)


def test_parse_arguments():
    assert parse_arguments(["tail=5", "name=abc", 'opts={"a": [1]}', "flag=true"]) == {
        "tail": 5,
        "name": "abc",
        "opts": {"a": [1]},
        "flag": True,
    }
    for bad in (["novalue"], ["=3"], ["bad-name=1"]):
        with pytest.raises(CliError):
            parse_arguments(bad)


def test_format_status_shows_down_services_with_their_error():
    status = {
        "is_ready": False,
        "worker_mode": "single-machine",
        "bioengine_version": "0.1.0",
        "service_uptime": 3725,
        "services": {
            "cluster": {"up": True, "status": {"version": "0.1.0", "uptime": 65, "client_id": "cluster-1"}},
            "apps": {"up": False, "error": "KeyError: 'Service not found'"},
        },
    }
    text = format_status(status, "bioengine/bioengine-worker")
    assert "NOT READY" in text and "1h 2m" in text
    assert "cluster-1" in text and "1m 5s" in text
    assert "DOWN" in text and "Service not found" in text


def test_worker_settings_reject_bad_ports():
    with pytest.raises(ValueError):
        WorkerSettings(hypha_port=70000)
