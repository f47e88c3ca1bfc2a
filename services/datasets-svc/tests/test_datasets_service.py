"""bioengine-datasets alone against a real Hypha server: caller forwarding end to end."""

import pytest

from bioengine_common import SERVICES_USER, connect
from bioengine_common.testing import ADMIN_USER, wait_for_service

pytestmark = pytest.mark.integration


async def test_status_reports_the_data_dir(hypha_server, start_service, admin_client, tmp_path):
    (tmp_path / "data").mkdir()
    start_service("datasets", hypha_server, "--data-dir", str(tmp_path / "data"))
    await wait_for_service(admin_client, "bioengine-datasets")
    status = await (await admin_client.get_service("bioengine-datasets")).get_status()
    assert status["data_dir"] == str(tmp_path / "data") and status["data_dir_exists"] is True


async def test_forwarded_admin_is_trusted_only_from_the_services_user(
    hypha_server, start_service, admin_client
):
    start_service("datasets", hypha_server)
    await wait_for_service(admin_client, "bioengine-datasets")
    # A non-admin member of the shared workspace forwarding an admin caller is refused...
    relay = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("relay")
    )
    # ... and so is the admin itself: only the services' own user may speak for someone.
    sibling = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint(SERVICES_USER)
    )
    try:
        datasets = await relay.get_service("bioengine-datasets")
        with pytest.raises(Exception, match="not authorized"):
            await datasets.get_logs(tail=1)
        with pytest.raises(Exception, match="may not pass a caller on"):
            await datasets.get_logs(tail=1, caller={"id": ADMIN_USER, "email": None})
        as_admin = await admin_client.get_service("bioengine-datasets")
        with pytest.raises(Exception, match="may not pass a caller on"):
            await as_admin.list_datasets(caller={"id": "someone-else"})
        from_sibling = await sibling.get_service("bioengine-datasets")
        lines = await from_sibling.get_logs(tail=3, caller={"id": ADMIN_USER, "email": None})
        assert isinstance(lines, list) and lines
        with pytest.raises(Exception, match="not authorized"):
            await from_sibling.get_logs(tail=1, caller={"id": "someone-else"})
        assert any("Refused a forwarded caller" in line for line in await as_admin.get_logs(tail=50))
    finally:
        await relay.disconnect()
        await sibling.disconnect()
