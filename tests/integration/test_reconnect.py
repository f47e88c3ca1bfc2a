"""A Hypha server restart on the same port: every service is registered again within 15 s."""

import time

import pytest

from bioengine_common import connect
from bioengine_common.testing import ADMIN_USER, SERVICE_MODULES, wait_for_service

pytestmark = pytest.mark.integration


async def test_services_reregister_after_a_server_restart(hypha_server_factory, start_service):
    server = hypha_server_factory()
    processes = {name: start_service(name, server) for name in SERVICE_MODULES}
    admin_token = server.mint(ADMIN_USER, "admin")
    client = await connect(server.url, workspace=server.workspace, token=admin_token)
    before = {name: (await wait_for_service(client, sid))["id"] for name, (_, sid) in SERVICE_MODULES.items()}
    await client.disconnect()

    server.stop_server()
    server.start_server()
    restarted = time.monotonic()
    client = await connect(server.url, workspace=server.workspace, token=admin_token)
    try:
        for name, (_, service_id) in SERVICE_MODULES.items():
            remaining = 15.0 - (time.monotonic() - restarted)
            info = await wait_for_service(client, service_id, timeout=max(remaining, 0.1))
            assert info["id"] == before[name]  # the same process, re-registered
            assert processes[name].alive(), processes[name].console_output()
        gateway = await client.get_service("bioengine-worker")
        assert (await gateway.get_status())["client_id"] in before["gateway"]
    finally:
        await client.disconnect()


async def test_a_service_exits_nonzero_when_the_server_is_gone_for_good(hypha_server_factory, start_service):
    server = hypha_server_factory()
    service = start_service("datasets", server, "--reconnect-timeout", "3")
    client = await connect(server.url, workspace=server.workspace, token=server.mint(ADMIN_USER, "admin"))
    await wait_for_service(client, "bioengine-datasets")
    await client.disconnect()
    server.stop_server()
    assert service.process.wait(60) == 3, service.console_output()
    assert "ConnectionLost" in service.console_output()
