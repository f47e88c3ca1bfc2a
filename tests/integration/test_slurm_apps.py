"""An app that does not fit the slurm-mode head: apps-svc deploys it ("fits after scale-up"),
bioengine-cluster submits a SLURM job for the pending replica, the job's Ray node joins and the
app becomes RUNNING and answers; once stopped, the idle worker is released.

Real Hypha (with S3), real SLURM (infra/slurm/setup-slurm.sh), real Ray head and Serve.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bioengine_common.testing import launch_service, wait_for_service

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parents[2] / "apps"


@pytest.fixture(scope="module")
def services(slurm, hypha_server, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("slurm-apps")
    cluster = launch_service(
        "cluster", hypha_server, workspace, "--mode", "slurm", "--object-store-memory-in-gb", "0.2",
        "--status-interval", "1", "--slurm-poll-interval", "1", "--slurm-worker-cpus", "1",
        "--slurm-worker-memory-gb", "1", "--slurm-time-limit", "15", "--slurm-idle-timeout", "10",
        "--slurm-max-workers", "1", "--client-id", "slurm-apps-cluster",
    )  # fmt: skip
    apps = launch_service(
        "apps", hypha_server, workspace, "--local-apps-dir", str(APPS), "--reconcile-interval", "1",
        "--cluster-service-id", "slurm-apps-cluster:bioengine-cluster", "--client-id", "slurm-apps",
    )  # fmt: skip
    yield {"cluster": cluster, "apps": apps}
    apps.stop()
    cluster.stop(timeout=90)  # cancels this worker's jobs


async def _until(check, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await check()
            if last:
                return last
        except Exception as exc:
            last = exc
        await asyncio.sleep(1)
    raise AssertionError(f"{what} not within {timeout} s (last: {last})")


async def test_an_app_that_needs_a_worker_gets_one_and_runs(services, admin_client):
    await wait_for_service(admin_client, "slurm-apps-cluster:bioengine-cluster", timeout=60)
    await wait_for_service(admin_client, "slurm-apps:bioengine-apps", timeout=60)
    cluster = await admin_client.get_service("slurm-apps-cluster:bioengine-cluster")
    apps = await admin_client.get_service("slurm-apps:bioengine-apps")
    await _until(lambda: _ready(apps), 120, "apps-svc connected to the slurm-mode cluster")

    # The head has no CPU: the 0.1-CPU deployment fits only on a new worker.
    fit = await cluster.check_resources(num_cpus=0.1)
    assert fit["verdict"] == "fits_after_scale_up", fit
    app_id = await apps.deploy_app(artifact_id="demo-app", application_id="slurm-demo")

    async def running():
        status = (await apps.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]
        return (
            status
            if status["status"] == "RUNNING" and status["service_ids"][0]["websocket_service_id"]
            else None
        )

    status = await _until(running, 180, "the app RUNNING on a SLURM worker")
    jobs = (await cluster.get_status())["ray_cluster"]["slurm"]["jobs"]
    assert [j["state"] for j in jobs if j["state"] == "RUNNING"], jobs
    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    assert (await app.ping())["status"] == "ok"

    # Demand ends: the worker goes idle and its job is cancelled after the idle timeout.
    await apps.stop_app(application_id=app_id)

    async def released():
        slurm = (await cluster.get_status())["ray_cluster"]["slurm"]
        return slurm if slurm["live_jobs"] == 0 else None

    slurm = await _until(released, 120, "the idle worker's job cancelled")
    assert any((j.get("reason") or "").startswith("idle") for j in slurm["jobs"]), slurm["jobs"]


async def _ready(apps):
    return (await apps.get_status())["ready"]
