"""A service started beside its Hypha server (as bioengine-worker starts them) waits for the
server to listen (--server-wait), and only for that: a real service process and a real server
started after it on the port it was given."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from bioengine_common import connect
from bioengine_common.errors import ServiceUnavailable
from bioengine_common.local_stack import SERVER_MAIN, EmbeddedHypha, find_hypha_project
from bioengine_common.testing import ADMIN_USER, TEST_WORKSPACE, launch_service, wait_for_service

pytestmark = pytest.mark.integration


@pytest.fixture
def unstarted_server(tmp_path: Path):
    """A server whose port and tokens are known, not started yet."""
    server = EmbeddedHypha(tmp_path / "hypha", TEST_WORKSPACE, s3=False, log=lambda message: None)
    server.prepare()
    yield server
    server.stop()


async def test_a_service_started_before_its_server_registers_once_the_server_listens(
    unstarted_server: EmbeddedHypha, tmp_path: Path
):
    service = launch_service("gateway", unstarted_server, tmp_path / "worker", "--server-wait", "120")
    try:
        await asyncio.sleep(3)  # the service is up and trying; nothing listens yet
        assert service.alive(), service.console_output()[-3000:]
        await asyncio.to_thread(unstarted_server.start_server)
        admin = await connect(
            unstarted_server.url,
            workspace=TEST_WORKSPACE,
            token=unstarted_server.mint(ADMIN_USER, "admin"),
        )
        try:
            await wait_for_service(admin, "bioengine-worker", timeout=60)
        finally:
            await admin.disconnect()
    finally:
        service.stop()
    log = (tmp_path / "worker" / "logs" / "gateway.log").read_text()
    assert log.count("Waiting up to 120 s for the Hypha server") == 1, log[-3000:]
    # hypha-rpc's error line for each refused try is kept out while waiting.
    assert "Failed to connect" not in log + service.console_output()


async def test_without_a_server_the_service_gives_up_after_server_wait(
    unstarted_server: EmbeddedHypha, tmp_path: Path
):
    started = time.monotonic()
    service = launch_service("gateway", unstarted_server, tmp_path / "worker", "--server-wait", "2")
    code = await asyncio.to_thread(service.process.wait, 60)
    assert code == 3, service.console_output()[-3000:]
    assert time.monotonic() - started >= 2
    assert "Cannot reach the Hypha server" in service.console_output()


async def test_a_server_that_refuses_the_token_fails_at_once(unstarted_server: EmbeddedHypha, tmp_path: Path):
    await asyncio.to_thread(unstarted_server.start_server)
    service = launch_service(
        "gateway", unstarted_server, tmp_path / "worker", "--server-wait", "600", token="not-a-jwt"
    )
    code = await asyncio.to_thread(service.process.wait, 60)
    assert code == 3, service.console_output()[-3000:]
    assert "refused the connection" in service.console_output()


def test_a_server_that_fails_to_start_leaves_no_store_running(tmp_path: Path):
    """The store starts first; when the server then fails (here its environment's Python is
    given a broken start-up script), start() stops the store too before raising: no SeaweedFS
    process outlives the failed start."""
    project = tmp_path / "project"
    shutil.copytree(find_hypha_project(), project, ignore=shutil.ignore_patterns(".venv"))
    (project / ".venv").symlink_to(find_hypha_project() / ".venv")
    (project / SERVER_MAIN).write_text("raise SystemExit(4)\n")
    server = EmbeddedHypha(
        tmp_path / "hypha", TEST_WORKSPACE, s3=True, project_dir=project, log=lambda m: None
    )
    server.prepare = lambda: None  # type: ignore[method-assign]  # the environment is the real one's
    stores: list[int] = []
    spawn_store = server.spawn_store

    def spawn_and_note() -> subprocess.Popen[bytes]:
        store = spawn_store()
        stores.append(store.pid)
        return store

    server.spawn_store = spawn_and_note  # type: ignore[method-assign]
    try:
        with pytest.raises(ServiceUnavailable, match="Hypha server exited with code 4"):
            server.start(timeout=60)
        assert len(stores) == 1 and server.store_process is None
        store_gone = (
            not psutil.pid_exists(stores[0]) or psutil.Process(stores[0]).status() == psutil.STATUS_ZOMBIE
        )
        assert store_gone, f"SeaweedFS (pid {stores[0]}) still runs after the failed start"
    finally:
        server.stop()  # only for a failed assertion above: start() stopped everything


def test_the_server_port_is_held_from_its_choice_to_the_end(tmp_path: Path):
    """The port is bound when the server is planned, before anything starts: no other program
    can take it while the store starts or while the server restarts; a taken port is refused
    at once, by name."""
    server = EmbeddedHypha(tmp_path / "hypha", TEST_WORKSPACE, s3=False, log=lambda m: None)
    try:
        with socket.socket() as intruder, pytest.raises(OSError, match="Address already in use"):
            intruder.bind(("127.0.0.1", server.port))
        with socket.create_server(("127.0.0.1", 0)) as holder:  # a port another server listens on
            taken = holder.getsockname()[1]
            with pytest.raises(ServiceUnavailable, match=rf"port {taken} for the Hypha server is taken"):
                EmbeddedHypha(tmp_path / "other", TEST_WORKSPACE, port=taken, s3=False, log=lambda m: None)
        server.start(timeout=90)
        assert server.server_ready()
        server.stop_server()  # as when the server dies: the port stays ours
        with socket.socket() as intruder, pytest.raises(OSError, match="Address already in use"):
            intruder.bind(("127.0.0.1", server.port))
        server.start_server(timeout=90)  # the same port, served again
        assert server.server_ready()
    finally:
        server.stop()
    with socket.socket() as after:  # stop() lets go of the port
        after.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        after.bind(("127.0.0.1", server.port))


def _store_with_port_taken(
    tmp_path: Path, starts_taken: int
) -> tuple[EmbeddedHypha, list[int], list[str], list[socket.socket]]:
    """A store whose chosen volume port another program binds just before SeaweedFS starts, on
    its first ``starts_taken`` starts: the window between choosing a port and binding it.
    Returns the server, the ports taken, its log lines and the sockets holding the ports."""
    logged: list[str] = []
    server = EmbeddedHypha(tmp_path / "hypha", TEST_WORKSPACE, s3=True, log=logged.append)
    taken: list[int] = []
    holders: list[socket.socket] = []
    spawn_store = server.spawn_store

    def take_then_spawn() -> subprocess.Popen[bytes]:
        if len(taken) < starts_taken:
            ports = server._store_ports or server._choose_store_ports()
            server._store_ports = ports
            holder = socket.socket()
            holder.bind(("127.0.0.1", ports["volume"]))
            holder.listen()
            holders.append(holder)
            taken.append(ports["volume"])
        return spawn_store()

    server.spawn_store = take_then_spawn  # type: ignore[method-assign]
    return server, taken, logged, holders


def test_a_store_port_taken_before_seaweedfs_binds_it_is_replaced(tmp_path: Path):
    server, taken, logged, holders = _store_with_port_taken(tmp_path, starts_taken=1)
    try:
        server.start_store(timeout=60)
        assert server.store_ready()
        assert server._store_ports is not None and server._store_ports["volume"] != taken[0]
        # The new ports are the ones remembered for the next start.
        assert f'"volume": {server._store_ports["volume"]}' in server._store_ports_file.read_text()
        (line,) = logged
        assert "address already in use" in line and str(taken[0]) in line, line
        assert "starting it again on new ports" in line
    finally:
        for holder in holders:
            holder.close()
        server.stop()


def test_a_store_whose_ports_are_always_taken_fails_naming_the_port(tmp_path: Path):
    server, taken, _, holders = _store_with_port_taken(tmp_path, starts_taken=3)
    try:
        with pytest.raises(ServiceUnavailable, match="address already in use") as failure:
            server.start_store(timeout=60)
        assert len(taken) == 3 and len(set(taken)) == 3  # new ports each time
        assert str(taken[-1]) in str(failure.value) and "seaweedfs.log" in str(failure.value)
    finally:
        for holder in holders:
            holder.close()
        server.stop()
