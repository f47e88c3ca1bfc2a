"""bioengine-datasets alone against a real Hypha server: caller forwarding end to end."""

import pytest

from bioengine_common import connect
from bioengine_common.testing import ADMIN_USER, wait_for_service


async def test_status_reports_the_data_dir(hypha_server, start_service, admin_client, tmp_path):
    (tmp_path / "data").mkdir()
    start_service("datasets", hypha_server, "--data-dir", str(tmp_path / "data"))
    await wait_for_service(admin_client, "bioengine-datasets")
    status = await (await admin_client.get_service("bioengine-datasets")).get_status()
    assert status["data_dir"] == str(tmp_path / "data") and status["data_dir_exists"] is True


async def test_forwarded_admin_is_trusted_only_from_the_workspace(hypha_server, start_service, admin_client):
    start_service("datasets", hypha_server)
    await wait_for_service(admin_client, "bioengine-datasets")
    # A non-admin client of the shared workspace (like the gateway) forwards an admin caller.
    relay = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("relay")
    )
    try:
        datasets = await relay.get_service("bioengine-datasets")
        with pytest.raises(Exception, match="not authorized"):
            await datasets.get_logs(tail=1)
        lines = await datasets.get_logs(tail=3, caller={"id": ADMIN_USER, "email": None})
        assert isinstance(lines, list) and lines
        with pytest.raises(Exception, match="not authorized"):
            await datasets.get_logs(tail=1, caller={"id": "someone-else"})
    finally:
        await relay.disconnect()
