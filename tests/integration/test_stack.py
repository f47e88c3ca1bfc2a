"""The one command of the README: `bioengine-worker` starts everything; Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from bioengine_common import connect
from bioengine_worker.testing import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = WorkerProcess(tmp_path_factory.mktemp("stack"), "--mode", "single-machine", "--hypha-port", "0")
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


async def _admin(stack):
    c = stack.connection
    return await connect(c["server_url"], workspace=c["workspace"], token=c["token"])


async def _wait_all_up(gateway, timeout=120.0, not_pid=None, ready=True):
    """Until every service is up (and, with ``ready``, the worker ready: the Ray head started and
    apps-svc connected to it, which in single-machine mode comes ~20 s after the gateway)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await gateway.get_status()
        services = status["services"]
        ok = (status["is_ready"] or not ready) and all(s["up"] for s in services.values())
        if ok and not_pid is not None:
            ok = services["apps"]["status"]["pid"] != not_pid
        if ok or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.25)


def test_the_command_prints_how_to_reach_the_worker(stack):
    text = stack.text()
    c = stack.connection
    assert c["server_url"] in text and "bioengine/bioengine-worker" in text
    assert c["token"] in text  # the admin token is printed once, for the user
    assert oct((stack.dir / "worker.json").stat().st_mode & 0o777) == "0o600"
    # The token must never land in a log file.
    for log in (stack.dir / "logs").glob("*.log"):
        assert c["token"] not in log.read_text(errors="replace"), log


async def test_gateway_shows_all_services_up(stack):
    server = await _admin(stack)
    try:
        gateway = await server.get_service("bioengine/bioengine-worker")
        status = await _wait_all_up(gateway)
        assert status["is_ready"] is True, status
        assert status["worker_mode"] == "single-machine"
        assert set(status["services"]) == {"cluster", "apps", "datasets"}
        pids = {s["status"]["pid"] for s in status["services"].values()}
        children = {p.pid for p in stack.descendants()}
        assert pids <= children and len(pids) == 3  # separate processes of this launcher
        assert "bioengine-admin" in status["admin_users"]
    finally:
        await server.disconnect()


async def test_gateway_status_carries_the_ray_cluster(stack):
    server = await _admin(stack)
    try:
        gateway = await server.get_service("bioengine/bioengine-worker")
        status = await _wait_all_up(gateway, timeout=90)
        ray_cluster = status["ray_cluster"]
        assert status["ray_version"] == "2.60.0" and ray_cluster["mode"] == "single-machine"
        assert ray_cluster["ready"] and isinstance(ray_cluster["start_time"], float)
        (node,) = ray_cluster["nodes"].values()
        assert node["head"] is True and node["total_cpu"] == psutil.cpu_count()
        for key in ("total_cpu", "used_cpu", "total_gpu", "used_gpu", "total_memory", "used_memory"):
            assert ray_cluster["cluster"][key] >= 0
        # The head runs under the workspace dir's ray temp dir, a child of cluster-svc's session.
        assert (stack.dir / "ray").exists() or ray_cluster["head_address"]
    finally:
        await server.disconnect()


async def test_run_code_through_the_gateway_streams_output(stack):
    server = await _admin(stack)
    anonymous = await connect(stack.connection["server_url"])
    try:
        gateway = await server.get_service("bioengine/bioengine-worker")
        await _wait_all_up(gateway, timeout=90)
        lines: list[str] = []
        code = "def analyze(n):\n    for i in range(n):\n        print('step', i)\n    return sum(range(n))\n"
        result = await gateway.run_code(code=code, args=[3], write_stdout=lines.append, timeout=60)
        assert result.get("result") == 3, result
        assert lines == ["step 0", "step 1", "step 2"]
        public = await anonymous.get_service("bioengine/bioengine-worker")
        with pytest.raises(Exception, match="not authorized to access 'run_code'"):
            await public.run_code(code=code, args=[1])
    finally:
        await anonymous.disconnect()
        await server.disconnect()


