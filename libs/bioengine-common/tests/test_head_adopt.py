"""Adopting a running Ray head: one of ours whose GCS never answers is stopped, not left running
beside the head that replaces it; a process that only got the PID is never touched. Real
processes, no Ray (the GCS port simply has no listener)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import psutil
import pytest

from bioengine_common import free_port
from bioengine_common.local_stack import _ray_head
from bioengine_common.local_stack._ray_head import HeadOptions, HeadState, LocalHead, RayPorts


def _state(pid: int, temp_dir: str) -> HeadState:
    ports = {name: free_port() for name in RayPorts.model_fields}
    return HeadState(
        pid=pid, temp_dir=temp_dir, node_ip="127.0.0.1", ports=RayPorts(**ports),
        started_at=time.time(), ray_version="test",
    )  # fmt: skip


def _look_alike(*argv: str) -> subprocess.Popen[bytes]:
    """A process whose command line reads like ``argv`` (its GCS port: nobody listens)."""
    code = "import time; time.sleep(120)"
    return subprocess.Popen([sys.executable, "-c", code, *argv], start_new_session=True)


@pytest.fixture(autouse=True)
def short_wait(monkeypatch):
    monkeypatch.setattr(_ray_head, "ADOPT_WAIT_S", 0.5)


def test_a_head_of_ours_whose_gcs_never_answers_is_stopped_not_left_running(tmp_path):
    process = _look_alike("ray", "start", "--head", "--block", f"--temp-dir={tmp_path}")
    try:
        head = LocalHead(tmp_path, HeadOptions(), logging.getLogger("test"))
        head.state_file.write_text(_state(process.pid, str(tmp_path)).model_dump_json())
        assert head.adopt() is False
        assert process.wait(10) is not None  # stopped: nothing of it keeps running
        assert not head.state_file.exists() and head.state is None
    finally:
        process.kill()
        process.wait()


def test_a_process_that_only_got_the_pid_is_left_alone(tmp_path):
    other = _look_alike("ray", "start", "--head", "--temp-dir=/somewhere/else")
    try:
        head = LocalHead(tmp_path, HeadOptions(), logging.getLogger("test"))
        head.state_file.write_text(_state(other.pid, str(tmp_path)).model_dump_json())
        assert head.adopt() is False
        time.sleep(0.3)
        assert other.poll() is None and psutil.Process(other.pid).is_running()
    finally:
        other.kill()
        other.wait()
