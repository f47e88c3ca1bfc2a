"""The gateway with some services missing: it keeps answering and shows them down."""

import asyncio
import time

import pytest

from bioengine_common import connect
from bioengine_common.testing import ADMIN_USER, wait_for_service

pytestmark = pytest.mark.integration


async def _status_when(gateway, predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        status = await gateway.get_status()
        if predicate(status) or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.3)


async def test_status_shows_missing_services_down_with_the_error(
    hypha_server, ray_head, start_service, admin_client
):
    start_service("cluster", hypha_server, "--mode", "external-cluster", "--head-address", ray_head.address)
    start_service("gateway", hypha_server, "--status-interval", "0.5")
    await wait_for_service(admin_client, "bioengine-worker")
    gateway = await admin_client.get_service("bioengine-worker")
    status = await _status_when(gateway, lambda s: s["services"]["cluster"]["up"])
    services = status["services"]
    assert services["cluster"]["up"] is True and services["cluster"]["status"]["mode"] == "external-cluster"
    assert status["worker_mode"] == "external-cluster"
    for name in ("apps", "datasets"):
        assert services[name]["up"] is False
        assert "not found" in services[name]["error"].lower()
    assert status["is_ready"] is False
    assert ADMIN_USER in status["admin_users"]


async def test_check_access_and_admin_methods(hypha_server, start_service, admin_client):
    start_service("gateway", hypha_server)
    info = await wait_for_service(admin_client, "bioengine-worker")
    assert info["config"]["visibility"] == "public"
    gateway = await admin_client.get_service("bioengine-worker")
    assert await gateway.check_access() is True
    logs = await gateway.get_logs(tail=5)
    assert set(logs) == {"gateway", "cluster", "apps", "datasets"}
    assert logs["cluster"][0].startswith("unavailable:")

    anonymous = await connect(hypha_server.url)
    try:
        public = await anonymous.get_service(f"{hypha_server.workspace}/bioengine-worker")
        assert await public.check_access() is False
        status = await public.get_status()
        assert "admin_users" not in status  # admin identities are not shown to everyone
        with pytest.raises(Exception, match="not authorized to access 'get_logs'"):
            await public.get_logs(tail=5)
    finally:
        await anonymous.disconnect()
