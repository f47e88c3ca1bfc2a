"""Deploying apps on a real Ray Serve and calling them through their own Hypha services."""

import pytest

pytestmark = pytest.mark.integration


async def test_demo_app_from_local_folder_runs_and_answers(apps, admin_client, wait_app):
    app_id = await apps.deploy_app(artifact_id="demo-app", application_id="demo-local")
    status = await wait_app(apps, app_id)
    assert status["deployments"]["DemoApp"]["status"] == "HEALTHY"
    service_id = status["service_ids"][0]["websocket_service_id"]
    app = await admin_client.get_service(service_id)
    answer = await app.ping()
    assert answer["status"] == "ok" and answer["uptime"] >= 0
    art = await app.ascii_art()
    assert art and all(isinstance(line, str) for line in art)
