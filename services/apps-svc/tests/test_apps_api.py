"""The rest of the public apps API on a real stack (Hypha + SeaweedFS, Ray Serve, apps-svc and
the gateway): startup apps, an app's frontend served by Hypha and fetched over HTTP,
delete_app_version, and deploy_app's scaling, proxy_memory_in_gb, debug and ice_servers with
get_app_status's deployment_logs."""

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest

from bioengine_common.testing import launch_service, ready_worker, stop_all_apps

APPS = Path(__file__).resolve().parents[3] / "apps"
ONE_FILE_06 = Path(__file__).resolve().parents[3] / "libs/bioengine-app-format/tests/apps_06/one-file"

pytestmark = pytest.mark.integration

FRONTEND_PAGE = "<!doctype html><title>Demo frontend</title><p>frontend of the demo app</p>\n"
STARTUP = [
    {
        "artifact_id": "demo-app",
        "application_id": "startup-demo",
        "application_kwargs": {"DemoApp": {"greeting": "${STARTUP_GREETING}"}},
    },
    {"artifact_id": "no-such-app", "application_id": "startup-missing"},
    {"artifact_id": "demo-app", "colour": "blue"},
]


@pytest.fixture(scope="module")
def stack(hypha_server, cluster_process, tmp_path_factory):
    """apps-svc with the example apps as local apps and three startup apps (one good, one
    missing, one malformed), and the gateway."""
    workspace = tmp_path_factory.mktemp("apps-api-worker")
    os.environ["STARTUP_GREETING"] = "hello from the environment"
    try:
        apps = launch_service(
            "apps", hypha_server, workspace,
            "--local-apps-dir", str(APPS), "--reconcile-interval", "1",
            "--startup-applications", json.dumps(STARTUP),
        )  # fmt: skip
    finally:
        os.environ.pop("STARTUP_GREETING", None)
    gateway = launch_service("gateway", hypha_server, workspace, "--status-interval", "1")
    yield {"apps": apps, "gateway": gateway}
    stop_all_apps(hypha_server)
    gateway.stop()
    apps.stop()


@pytest.fixture
async def worker(stack, admin_client):
    return await ready_worker(admin_client, stack["apps"], timeout=90)


def _frontend_app(version: str) -> list[dict]:
    manifest = (APPS / "demo-app" / "manifest.yaml").read_text()
    manifest = manifest.replace('version: "1.0.0"', f'version: "{version}"').replace(
        "id: demo-app", "id: frontend-app"
    )
    manifest += "frontend_entry: frontend/index.html\n"
    return [
        {"name": "manifest.yaml", "content": manifest, "type": "text"},
        {"name": "demo_app.py", "content": (APPS / "demo-app" / "demo_app.py").read_text(), "type": "text"},
        {"name": "frontend/index.html", "content": FRONTEND_PAGE, "type": "text"},
    ]


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_startup_apps_deploy_and_report_their_problems(worker, admin_client, wait_app):
    status = await wait_app(worker, "startup-demo")
    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    assert (await app.ping())["message"] == "hello from the environment"

    deadline = time.monotonic() + 60
    while True:
        details = (await worker.get_status())["services"]["apps"]["status"]
        reported = details.get("startup_applications") or []
        if len(reported) == 3 and all(e["status"] != "deploying" for e in reported):
            break
        assert time.monotonic() < deadline, reported
        await asyncio.sleep(0.5)
    by_status = {e["status"]: e for e in reported}
    assert by_status["submitted"]["application_id"] == "startup-demo"
    assert by_status["failed"]["application_id"] == "startup-missing"
    assert "no-such-app" in by_status["failed"]["error"]
    assert by_status["invalid"]["error"].startswith("--startup-applications[2]: unknown key(s) colour")


