"""`bioengine-worker --server-url URL --workspace WS` with a token: no embedded server."""

import asyncio
import os
import subprocess
import sys
import time

import psutil
import pytest

from bioengine_common import connect
from bioengine_common.testing import wait_for_service
from bioengine_worker.testing import WorkerProcess, faults

pytestmark = pytest.mark.integration


@pytest.fixture
def external_launcher(hypha_server, ray_head, tmp_path):
    token = hypha_server.mint("facility-operator", "read_write")
    worker = WorkerProcess(
        tmp_path, "--server-url", hypha_server.url, "--workspace", hypha_server.workspace,
        "--mode", "external-cluster", "--head-address", ray_head.address,
        env={"BIOENGINE_TOKEN": token},
    )  # fmt: skip
    yield worker, token
    worker.stop()


async def test_the_launcher_uses_an_existing_server(hypha_server, ray_head, external_launcher):
    worker, token = external_launcher
    launcher, output = worker.process, worker.output
    client = await connect(hypha_server.url, workspace=hypha_server.workspace, token=token)
    try:
        await wait_for_service(client, "bioengine-worker", timeout=60)
        children = worker.descendants()
        # Nothing embedded: found as the chaos tests find the embedded server and store.
        assert faults.processes(worker, "hypha") == [] and faults.processes(worker, "store") == []
        gateway = await client.get_service("bioengine-worker")
        deadline = time.monotonic() + 30
        while not (status := await gateway.get_status())["is_ready"] and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert status["is_ready"] and status["worker_mode"] == "external-cluster"
        assert await gateway.check_access() is True  # the token's owner is an admin
        # The launcher prints its banner once it has seen is_ready itself (its own poll).
        deadline = time.monotonic() + 30
        while "the owner of --token" not in (text := output.read_text()) and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert "the owner of --token (facility-operator)" in text and token not in text

        # stop_worker: the public service goes away, the launcher stops everything and exits;
        # the external Ray cluster is someone else's and keeps running.
        service_id = (await client.get_service_info("bioengine-worker"))["id"]
        assert await gateway.stop_worker() is None
        assert launcher.wait(60) == 0
        remaining = [s["id"] for s in await client.list_services()]
        assert service_id not in remaining
        assert not [sid for sid in remaining if sid.endswith((":bioengine-cluster", ":bioengine-apps"))]
        assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert psutil.pid_exists(ray_head.pid)
        assert "stop_worker was called" in output.read_text()
    finally:
        await client.disconnect()


def test_server_url_without_token_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOENGINE_")}
    out = subprocess.run(
        [sys.executable, "-m", "bioengine_worker", "--server-url", "http://127.0.0.1:9", "--workspace-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0 and "--server-url needs --token" in out.stderr
