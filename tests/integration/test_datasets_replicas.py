"""Scale a service separately: two bioengine-datasets replicas behind one gateway."""

import os
import signal

import pytest

from bioengine_common.testing import wait_for_service

pytestmark = pytest.mark.integration


async def test_two_replicas_serve_and_one_can_stop(hypha_server, start_service, admin_client, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "shared").mkdir(parents=True)
    (data_dir / "shared" / "manifest.yaml").write_text("name: Shared\npublic: true\n")
    replicas = [
        start_service("datasets", hypha_server, "--data-dir", str(data_dir), "--client-id", f"datasets-r{i}")
        for i in range(2)
    ]
    start_service("gateway", hypha_server)
    for i in range(2):
        await wait_for_service(admin_client, f"datasets-r{i}:bioengine-datasets")
    await wait_for_service(admin_client, "bioengine-worker")
    gateway = await admin_client.get_service("bioengine-worker")
    urls = set()
    for _ in range(6):
        assert set(await gateway.list_datasets()) == {"shared"}
    for i in range(2):
        status = await (await admin_client.get_service(f"datasets-r{i}:bioengine-datasets")).get_status()
        urls.add(status["http_url"])
    assert len(urls) == 2  # each replica has its own HTTP server

    # One replica stops; calls through the gateway keep working (a stale proxy is retried).
    os.kill(replicas[0].pid, signal.SIGTERM)
    assert replicas[0].process.wait(30) == 0
    for _ in range(6):
        assert set(await gateway.list_datasets()) == {"shared"}
