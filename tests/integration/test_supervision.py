"""The launcher supervises what it started: the embedded Hypha server and SeaweedFS too.

A one-command stack runs; the server, then the store, is killed with SIGKILL. Each comes back on
its ports with its state (the artifact written before is read after), with one line printed
when it dies and one when it is back, and the services are not restarted for it: they reconnect
by themselves. Last, the whole launcher is restarted at once on the same port, with the port
left in TIME_WAIT, and keeps the port, the store's ports and the artifacts.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import psutil
import pytest

from bioengine_common import connect
from bioengine_worker.testing import WorkerProcess, faults

pytestmark = pytest.mark.integration

COLLECTION = "supervision-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """The stack under test, in a list: the last test replaces it with a relaunched one."""
    directory = tmp_path_factory.mktemp("supervised")
    port = _free_port()
    running = [WorkerProcess(directory, "--mode", "single-machine", "--hypha-port", str(port))]
    try:
        running[0].wait_ready()
        yield running
    finally:
        running[-1].stop()


async def _admin(stack):
    c = stack.connection
    return await connect(c["server_url"], workspace=c["workspace"], token=c["token"])


async def _write_artifact(stack, alias: str, content: bytes) -> None:
    server = await _admin(stack)
    try:
        manager = await server.get_service("public/artifact-manager")
        try:
            collection = await manager.read(f"{stack.connection['workspace']}/{COLLECTION}")
        except Exception:
            collection = await manager.create(type="collection", alias=COLLECTION, manifest={"name": "t"})
        artifact = await manager.create(
            parent_id=collection["id"], alias=alias, manifest={"name": alias}, stage=True
        )
        async with httpx.AsyncClient() as http:
            url = await manager.put_file(artifact["id"], file_path="data.bin")
            assert (await http.put(url, content=content)).status_code == 200
        await manager.commit(artifact["id"])
    finally:
        await server.disconnect()


async def _read_artifact(stack, alias: str) -> bytes:
    server = await _admin(stack)
    try:
        manager = await server.get_service("public/artifact-manager")
        url = await manager.get_file(f"{stack.connection['workspace']}/{alias}", file_path="data.bin")
        async with httpx.AsyncClient() as http:
            response = await http.get(url)
        assert response.status_code == 200, response.text
        return response.content
    finally:
        await server.disconnect()


async def _gateway_status(stack, timeout: float = 180.0) -> dict:
    """Poll ``get_status`` through fresh connections until the gateway answers and sees every
    service up: they are then registered again on the (restarted) server. (The worker's
    readiness also waits for the Ray head, which these faults do not touch.)"""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            server = await _admin(stack)
            try:
                gateway = await server.get_service("bioengine/bioengine-worker")
                status = await asyncio.wait_for(gateway.get_status(), 10)
            finally:
                await server.disconnect()
            if set(status["services"]) == {"cluster", "apps", "datasets"} and all(
                s["up"] for s in status["services"].values()
            ):
                return status
            last = status
        except Exception as exc:  # the server is still coming back
            last = exc
        await asyncio.sleep(0.5)
    raise AssertionError(f"the gateway did not report everything up within {timeout:.0f} s: {last}")


def _child(stack, role: str) -> psutil.Process:
    """The one live process of ``role`` ("hypha", "store"...) in ``stack``."""
    (process,) = faults.processes(stack, role)
    return process


def _service_pids(status: dict) -> dict[str, int]:
    return {name: s["status"]["pid"] for name, s in status["services"].items()}


def _wait_for_line(stack, line: str, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while line not in stack.text():
        assert time.monotonic() < deadline, f"{line!r} not printed:\n{stack.text()}"
        time.sleep(0.1)
    return time.monotonic()


async def test_a_killed_hypha_server_comes_back_on_its_port_with_its_state(stacks):
    stack = stacks[-1]
    before = await _gateway_status(stack)
    await _write_artifact(stack, "before-server-kill", b"written before the server died")
    server = _child(stack, "hypha")
    store = _child(stack, "store")

    server.kill()
    killed = time.monotonic()
    _wait_for_line(stack, "hypha server exited with code -9; restarting (attempt 1)")
    back = _wait_for_line(stack, "hypha server back after ")
    after = await _gateway_status(stack)
    answered = time.monotonic()
    print(
        f"\nhypha server killed: back in {back - killed:.1f} s, gateway status in {answered - killed:.1f} s"
    )

    # Same port (the connection file's URL works), a new process, reaped: no zombie left.
    new_server = _child(stack, "hypha")
    assert new_server.pid != server.pid
    assert new_server.environ()["HYPHA_PORT"] == stack.connection["server_url"].rsplit(":", 1)[1]
    assert not any(p.status() == psutil.STATUS_ZOMBIE for p in stack.descendants())
    # Same state: the artifact (database + store) and the tokens (JWT secret) outlive it.
    assert await _read_artifact(stack, "before-server-kill") == b"written before the server died"
    # The store and the services were left alone: they reconnected by themselves.
    assert _child(stack, "store").pid == store.pid
    assert _service_pids(after) == _service_pids(before)
    for name in ("cluster", "apps", "datasets", "gateway"):
        assert f"{name} exited" not in stack.text(), stack.text()


async def test_a_killed_store_comes_back_and_artifacts_work_again(stacks):
    stack = stacks[-1]
    await _gateway_status(stack)
    await _write_artifact(stack, "before-store-kill", b"written before the store died")
    store = _child(stack, "store")
    server = _child(stack, "hypha")
    s3_port = json.loads((stack.dir / "seaweedfs" / "ports.json").read_text())["s3"]
    assert f"-s3.port={s3_port}" in store.cmdline()

    store.kill()
    killed = time.monotonic()
    _wait_for_line(stack, "seaweedfs exited with code -9; restarting (attempt 1)")
    back = _wait_for_line(stack, "seaweedfs back after ")
    # Readable at once when announced back: old artifacts, and a new one written.
    assert await _read_artifact(stack, "before-store-kill") == b"written before the store died"
    assert await _read_artifact(stack, "before-server-kill") == b"written before the server died"
    await _write_artifact(stack, "after-store-kill", b"written after")
    assert await _read_artifact(stack, "after-store-kill") == b"written after"
    usable = time.monotonic()
    print(f"\nseaweedfs killed: back in {back - killed:.1f} s, artifacts usable in {usable - killed:.1f} s")

    new_store = _child(stack, "store")
    assert new_store.pid != store.pid and f"-s3.port={s3_port}" in new_store.cmdline()
    # The server did not need a restart to use its store again.
    assert _child(stack, "hypha").pid == server.pid
    assert stack.text().count("hypha server exited") == 1  # only the previous test's kill


def _leave_time_wait(port: int) -> None:
    """A connection in TIME_WAIT on ``port``, as a server leaves behind when it stops."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()
    time.sleep(0.1)
    client.close()
    listener.close()


async def test_a_quick_relaunch_keeps_the_ports_and_the_state(stacks):
    stack = stacks[-1]
    url = stack.connection["server_url"]
    port = int(url.rsplit(":", 1)[1])
    store_ports = json.loads((stack.dir / "seaweedfs" / "ports.json").read_text())
    assert stack.stop() == 0
    _leave_time_wait(port)
    relaunched = WorkerProcess(stack.dir, "--mode", "single-machine", "--hypha-port", str(port))
    stacks.append(relaunched)
    relaunched.wait_ready()
    assert relaunched.connection["server_url"] == url
    assert "is taken" not in relaunched.text(), relaunched.text()
    assert json.loads((stack.dir / "seaweedfs" / "ports.json").read_text()) == store_ports
    store = _child(relaunched, "store")
    assert f"-master.port={store_ports['master']}" in store.cmdline()
    await _gateway_status(relaunched)
    assert await _read_artifact(relaunched, "before-server-kill") == b"written before the server died"
    assert await _read_artifact(relaunched, "after-store-kill") == b"written after"
