"""bioengine-cluster alone against a real Hypha server."""

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from bioengine_common import connect
from bioengine_common.testing import wait_for_service

pytestmark = pytest.mark.integration


def test_help_lists_the_mode_flag():
    out = subprocess.run(
        [sys.executable, "-m", "bioengine_cluster", "--help"], capture_output=True, text=True, check=True
    )
    assert "--mode" in out.stdout and "BIOENGINE_SERVER_URL" in out.stdout


def test_bad_mode_is_a_usage_error():
    out = subprocess.run(
        [sys.executable, "-m", "bioengine_cluster", "--mode", "cloud"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--mode" in out.stderr


async def test_registers_and_reports_itself(hypha_server, ray_head, start_service, admin_client):
    service = start_service(
        "cluster", hypha_server, "--mode", "external-cluster", "--head-address", ray_head.address
    )
    info = await wait_for_service(admin_client, "bioengine-cluster")
    assert info["config"]["visibility"] == "protected"
    cluster = await admin_client.get_service("bioengine-cluster")
    status = await cluster.get_status()
    while not status["ready"]:
        await asyncio.sleep(0.3)
        status = await cluster.get_status()
    assert status["pid"] == service.pid
    assert status["ready"] is True and status["mode"] == "external-cluster"
    assert status["version"] == "0.1.0" and status["uptime"] >= 0
    assert info["id"].endswith(f"{status['client_id']}:bioengine-cluster")


async def test_sigterm_stops_it_cleanly_and_unregisters(hypha_server, ray_head, start_service, admin_client):
    service = start_service(
        "cluster", hypha_server, "--mode", "external-cluster", "--head-address", ray_head.address
    )
    info = await wait_for_service(admin_client, "bioengine-cluster")
    os.kill(service.pid, signal.SIGTERM)
    assert service.process.wait(15) == 0
    services = await admin_client.list_services()
    assert info["id"] not in [s["id"] for s in services]


async def test_get_logs_is_for_admins_only(hypha_server, start_service, admin_client):
    start_service("cluster", hypha_server, "--mode", "external-cluster", "--head-address", "127.0.0.1:1")
    await wait_for_service(admin_client, "bioengine-cluster")
    lines = await (await admin_client.get_service("bioengine-cluster")).get_logs(tail=5)
    assert any("Registered service" in line for line in lines)
    bob = await connect(hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("bob"))
    try:
        with pytest.raises(Exception, match="not authorized to access 'get_logs'"):
            await (await bob.get_service("bioengine-cluster")).get_logs(tail=5)
    finally:
        await bob.disconnect()