async def test_a_frontend_is_served_by_hypha_and_its_url_is_in_the_status(
    worker, hypha_server, admin_client, wait_app
):
    artifact_id = await worker.upload_app(files=_frontend_app("1.0.0.dev1"), public=True)
    assert artifact_id == f"{hypha_server.workspace}/frontend-app"
    # Served as soon as it is uploaded, to anyone (public=True), from frontend/.
    code, page = await _get(f"{hypha_server.url}/{hypha_server.workspace}/view/frontend-app/")
    assert (code, page) == (200, FRONTEND_PAGE)

    await worker.upload_app(files=_frontend_app("1.0.0.dev2"), public=True)
    app_id = await worker.deploy_app(artifact_id=artifact_id, application_id="frontend-demo")
    status = await wait_app(worker, app_id)
    service_id = status["service_ids"][0]["websocket_service_id"]
    url = status["static_site_url"]
    assert url.startswith(f"{hypha_server.url}/{hypha_server.workspace}/view/frontend-app/?server=")
    assert "ws_service_id=" + service_id.replace("/", "%2F").replace(":", "%3A") in url
    assert await _get(url) == (200, FRONTEND_PAGE)
    # An app without a frontend has none.
    startup = (await worker.get_app_status(application_ids=["startup-demo"]))["startup-demo"]
    assert startup["static_site_url"] is None

    # delete_app_version: releases, the deployed version and unknown versions are refused.
    with pytest.raises(Exception, match="is deployed as frontend-demo; stop it first"):
        await worker.delete_app_version(artifact_id="frontend-app", version="1.0.0.dev2")
    with pytest.raises(Exception, match=r"has no version '9\.0\.0\.dev1'"):
        await worker.delete_app_version(artifact_id="frontend-app", version="9.0.0.dev1")
    await worker.upload_app(files=_frontend_app("1.0.0"), public=True)
    with pytest.raises(Exception, match=r"'1\.0\.0' is a release"):
        await worker.delete_app_version(artifact_id="frontend-app", version="1.0.0")
    assert await worker.delete_app_version(artifact_id="frontend-app", version="1.0.0.dev1") == artifact_id
    assert (await worker.list_apps())[artifact_id]["versions"] == ["1.0.0.dev2", "1.0.0"]
    # The app keeps running the version it was deployed with.
    app = await admin_client.get_service(service_id)
    assert (await app.ping())["status"] == "ok"
    await worker.stop_app(application_id=app_id)
    await worker.delete_app(artifact_id=artifact_id)


async def test_scaling_debug_proxy_memory_and_deployment_logs(worker, admin_client, wait_app):
    with pytest.raises(Exception, match=r"scaling\['Nope'\]: the app has no deployment class 'Nope'"):
        await worker.deploy_app(artifact_id="demo-app", scaling={"Nope": {"num_replicas": 1}})
    with pytest.raises(Exception, match=r"ice_servers\[0\]\.urls"):
        await worker.deploy_app(artifact_id="demo-app", ice_servers=[{"urls": []}])
    app_id = await worker.deploy_app(
        artifact_id="demo-app",
        application_id="scaled-demo",
        scaling={"DemoApp": {"num_replicas": 2}},
        proxy_memory_in_gb=0.1,
        debug=True,
        ice_servers=[{"urls": "stun:stun.example.org"}],
    )
    await wait_app(worker, app_id)
    deadline = time.monotonic() + 90
    while True:
        status = (
            await worker.get_app_status(application_ids=[app_id], logs_tail=0, deployment_logs={"DemoApp": 5})
        )[app_id]
        demo = status["deployments"]["DemoApp"]
        if demo["replica_states"].get("RUNNING") == 2:
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.5)
    assert status["scaling"] == {"DemoApp": {"num_replicas": 2}}
    assert (status["debug"], status["proxy_memory_in_gb"]) == (True, 0.1)
    # deployment_logs: DemoApp's replicas' logs, none for the proxy (logs_tail=0).
    assert len(demo["logs"]) == 2
    assert "logs" not in status["deployments"]["BioEngineProxy"]

    # An update that leaves scaling out keeps it; a new one replaces it.
    await worker.deploy_app(artifact_id="demo-app", application_id=app_id, max_ongoing_requests=5)
    await worker.deploy_app(
        artifact_id="demo-app", application_id=app_id, scaling={"DemoApp": {"num_replicas": 1}}
    )
    deadline = time.monotonic() + 90
    while (await worker.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]["deployments"][
        "DemoApp"
    ]["replica_states"] != {"RUNNING": 1}:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    await worker.stop_app(application_id=app_id)


async def test_a_0_6_0_app_s_frontend_public_or_for_the_workspace_only(worker, hypha_server, files_of):
    files = files_of(ONE_FILE_06)
    page = next(f["content"] for f in files if f["name"] == "frontend/index.html")

    def as_app(app_id: str) -> list[dict]:
        return [
            {**f, "content": f["content"].replace("id: hello-06", f"id: {app_id}")}
            if f["name"] == "manifest.yaml"
            else f
            for f in files
        ]

    base = f"{hypha_server.url}/{hypha_server.workspace}/view"
    await worker.upload_app(files=as_app("hello-public"), public=True)
    assert await _get(f"{base}/hello-public/") == (200, page)

    await worker.upload_app(files=as_app("hello-private"))
    code, _ = await _get(f"{base}/hello-private/")
    assert code == 403  # not for anyone: the workspace's token opens it
    assert await _get(f"{base}/hello-private/?token={hypha_server.mint('test-admin')}") == (200, page)
    with pytest.raises(Exception, match="stays private"):
        await worker.upload_app(files=as_app("hello-private"), public=True)
    listed = await worker.list_apps()
    public = {artifact_id.rsplit("/", 1)[-1]: entry["public"] for artifact_id, entry in listed.items()}
    assert public["hello-public"] is True and public["hello-private"] is False
    for app_id in ("hello-public", "hello-private"):
        await worker.delete_app(artifact_id=app_id)
