"""Calling an app over a real WebRTC peer connection (hypha-rpc's get_rtc_service, aiortc on
loopback, host candidates only: nothing here reaches the internet), against the same app over
the websocket: same answers, same access rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypha_rpc.webrtc_client import get_rtc_service

from bioengine_common import connect

pytestmark = pytest.mark.integration

APP_ID = "demo-webrtc"


@pytest.fixture
async def other_user(hypha_server) -> AsyncIterator[Any]:
    client = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("someone-else")
    )
    yield client
    await client.disconnect()


@pytest.fixture(scope="module")
def deployed() -> dict[str, Any]:
    """The demo app's status once running (the first test deploys it)."""
    return {}


async def _peer(client: Any, rtc_service_id: str) -> Any:
    return await asyncio.wait_for(get_rtc_service(client, rtc_service_id), 60)


async def test_the_app_answers_the_same_over_webrtc_as_over_the_websocket(
    apps, admin_client, wait_app, deployed
):
    await apps.deploy_app(artifact_id="demo-app", application_id=APP_ID)
    status = await wait_app(apps, APP_ID)
    ids = status["service_ids"][0]
    rtc_id = ids["webrtc_service_id"]
    assert rtc_id == ids["websocket_service_id"] + "-rtc", status
    assert status["webrtc_error"] is None
    deployed.update(status)

    websocket = await admin_client.get_service(ids["websocket_service_id"])
    peer = await _peer(admin_client, rtc_id)
    try:
        app = await peer.get_service(APP_ID)
        over_ws, over_rtc = await websocket.ping(), await app.ping()
        assert over_rtc["status"] == over_ws["status"] == "ok"
        assert over_rtc["message"] == over_ws["message"]
        assert await app.ascii_art() == await websocket.ascii_art()
        # read_env is for the deployer and admins: the admin may, over both.
        assert await app.read_env("HOME") == await websocket.read_env("HOME")
        assert await websocket.get_num_pcs() == 1
        assert await app.get_rtc_service_id() == await websocket.get_rtc_service_id() == rtc_id
    finally:
        await peer.disconnect()


async def test_a_method_not_public_is_refused_over_webrtc_too(other_user, deployed):
    assert deployed, "the app was not deployed: see the test before this one"
    ids = deployed["service_ids"][0]
    websocket = await other_user.get_service(ids["websocket_service_id"])
    with pytest.raises(Exception, match="may not call 'read_env'"):
        await websocket.read_env("HOME")
    peer = await _peer(other_user, ids["webrtc_service_id"])
    try:
        app = await peer.get_service(APP_ID)
        assert (await app.ping())["status"] == "ok"  # the '*' rule: everyone
        with pytest.raises(Exception, match="User 'someone-else' may not call 'read_env'"):
            await app.read_env("HOME")
    finally:
        await peer.disconnect()
