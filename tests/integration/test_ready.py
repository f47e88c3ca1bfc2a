"""Ready means ready (issue 17): the launcher's banner comes once the worker can take work, and a
worker or service that is not ready says why."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bioengine_common import connect
from bioengine_common.testing import ADMIN_USER, wait_for_service
from bioengine_worker.testing import WorkerProcess

pytestmark = pytest.mark.integration

DEMO_APP = Path(__file__).resolve().parents[2] / "apps" / "demo-app"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from bioengine_worker.cli import main; main()", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.timeout(900)
async def test_an_app_deploys_and_answers_right_after_the_banner(tmp_path):
    """As in the issue: `bioengine apps deploy apps/demo-app` at once after the banner, no sleep
    and no retry, then a call to the app."""
    worker = WorkerProcess(tmp_path / "worker", "--mode", "single-machine", "--hypha-port", "0")
    try:
        connection = await asyncio.to_thread(worker.wait_ready, 600)
        deployed = await asyncio.to_thread(
            _cli, "apps", "deploy", str(DEMO_APP), "--app-id", "ready-demo", "--json",
            "--workspace-dir", str(worker.dir), timeout=600,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        result = json.loads(deployed.stdout)
        assert result["status"]["status"] == "RUNNING", result
        app_service = result["status"]["service_ids"][0]["websocket_service_id"]

        server = await connect(
            connection["server_url"], workspace=connection["workspace"], token=connection["token"]
        )
        try:
            app = await server.get_service(app_service)
            assert (await app.ping())["status"] == "ok"
            gateway = await server.get_service(f"{connection['workspace']}/bioengine-worker")
            status = await gateway.get_status()
        finally:
            await server.disconnect()

        text = worker.text()
        banner = re.search(r"BioEngine worker ready in ([\d.]+) s", text)
        assert banner, text
        # The stated time, counted from the launcher's start, is not before the gateway saw the
        # worker ready (ready_since is the gateway's own clock on this machine).
        launcher_started = psutil.Process(worker.process.pid).create_time()
        assert status["is_ready"] and status["ready_since"] is not None, status
        assert launcher_started < status["ready_since"] <= launcher_started + float(banner[1])
        assert status["not_ready_reasons"] == []
        # One line per step, all before the banner, in the order they happen.
        steps = [
            "Hypha server ready at",
            "bioengine-cluster registered",
            "Ray head started at",
            "Ray cluster ready:",
            "apps-svc connected to the Ray cluster",
        ]
        positions = [text.index(step) for step in steps]
        assert positions == sorted(positions) and positions[-1] < banner.start(), text
    finally:
        worker.stop()


async def test_a_worker_without_its_cluster_service_says_why_it_is_not_ready(
    hypha_server, start_service, admin_client
):
    """The gateway and apps-svc run, bioengine-cluster does not: the status names both causes,
    and `bioengine status` prints them under NOT READY."""
    start_service("apps", hypha_server)
    start_service("gateway", hypha_server)
    await wait_for_service(admin_client, "bioengine-worker")
    gateway = await admin_client.get_service("bioengine-worker")
    deadline = time.monotonic() + 90
    while True:
        status = await gateway.get_status()
        reasons = status["not_ready_reasons"]
        # After its first try (starting: a try a second, no growing backoff).
        apps_known = any(
            r.startswith("apps: not connected to the Ray cluster yet") and r.endswith("(retrying every 1 s)")
            for r in reasons
        )
        cluster_known = any(r.startswith("cluster: bioengine-cluster is not reachable") for r in reasons)
        if (apps_known and cluster_known) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert status["is_ready"] is False and status["ready_since"] is None
    assert apps_known and cluster_known, reasons
    assert any(r.startswith("datasets: bioengine-datasets is not reachable") for r in reasons), reasons

    printed = await asyncio.to_thread(
        _cli, "status", "--server-url", hypha_server.url, "--workspace", hypha_server.workspace,
        "--token", hypha_server.mint(ADMIN_USER, "read_write"),
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0].endswith("NOT READY")
    assert any(line.startswith("  - cluster: bioengine-cluster is not reachable") for line in lines), lines
    assert any(line.startswith("  - apps: not connected to the Ray cluster yet") for line in lines), lines


@pytest.mark.timeout(400)
def test_the_launcher_names_the_service_that_is_not_ready_when_time_runs_out(tmp_path):
    """No Ray cluster where --head-address points: after --ready-timeout the launcher stops and
    says which service is not ready, why, and where its log is, instead of a bare timeout."""
    worker = WorkerProcess(
        tmp_path / "worker", "--mode", "external-cluster", "--head-address", "127.0.0.1:9",
        "--hypha-port", "0", "--no-s3", "--ready-timeout", "45",
    )  # fmt: skip
    try:
        code = worker.process.wait(300)
        text = worker.text()
        assert code == 1, text
        assert "the BioEngine worker was not ready within 45 s" in text
        logs = worker.dir / "logs"
        cluster_line = next(line for line in text.splitlines() if line.startswith("  - cluster: "))
        assert str(logs / "cluster.log") in cluster_line, text
        assert "BioEngine worker ready in" not in text and "Press Ctrl-C to stop." not in text
        assert "bioengine-worker registered" in text  # the steps that did complete were shown
    finally:
        worker.stop()
