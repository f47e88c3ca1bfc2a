"""bioengine-apps alone against a real Hypha server."""

import asyncio

import pytest

from bioengine_common import connect
from bioengine_common.testing import wait_for_service

pytestmark = pytest.mark.integration


async def test_without_a_cluster_it_registers_and_says_why_it_is_not_ready(
    hypha_server, start_service, admin_client, tmp_path
):
    start_service(
        "apps",
        hypha_server,
        "--apps-dir",
        str(tmp_path / "my-apps"),
        "--cluster-service-id",
        "no-such-cluster",
    )
    await wait_for_service(admin_client, "bioengine-apps")
    apps = await admin_client.get_service("bioengine-apps")
    deadline = asyncio.get_running_loop().time() + 30
    while "no-such-cluster" not in str((status := await apps.get_status())["ray_error"]):
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.5)
    assert status["service"] == "bioengine-apps" and status["ready"] is False
    assert status["apps_dir"] == str(tmp_path / "my-apps")
    with pytest.raises(Exception, match="not connected to the Ray cluster"):
        await apps.deploy_app(artifact_id="demo-app")
    # Without Ray: status answers from the records, artifacts work (the store is up).
    assert await apps.get_app_status() == {}
    while (status := await apps.get_status())["dependencies"]["artifact_store"]["ok"] is None:
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.5)
    assert status["dependencies"]["artifact_store"] == {
        "ok": True, "reason": None, "checked_at": status["dependencies"]["artifact_store"]["checked_at"]
    }  # fmt: skip
    assert (
        status["dependencies"]["ray"]["ok"] is False
        and "no-such-cluster" in status["dependencies"]["ray"]["reason"]
    )
    assert status["ready_for"] == {
        "status": True,
        "apps": False,
        "artifacts": True,
        "deploy_from_artifact": False,
    }
    assert isinstance(await apps.list_apps(), dict)


async def test_anonymous_users_cannot_reach_it(hypha_server, start_service, admin_client):
    start_service("apps", hypha_server)
    await wait_for_service(admin_client, "bioengine-apps")
    anonymous = await connect(hypha_server.url)
    try:
        with pytest.raises(Exception, match="Permission denied"):
            await anonymous.get_service(f"{hypha_server.workspace}/bioengine-apps")
    finally:
        await anonymous.disconnect()
