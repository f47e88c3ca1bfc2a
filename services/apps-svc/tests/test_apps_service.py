"""bioengine-apps alone against a real Hypha server."""

import pytest

from bioengine_common import connect
from bioengine_common.testing import wait_for_service


async def test_registers_and_reports_its_directory(hypha_server, start_service, admin_client, tmp_path):
    start_service("apps", hypha_server, "--apps-dir", str(tmp_path / "my-apps"))
    await wait_for_service(admin_client, "bioengine-apps")
    status = await (await admin_client.get_service("bioengine-apps")).get_status()
    assert status["service"] == "bioengine-apps" and status["ready"] is True
    assert status["apps_dir"] == str(tmp_path / "my-apps")


async def test_anonymous_users_cannot_reach_it(hypha_server, start_service, admin_client):
    start_service("apps", hypha_server)
    await wait_for_service(admin_client, "bioengine-apps")
    anonymous = await connect(hypha_server.url)
    try:
        with pytest.raises(Exception, match="Permission denied"):
            await anonymous.get_service(f"{hypha_server.workspace}/bioengine-apps")
    finally:
        await anonymous.disconnect()
