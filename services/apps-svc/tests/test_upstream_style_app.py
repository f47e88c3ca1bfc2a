"""An app written for the public BioEngine SDK, uploaded as it is, deploys and answers.

``apps/upstream-style-app`` is written the way the public SDK's demo is (``num_gpus=0``, ``pip``
read at import from ``requirements-deployment.txt`` beside the module, every hook, a
``Field(...)`` parameter, ``list_datasets`` catching ``MissingDataServerError``, a frontend). It
is uploaded through the gateway unchanged (to the artifact store on S3), deployed on Ray Serve
and called through its own Hypha service.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from bioengine_common.testing import launch_service, ready_worker, stop_all_apps

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parents[3] / "apps" / "upstream-style-app"


@pytest.fixture(scope="module")
def stack(hypha_server, cluster_process, tmp_path_factory):
    """apps-svc (no local apps) and the gateway."""
    workspace = tmp_path_factory.mktemp("upstream-style-worker")
    local_apps = tmp_path_factory.mktemp("no-local-apps")
    apps = launch_service(
        "apps", hypha_server, workspace, "--local-apps-dir", str(local_apps), "--reconcile-interval", "1"
    )
    gateway = launch_service("gateway", hypha_server, workspace, "--status-interval", "1")
    yield {"apps": apps, "workspace": workspace}
    stop_all_apps(hypha_server)
    gateway.stop()
    apps.stop()


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_an_app_written_for_the_public_sdk_deploys_unchanged(
    stack, admin_client, hypha_server, files_of, wait_app
):
    worker = await ready_worker(admin_client, stack["apps"], timeout=90)
    files = files_of(APP)
    assert {f["name"] for f in files} == {
        "manifest.yaml", "deployment.py", "requirements-deployment.txt", "README.md", "frontend/index.html",
    }  # fmt: skip
    artifact_id = await worker.upload_app(files=files, public=True)
    assert artifact_id == f"{hypha_server.workspace}/upstream-style-app"

    app_id = await worker.deploy_app(
        artifact_id=artifact_id,
        application_id="upstream-style",
        application_kwargs={"DemoDeployment": {"test_param": "from the test"}},
    )
    # The first deploy installs tabulate (read from requirements-deployment.txt) with Ray's pip.
    status = await wait_app(worker, app_id, ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"), timeout=300)
    assert status["status"] == "RUNNING", status
    assert set(status["available_methods"]) == {
        "ping", "ascii_art", "reverse_text", "set_fail_health_check", "list_datasets",
    }  # fmt: skip
    # num_cpus=1, num_gpus=0, memory_mb=512, as the decorator asks.
    resources = status["application_resources"]
    assert (resources["num_cpus"], resources.get("num_gpus", 0), resources["memory"]) == (1, 0, 512 * 1024**2)

    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    assert await app.reverse_text(text="BioEngine") == "enignEoiB"
    table = await app.ascii_art(rows=[["cells", 3]], headers=["what", "how many"])
    assert table.splitlines()[0].startswith("+------") and "| cells  |" in table
    assert await app.list_datasets() == {}  # this stack has no datasets server
    deadline = time.monotonic() + 60
    while not (pong := await app.ping())["smoke_test_passed"]:
        assert time.monotonic() < deadline, pong
        await asyncio.sleep(0.5)
    assert pong["message"] == "Hello from DemoDeployment (from the test)"
    assert pong["initialized"] and pong["env_var"] == "example-value"

    # The requirements file reached the replicas with the code; the README and frontend did not.
    code_dirs = list((stack["workspace"] / "apps" / app_id).glob("code-*"))
    assert [sorted(p.name for p in d.iterdir()) for d in code_dirs] == [
        ["deployment.py", "requirements-deployment.txt"]
    ]
    # Hypha serves the frontend; the status links to it with the app's service.
    page = (APP / "frontend" / "index.html").read_text()
    assert status["static_site_url"].startswith(f"{hypha_server.url}/{hypha_server.workspace}/view/")
    assert await _get(status["static_site_url"]) == (200, page)

    await worker.stop_app(application_id=app_id)
    await worker.delete_app(artifact_id=artifact_id)