async def test_a_killed_service_is_restarted_and_shown_up_again(stack):
    server = await _admin(stack)
    try:
        gateway = await server.get_service("bioengine/bioengine-worker")
        before = await _wait_all_up(gateway)
        pid = before["services"]["apps"]["status"]["pid"]
        metrics_url = stack.connection["metrics"]["apps"]
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        # While apps-svc is down its metrics port stays the worker's: no other process can
        # take it before the restart binds again (the launcher holds the listening socket).
        with socket.socket() as intruder, pytest.raises(OSError, match="Address already in use"):
            intruder.bind(("127.0.0.1", urlsplit(metrics_url).port))
        after = await _wait_all_up(gateway, timeout=15.0, not_pid=pid, ready=False)
        assert after["services"]["apps"]["up"], after["services"]["apps"]
        assert after["services"]["apps"]["status"]["pid"] != pid
        assert time.monotonic() - started < 15.0
        assert "apps exited with code -9" in stack.text()
        # The restarted service serves its metrics at the same URL.
        async with httpx.AsyncClient() as http:
            response = await http.get(metrics_url, timeout=10)
        assert response.status_code == 200 and "bioengine_rpc_calls" in response.text
    finally:
        await server.disconnect()


async def test_permissions_anonymous_versus_admin(stack):
    c = stack.connection
    anonymous = await connect(c["server_url"])
    admin = await _admin(stack)
    try:
        public = await anonymous.get_service("bioengine/bioengine-worker")
        assert await public.check_access() is False
        with pytest.raises(Exception, match="not authorized to access 'get_logs'"):
            await public.get_logs(tail=3)
        with pytest.raises(Exception, match="Permission denied"):
            await anonymous.get_service("bioengine/bioengine-cluster")

        gateway = await admin.get_service("bioengine/bioengine-worker")
        assert await gateway.check_access() is True
        logs = await gateway.get_logs(tail=3)
        assert all(logs[name] for name in ("gateway", "cluster", "apps", "datasets"))
        cluster = await admin.get_service("bioengine/bioengine-cluster")
        assert (await cluster.get_status())["ready"] is True
    finally:
        await anonymous.disconnect()
        await admin.disconnect()


async def test_the_artifact_manager_works_on_the_embedded_s3_store(stack):
    server = await _admin(stack)
    try:
        manager = await server.get_service("public/artifact-manager")
        # A collection of its own: apps-svc creates "applications" when it starts.
        collection = await manager.create(type="collection", alias="stack-test", manifest={"name": "test"})
        artifact = await manager.create(
            parent_id=collection["id"], alias="demo", manifest={"name": "demo"}, stage=True
        )
        async with httpx.AsyncClient() as http:
            put_url = await manager.put_file(artifact["id"], file_path="manifest.yaml")
            assert (await http.put(put_url, content=b"name: demo\n")).status_code == 200
            await manager.commit(artifact["id"])
            get_url = await manager.get_file(artifact["id"], file_path="manifest.yaml")
            response = await http.get(get_url)
        assert response.status_code == 200 and response.text == "name: demo\n"
        assert [f["name"] for f in await manager.list_files(artifact["id"])] == ["manifest.yaml"]
        # The bytes went to SeaweedFS under the workspace dir.
        assert any((stack.dir / "seaweedfs").rglob("*.dat"))
    finally:
        await server.disconnect()


async def test_datasets_dropped_into_the_data_dir_are_listed(stack):
    for name, manifest in (
        ("cells", "name: Cells\npublic: true\n"),
        ("patients", "name: Patients\nauthorized_users: [someone@example.org]\n"),
    ):
        (stack.dir / "datasets" / name).mkdir(parents=True, exist_ok=True)
        (stack.dir / "datasets" / name / "manifest.yaml").write_text(manifest)
    admin = await _admin(stack)
    anonymous = await connect(stack.connection["server_url"])
    try:
        gateway = await admin.get_service("bioengine/bioengine-worker")
        deadline = time.monotonic() + 30
        while set(await gateway.list_datasets()) != {"cells", "patients"}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        public = await anonymous.get_service("bioengine/bioengine-worker")
        assert set(await public.list_datasets()) == {"cells"}
    finally:
        await anonymous.disconnect()
        await admin.disconnect()


