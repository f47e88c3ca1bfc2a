"""A Ray head that does not come up, or dies, says why: `ray start`'s own reason, read from its
output, reaches the error and the exit reason. The parsing is checked on output as Ray prints
it; the two real heads check that Ray still prints it that way."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from bioengine_common import ServiceUnavailable, wait_for_port
from bioengine_common.local_stack import HeadOptions, LocalHead, short_temp_dir
from bioengine_common.local_stack._ray_head import RUNTIME_STARTED, head_failure

# As `ray start --head --block` writes them (colour codes included), cut to the lines that count.
_PROCESS_EXITED = """\
2026-12-03 18:13:11,629\tERR scripts.py:1307 -- \x1b[31mSome Ray subprocesses exited unexpectedly:\x1b[39m
2026-12-03 18:13:11,629\tERR scripts.py:87 -- \x1b[31m\x1b[1mraylet\x1b[22m\x1b[26m\x1b[39m\x1b[0m\x1b[2m [exit code=-9]\x1b[22m\x1b[0m
2026-12-03 18:13:11,631\tERR scripts.py:115 -- \x1b[31m----- BEGIN raylet.out tail (exit code(s)=-9 (signal 9)) -----\x1b[39m
2026-12-03 18:13:11,632\tERR scripts.py:122 -- \x1b[31m[2026-12-03 18:13:06,517 I 30630 30630] (raylet) worker_pool.cc:195: Initialized
2026-12-03 18:13:11,633\tERR scripts.py:1315 -- \x1b[31mRemaining processes will be killed.\x1b[39m
"""
_RAISED = """\
2026-12-03 18:11:39,236\tINFO node.py:438 -- Failed to get node info b'RPC error: Deadline Exceeded'
Traceback (most recent call last):
  File "/venv/bin/ray", line 10, in <module>
    sys.exit(main())
Exception: The current node timed out during startup. This could happen because some of the raylet failed to startup or the GCS has become overloaded.
"""


def test_the_reason_is_the_processes_that_exited_else_the_exception_raised():
    assert head_failure(_PROCESS_EXITED) == "Ray processes exited unexpectedly: raylet (exit code -9)"
    assert head_failure(_RAISED) == (
        "Exception: The current node timed out during startup. This could happen because some of "
        "the raylet failed to startup or the GCS has become overloaded."
    )
    started = f"2026-12-03 18:12:11,764\tSUCC scripts.py:1085 -- \x1b[32m{RUNTIME_STARTED}\x1b[39m\n"
    assert head_failure(started) is None
    assert head_failure("") is None


def _processes_of(temp_dir) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.mark.integration
def test_a_head_ray_refuses_to_start_fails_at_once_with_rays_reason(tmp_path):
    head = LocalHead(
        short_temp_dir(tmp_path / "ray"),
        HeadOptions(num_cpus=1, object_store_bytes=10),  # below Ray's minimum
        logging.getLogger("test"),
    )
    with pytest.raises(ServiceUnavailable) as error:
        head.start(timeout=120)
    message = str(error.value)
    # Its exit ended the wait (not the timeout), and Ray's own words say why.
    assert message.startswith("ray start --head exited with code 1: ValueError: "), message
    assert "object store memory" in message and "minimum allowed" in message, message
    assert head.state is None and not head.state_file.exists()
    assert _processes_of(head.temp_dir) == []


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_head_whose_raylet_dies_names_it(tmp_path):
    head = LocalHead(
        short_temp_dir(tmp_path / "ray"),
        HeadOptions(num_cpus=1, object_store_bytes=100 * 1024**2),
        logging.getLogger("test"),
    )
    head.start(timeout=150)
    try:
        assert head.alive()
        assert RUNTIME_STARTED in head.log_file.read_text()  # start() returned once Ray said so
        raylets = [p for p in _processes_of(head.temp_dir) if "raylet/raylet" in " ".join(p.cmdline())]
        assert len(raylets) == 1
        raylets[0].kill()
        deadline = time.monotonic() + 60
        while head.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not head.alive()
        reason = head.exit_reason()
        assert "exited with code 1: Ray processes exited unexpectedly: raylet (exit code -9)" in reason
    finally:
        head.stop()
    assert _processes_of(head.temp_dir) == []


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_head_still_starting_is_on_record_for_a_successor(tmp_path):
    """The state file is written when the head is launched, not once it is up: a service killed
    while its head starts leaves a successor a head it can adopt or stop, never one unknown."""
    temp_dir = short_temp_dir(tmp_path / "ray")
    options = HeadOptions(num_cpus=1, object_store_bytes=100 * 1024**2)
    first = LocalHead(temp_dir, options, logging.getLogger("test"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(first.start, 150)
        try:
            while not first.state_file.exists():
                assert not starting.done(), starting.exception()
                time.sleep(0.01)
            assert RUNTIME_STARTED not in first.log_file.read_text()  # on record before it is up
            assert first.state is not None
            wait_for_port("127.0.0.1", first.state.ports.gcs, 120)  # adopting needs its GCS
            successor = LocalHead(temp_dir, options, logging.getLogger("test"))
            assert successor.adopt() is True
            assert successor.state is not None and successor.state.pid == first.state.pid
            starting.result(timeout=150)
        finally:
            first.stop()
    assert _processes_of(temp_dir) == []


def test_text_in_a_dumped_log_tail_is_never_taken_for_an_exited_process():
    # A raylet.out line (text a worker may have influenced) shaped like an entry of the list.
    forged = _PROCESS_EXITED.replace(
        "Initialized\n",
        "Initialized\n2026-12-03 18:13:11,632\tERR scripts.py:122 -- gcs_server [exit code=0]\n",
    )
    assert head_failure(forged) == "Ray processes exited unexpectedly: raylet (exit code -9)"
