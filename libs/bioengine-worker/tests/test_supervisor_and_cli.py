import sys
import time

import pytest

from bioengine_worker._launcher import WorkerSettings
from bioengine_worker._supervisor import ManagedProcess, Supervisor, last_error
from bioengine_worker.cli import CliError
from bioengine_worker.cli.call import parse_arguments
from bioengine_worker.cli.status import format_cluster, format_status


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


def test_the_exit_line_names_the_error_the_run_ended_with(tmp_path):
    log = tmp_path / "child.log"
    log.write_text("Traceback (most recent call last):\nKeyError: 'from an earlier run'\n")
    managed = _managed(tmp_path, "import socket; socket.socket().connect(('127.0.0.1', 9))")
    messages: list[str] = []
    supervisor = Supervisor([managed], log=messages.append)
    supervisor.start_all()
    deadline = time.monotonic() + 10
    while not messages and time.monotonic() < deadline:
        supervisor.check_all()
        time.sleep(0.05)
    supervisor.stop_all()
    assert (
        "child exited with code 1 after 0 s (ConnectionRefusedError: [Errno 111] Connection refused); "
        in messages[0]
    )
    assert "earlier run" not in messages[0]


def test_last_error_reads_our_log_format_and_plain_tracebacks():
    ours = (
        "2026-12-03 04:21:30 INFO    apps [trace=-] starting\n"
        "2026-12-03 04:21:30 ERROR   apps [trace=-] bioengine-apps failed\n"
        "  | Traceback (most recent call last):\n"
        '  |   File "x.py", line 1, in run\n'
        "  |     bind()\n"
        "  | OSError: [Errno 98] Address already in use\n"
        "WARNING:RPC:Connection lost (Connection closed), rejecting all pending RPC calls\n"
    )
    assert last_error(ours) == "OSError: [Errno 98] Address already in use"
    chained = "Traceback (most recent call last):\n  x\nKeyError: 'a'\n\nDuring handling...\n\n"
    chained += "Traceback (most recent call last):\n  y\nRuntimeError: second\n"
    assert last_error(chained) == "RuntimeError: second"
    record = "2026-12-03 04:21:30 ERROR   cluster [trace=-] ray start failed: exit 1\n"
    assert last_error(record) == "ray start failed: exit 1"
    assert last_error("all fine\n") is None
    hostile = (
        "Traceback (most recent call last):\nValueError: bad \x1b[31m token=abcdefghijklmnopqrstuvwxyz0123\n"
    )
    text = last_error(hostile)
    assert "\x1b" not in text and "\\x1b" in text and "abcdefghijklmnopqrstuvwxyz0123" not in text
    assert len(last_error("Traceback (most recent call last):\nValueError: " + "x" * 1000)) == 300


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


def test_format_cluster_shows_nodes_totals_and_demand():
    gib = 1024**3
    ray_cluster = {
        "mode": "slurm", "ray_version": "2.60.0", "head_address": "10.0.0.1:6379", "ready": True,
        "nodes": {
            "a": {"node_ip": "10.0.0.1", "head": True, "used_cpu": 0, "total_cpu": 0, "used_gpu": 0, "total_gpu": 0,
                  "used_memory": 0, "total_memory": 4 * gib, "used_object_store_memory": 0,
                  "total_object_store_memory": gib, "accelerator_type": "NA", "slurm_job_id": None},
            "b": {"node_ip": "10.0.0.2", "head": False, "used_cpu": 1.5, "total_cpu": 8, "used_gpu": 1, "total_gpu": 1,
                  "used_memory": 2 * gib, "total_memory": 32 * gib, "used_object_store_memory": 0,
                  "total_object_store_memory": 2 * gib, "accelerator_type": "A100", "slurm_job_id": "1234"},
        },
        "cluster": {"used_cpu": 1.5, "total_cpu": 8, "used_gpu": 1, "total_gpu": 1, "used_memory": 2 * gib,
                    "total_memory": 36 * gib, "used_object_store_memory": 0, "total_object_store_memory": 3 * gib},
        "pending_demand": [{"count": 2, "resources": {"CPU": 4.0}, "source": "task_actor"}],
    }  # fmt: skip
    text = format_cluster(ray_cluster)
    assert "Ray cluster (slurm, Ray 2.60.0) at 10.0.0.1:6379: ready" in text
    worker = next(line for line in text.splitlines() if "10.0.0.2" in line)
    assert (
        "worker" in worker
        and "1.5/8" in worker
        and "2.0/32.0 GiB" in worker
        and "A100" in worker
        and "1234" in worker
    )
    assert "TOTAL" in text and "pending: 2 x {'CPU': 4.0} (task_actor)" in text
    assert "NOT READY: boom" in format_cluster({"ready": False, "error": "boom"})
    assert "not reported" in format_cluster(None)
