"""Each service's image, run through podman against the test Hypha server: the four services
register, the gateway reports the worker ready (apps-svc, a Ray driver, reaches the Ray head in
the cluster container), and the demo app deploys through the gateway and answers."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bioengine_common.testing import eventually, wait_for_service
from bioengine_common.testing.containers import new_volume_name
from bioengine_worker.cli import read_app_folder

pytestmark = pytest.mark.integration

DEMO_APP = Path(__file__).resolve().parents[2] / "apps" / "demo-app"

SERVICE_IDS = {
    "cluster": "bioengine-cluster",
    "apps": "bioengine-apps",
    "datasets": "bioengine-datasets",
    "gateway": "bioengine-worker",
}


async def test_service_images_make_a_ready_worker_that_deploys_the_demo_app(
    hypha_server, service_tokens, admin_client, start_service_container
):
    volume = new_volume_name()
    cluster = start_service_container(
        "cluster", hypha_server, "--mode", "single-machine", "--status-interval", "1",
        token=service_tokens["cluster"], volume=volume,
    )  # fmt: skip
    containers = {
        "cluster": cluster,
        # A Ray driver: in the cluster container's PID namespace.
        "apps": start_service_container(
            "apps", hypha_server, token=service_tokens["apps"], volume=volume, ray_head=cluster
        ),
        "datasets": start_service_container(
            "datasets", hypha_server, token=service_tokens["datasets"], volume=volume,
            env={"BIOENGINE_HTTP_PORT": "0"},
        ),
        "gateway": start_service_container("gateway", hypha_server, token=service_tokens["gateway"], volume=volume),
    }  # fmt: skip
    try:
        for service_id in SERVICE_IDS.values():
            info = await wait_for_service(admin_client, f"{hypha_server.workspace}/{service_id}", timeout=120)
            assert info["id"].endswith(f":{service_id}")
        worker = await admin_client.get_service(f"{hypha_server.workspace}/bioengine-worker")

        async def ready() -> dict[str, Any] | None:
            status = dict(await worker.get_status())
            return status if status["is_ready"] else None

        status = await eventually(ready, 180, "the worker ready through the gateway")
        services = status["services"]
        assert services["cluster"]["status"]["mode"] == "single-machine"
        assert services["apps"]["status"]["ray_connected"] is True
        assert services["datasets"]["status"]["http_url"].startswith("http://")

        artifact_id = await worker.upload_app(files=read_app_folder(DEMO_APP))
        app_id = await worker.deploy_app(artifact_id=artifact_id, application_id="container-demo")

        async def app_service() -> str | None:
            app = (await worker.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]
            ids = app.get("service_ids") or []
            return ids[0].get("websocket_service_id") if app.get("status") == "RUNNING" and ids else None

        service_id = await eventually(app_service, 240, "the demo app RUNNING")
        answer = await (await admin_client.get_service(service_id)).ping()
        assert answer["status"] == "ok", answer

        # Each image's HEALTHCHECK passes on a running service (podman runs it on demand here:
        # its timers need systemd), and each service stops by itself on the image's STOPSIGNAL.
        for name, container in containers.items():
            check = await asyncio.to_thread(
                subprocess.run,
                ["podman", "healthcheck", "run", container.id],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert check.returncode == 0, f"{name}: health check failed: {check.stdout}{check.stderr}"
        for name in ("gateway", "datasets", "apps"):
            wrapped = containers[name].container.get_wrapped_container()
            await asyncio.to_thread(wrapped.stop, timeout=30)  # the STOPSIGNAL, then SIGKILL after 30 s
            await asyncio.to_thread(wrapped.reload)
            assert wrapped.attrs["State"]["ExitCode"] == 0, (
                f"{name} did not stop by itself on its stop signal: {wrapped.attrs['State']}"
            )
    except BaseException:
        for name, container in containers.items():
            print(f"--- {name} container log\n{container.logs()[-4000:]}")
        raise