def test_cli_status_and_call(stack):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # The `bioengine` console script's function, in this environment.
        return subprocess.run(
            [sys.executable, "-c", "from bioengine_worker.cli import main; main()", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    readable = run("status", "--workspace-dir", str(stack.dir))
    assert readable.returncode == 0, readable.stderr
    assert "ready" in readable.stdout and "cluster" in readable.stdout
    as_json = run("status", "--json", "--workspace-dir", str(stack.dir))
    assert json.loads(as_json.stdout)["is_ready"] is True
    called = run(
        "call",
        "bioengine-cluster",
        "get_logs",
        "--arg",
        "tail=2",
        "--json",
        "--workspace-dir",
        str(stack.dir),
    )
    assert called.returncode == 0 and len(json.loads(called.stdout)) == 2
    denied = run("call", "bioengine-worker", "get_logs", "--anonymous", "--workspace-dir", str(stack.dir))
    assert denied.returncode == 1 and "not authorized" in denied.stderr
    bad_token = run("status", "--token", "not-a-jwt", "--workspace-dir", str(stack.dir))
    assert bad_token.returncode == 3 and "refused the connection" in bad_token.stderr
    unreachable = run("status", "--server-url", "http://127.0.0.1:9", "--workspace-dir", str(stack.dir))
    assert unreachable.returncode == 3 and "Cannot reach the Hypha server" in unreachable.stderr
    listed = run("datasets", "list", "--workspace-dir", str(stack.dir))
    assert listed.returncode == 0 and "cells" in listed.stdout and "public" in listed.stdout, listed.stderr
    info = run("datasets", "info", "cells", "--json", "--workspace-dir", str(stack.dir))
    assert json.loads(info.stdout)["name"] == "Cells"
    missing = run("datasets", "info", "nope", "--workspace-dir", str(stack.dir))
    assert missing.returncode == 1 and "dataset 'nope' not found" in missing.stderr
    table = run("cluster", "status", "--workspace-dir", str(stack.dir))
    assert table.returncode == 0, table.stderr
    assert (
        "Ray cluster (single-machine" in table.stdout and "head" in table.stdout and "TOTAL" in table.stdout
    )
    bad_arg = run("call", "bioengine-worker", "get_logs", "--arg", "tail", "--workspace-dir", str(stack.dir))
    assert bad_arg.returncode == 2 and "NAME=VALUE" in bad_arg.stderr


def test_cli_apps_deploy_status_call_logs_and_stop(stack):
    """The README's app workflow through the `bioengine` CLI, against the one-command stack."""
    demo = Path(__file__).resolve().parents[2] / "apps" / "demo-app"

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from bioengine_worker.cli import main; main()", *args,
             "--workspace-dir", str(stack.dir)],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    deployed = run("apps", "deploy", str(demo), "--app-id", "cli-demo", "--json", timeout=400)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    result = json.loads(deployed.stdout)
    assert result["application_id"] == "cli-demo" and result["status"]["status"] == "RUNNING"
    assert "RUNNING" in deployed.stderr  # progress lines
    service_id = result["status"]["service_ids"][0]["websocket_service_id"]

    status = run("apps", "status", "cli-demo")
    assert status.returncode == 0 and "RUNNING" in status.stdout and "ping" in status.stdout, status.stderr
    pinged = run("call", service_id, "ping", "--json")
    assert pinged.returncode == 0 and json.loads(pinged.stdout)["status"] == "ok", pinged.stderr
    listed = run("apps", "list")
    assert listed.returncode == 0 and "/demo-app" in listed.stdout and "1.0.0" in listed.stdout
    logs = run("apps", "logs", "cli-demo", "--tail", "5")
    assert logs.returncode == 0 and "DemoApp" in logs.stdout, logs.stderr
    stopped = run("apps", "stop", "cli-demo", "--yes")
    assert stopped.returncode == 0, stopped.stderr
    gone = run("apps", "status", "cli-demo")
    assert "NOT_RUNNING" in gone.stdout
    missing = run("apps", "deploy", str(demo.parent / "no-such-app"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_ctrl_c_leaves_no_process_behind(stack):
    children = stack.descendants()
    assert len(children) >= 6  # hypha, seaweedfs and four services
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(60) == 0
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, [p.pid for p in alive]
    assert not (stack.dir / "worker.json").exists()
    assert "Stopped." in stack.text()
