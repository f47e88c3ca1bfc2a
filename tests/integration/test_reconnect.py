"""Hypha outages under running services: nothing exits, everything comes back by itself.

The services keep their own work going while the server is away, report the outage in
``get_status()["hypha"]`` once it is back, and re-register without a restart of their own. A
service told to give up (``--reconnect-timeout``) exits with code 3 and leaves what users
deployed running for its successor to adopt.
"""

import asyncio
import json
import time

import psutil
import pytest

from bioengine_common import connect
from bioengine_common.local_stack import short_temp_dir
from bioengine_common.testing import ADMIN_USER, SERVICE_MODULES, wait_for_service

pytestmark = pytest.mark.integration


async def _all_registered(server, admin_token, before, processes, deadline_s):
    """Wait for every service to be registered again by the same process; the admin client."""
    restarted = time.monotonic()
    client = await connect(server.url, workspace=server.workspace, token=admin_token)
    for name, (_, service_id) in SERVICE_MODULES.items():
        remaining = deadline_s - (time.monotonic() - restarted)
        try:
            info = await wait_for_service(client, service_id, timeout=max(remaining, 0.1))
        except TimeoutError:
            raise AssertionError(processes[name].console_output()[-6000:]) from None
        assert info["id"] == before[name]  # the same process, re-registered
    return client


async def _hypha_status(client, service_id, reconnects):
    """The service's own view of its Hypha link, once its watch has seen the reconnect and the
    link is up. Right after a restart the server may close a fresh connection once more (code
    1000; hypha-rpc reconnects and registers again), so a moment without the service is
    waited out here; the service must come back by itself within the 20 s."""
    status: dict = {}
    last_error = None
    for _ in range(80):
        try:
            status = await (await client.get_service(service_id)).get_status()
        except Exception as exc:  # between a close and the service's registration again
            last_error = exc
        else:
            link = status["hypha"]
            if link["reconnects"] >= reconnects and link["connected"]:
                return link
        await asyncio.sleep(0.25)
    raise AssertionError(
        f"{service_id} never saw reconnect #{reconnects} with its link up: {status.get('hypha')}; "
        f"last error: {last_error}"
    )


async def test_services_outlive_a_short_and_a_long_server_outage(hypha_server_factory, start_service):
    server = hypha_server_factory()
    processes = {name: start_service(name, server) for name in SERVICE_MODULES}
    admin_token = server.mint(ADMIN_USER, "admin")
    client = await connect(server.url, workspace=server.workspace, token=admin_token)
    before = {name: (await wait_for_service(client, sid))["id"] for name, (_, sid) in SERVICE_MODULES.items()}
    await client.disconnect()

    # hypha-rpc's own retry delays double (1, 2, 4 ... 60 s): after the long outage a service
    # relying on them alone would wait up to 32 s more; the watch reconnects within seconds.
    for outage, reconnects in ((0.0, 1), (30.0, 2)):
        server.stop_server()
        await asyncio.sleep(outage)
        for name, service in processes.items():
            assert service.alive(), (
                f"{name} exited during a {outage:.0f} s outage:\n{service.console_output()}"
            )
        server.start_server()
        client = await _all_registered(server, admin_token, before, processes, deadline_s=15.0)
        try:
            for name, (_, service_id) in SERVICE_MODULES.items():
                assert processes[name].alive(), processes[name].console_output()
                link = await _hypha_status(client, service_id, reconnects)
                assert link["connected"] is True and link["down_since"] is None, link
            # Calls through the workspace manager work again (they timed out after a restart
            # while the manager proxy pointed at the old server): the gateway looks up and
            # calls every backend.
            gateway = await client.get_service("bioengine-worker")
            for _ in range(120):  # the Ray head may still be starting after the first outage
                status = await gateway.get_status()
                if status["is_ready"]:
                    break
                await asyncio.sleep(0.5)
            assert status["client_id"] in before["gateway"]
            assert status["is_ready"] is True, status["services"]
        finally:
            await client.disconnect()
    assert "Hypha connection back after" in processes["datasets"].console_output()


async def test_a_service_exits_nonzero_when_told_to_give_up(hypha_server_factory, start_service):
    server = hypha_server_factory()
    service = start_service("datasets", server, "--reconnect-timeout", "3")
    client = await connect(server.url, workspace=server.workspace, token=server.mint(ADMIN_USER, "admin"))
    await wait_for_service(client, "bioengine-datasets")
    await client.disconnect()
    server.stop_server()
    assert service.process.wait(60) == 3, service.console_output()
    assert "ConnectionLost" in service.console_output()


async def test_cluster_service_giving_up_on_hypha_leaves_the_ray_head_to_its_successor(
    hypha_server_factory, start_service, tmp_path
):
    server = hypha_server_factory()
    workspace_dir = tmp_path / "worker"
    admin_token = server.mint(ADMIN_USER, "admin")
    first = start_service("cluster", server, "--reconnect-timeout", "3", workspace_dir=workspace_dir)
    client = await connect(server.url, workspace=server.workspace, token=admin_token)
    await wait_for_service(client, "bioengine-cluster")
    cluster = await client.get_service("bioengine-cluster")
    for _ in range(240):
        if (await cluster.get_status())["ready"]:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError(first.console_output())
    await client.disconnect()
    head_file = short_temp_dir(workspace_dir / "ray") / "bioengine-head.json"
    head_pid = json.loads(head_file.read_text())["pid"]

    server.stop_server()
    assert first.process.wait(60) == 3, first.console_output()
    assert "Leaving the Ray head and its workers running" in first.console_output()
    assert psutil.pid_exists(head_pid), "the Ray head was stopped because Hypha went away"

    server.start_server()
    second = start_service("cluster", server, workspace_dir=workspace_dir)
    client = await connect(server.url, workspace=server.workspace, token=admin_token)
    try:
        await wait_for_service(client, "bioengine-cluster", timeout=60)
        cluster = await client.get_service("bioengine-cluster")
        for _ in range(120):
            if (await cluster.get_status())["ready"]:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(second.console_output())
        assert json.loads(head_file.read_text())["pid"] == head_pid  # adopted, not started anew
    finally:
        await client.disconnect()
