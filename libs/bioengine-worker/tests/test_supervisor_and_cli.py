import sys
import time

import pytest

from bioengine_worker._launcher import WorkerSettings
from bioengine_worker._supervisor import ManagedProcess, Supervisor
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
