"""Apps through the public gateway: waiting for them, updating them, stopping them twice.

Real Hypha (with its artifact store), the session Ray head (cluster-svc in external-cluster
mode), apps-svc deploying the repository's example apps from ``apps/`` and the gateway
``bioengine-worker``. Every call goes through the gateway, as a user's would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bioengine_common import connect
from bioengine_common.testing import launch_service, ready_worker, stop_all_apps

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parents[2] / "apps"
HEADER = "import time\nfrom ray import serve\nfrom hypha_rpc.utils.schema import schema_method\n\n"


def _app_files(app_id: str, init_body: str) -> list[dict]:
    manifest = (
        f"name: Test app\nid: {app_id}\nid_emoji: x\ndescription: test app\ntype: ray-serve\n"
        "deployments:\n  - slow:Slow\n"
    )
    source = HEADER + (
        "@serve.deployment(ray_actor_options={'num_cpus': 0.1})\nclass Slow:\n    def __init__(self):\n"
        f"        {init_body}\n\n"
        "    @schema_method\n    async def f(self) -> int:\n        return 1\n"
    )
    return [
        {"name": "manifest.yaml", "content": manifest, "type": "text"},
        {"name": "slow.py", "content": source, "type": "text"},
    ]


@pytest.fixture(scope="module")
def stack(hypha_server, cluster_process, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("app-updates")
    apps = launch_service(
        "apps", hypha_server, workspace, "--local-apps-dir", str(APPS), "--reconcile-interval", "1"
    )
    gateway = launch_service("gateway", hypha_server, workspace, "--status-interval", "1")
    yield {"apps": apps, "gateway": gateway}
    stop_all_apps(hypha_server)
    gateway.stop()
    apps.stop()


@pytest.fixture
async def worker(stack, admin_client):
    return await ready_worker(admin_client, stack["apps"], timeout=120)


async def _status(worker: Any, app_id: str) -> dict:
    return (await worker.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]


def _replicas(status: dict) -> dict[str, list[str]]:
    return {name: d["replica_ids"] for name, d in status["deployments"].items()}


async def _rolled_out(worker: Any, app_id: str, changed: str, before: dict, timeout: float = 120) -> dict:
    """The app's status once ``changed`` runs exactly one replica, a new one, and the app runs."""
    deadline = time.monotonic() + timeout
    old = set(before["deployments"][changed]["replica_ids"])
    while True:
        status = await worker.wait_for_app(application_id=app_id, timeout=60)
        ids = status["deployments"][changed]["replica_ids"]
        if len(ids) == 1 and not old & set(ids):
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.5)


@pytest.mark.timeout(600)
async def test_waiting_sees_running_only_with_a_service_and_updates_keep_what_did_not_change(
    worker, admin_client, hypha_server
):
    kwargs = {"CompositionDeployment": {"demo_input": "v1"}, "Deployment2": {"start_number": 100}}
    app_id = await worker.deploy_app(
        artifact_id="composition-app", application_id="updates", application_kwargs=kwargs
    )
    assert app_id == "updates"
    # Poll the status as fast as it answers while waiting: RUNNING never comes without a service.
    seen: list[tuple[str, Any]] = []
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            status = await _status(worker, app_id)
            seen.append((status["status"], status["service_ids"][0]["websocket_service_id"]))
            await asyncio.sleep(0.05)

    polling = asyncio.create_task(poll())
    try:
        first = await worker.wait_for_app(application_id=app_id, timeout=240)
        await asyncio.sleep(1)
    finally:
        done.set()
        await polling
    service_id = first["service_ids"][0]["websocket_service_id"]
    assert first["status"] == "RUNNING" and service_id and service_id.endswith(":updates")
    assert first["reason"] is None
    assert [s for s in seen if s[0] == "RUNNING" and not s[1]] == []
    assert any(state != "RUNNING" for state, _ in seen), seen  # the poll did see it deploying
    app = await admin_client.get_service(service_id)
    assert "Result: 101" in await app.calculate_result(number=1)
    # Readable figures: no GPU fields on a cluster without GPUs, rounded resources.
    assert "gpu_enabled" not in first and "num_gpus" not in first["application_resources"]
    assert all(round(v, 3) == v for v in first["application_resources"].values())

    # A no-op update changes nothing, last_updated_at included; wait=True returns at once.
    assert await worker.deploy_app(artifact_id="composition-app", application_id=app_id, wait=True) == app_id
    same = await _status(worker, app_id)
    assert same["last_updated_at"] == first["last_updated_at"]
    assert _replicas(same) == _replicas(first)

    # One deployment's kwargs: only its replica is replaced, the service id stays.
    kwargs["Deployment2"] = {"start_number": 200}
    await worker.deploy_app(
        artifact_id="composition-app", application_id=app_id, application_kwargs=kwargs, wait=True
    )
    second = await _rolled_out(worker, app_id, "Deployment2", first)
    assert second["last_updated_at"] > first["last_updated_at"]
    for name in ("BioEngineProxy", "CompositionDeployment", "Deployment1"):
        assert _replicas(second)[name] == _replicas(first)[name], (name, _replicas(first), _replicas(second))
    assert second["service_ids"][0]["websocket_service_id"] == service_id
    assert "Result: 201" in await app.calculate_result(number=1)

    # One deployment's env vars: only its replica is replaced.
    await worker.deploy_app(
        artifact_id="composition-app",
        application_id=app_id,
        application_env_vars={"Deployment1": {"SOME_SETTING": "on"}},
        wait=True,
    )
    third = await _rolled_out(worker, app_id, "Deployment1", second)
    for name in ("BioEngineProxy", "CompositionDeployment", "Deployment2"):
        assert _replicas(third)[name] == _replicas(second)[name], (name, _replicas(second), _replicas(third))
    assert third["service_ids"][0]["websocket_service_id"] == service_id
    assert third["application_kwargs"] == kwargs  # left out: kept

    # Access rules and the call limit: the proxy takes them on in place, nothing restarts.
    await worker.deploy_app(
        artifact_id="composition-app",
        application_id=app_id,
        authorized_users={"*": ["*"], "calculate_result": ["someone@example.org"]},
        max_ongoing_requests=5,
        wait=True,
    )
    user = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("plain-user")
    )
    try:
        as_user = await user.get_service(service_id)
        assert await as_user.ping() == "pong"
        deadline = time.monotonic() + 60
        while True:
            try:
                await as_user.calculate_result(number=1)
            except Exception as exc:
                assert "may not call 'calculate_result'" in str(exc), exc
                break
            assert time.monotonic() < deadline, "the new access rule never applied"
            await asyncio.sleep(0.5)
    finally:
        await user.disconnect()
    fourth = await worker.wait_for_app(application_id=app_id, timeout=60)
    assert _replicas(fourth) == _replicas(third)
    assert fourth["service_ids"][0]["websocket_service_id"] == service_id
    assert fourth["max_ongoing_requests"] == 5
    assert "Result: 201" in await app.calculate_result(number=1)  # the admin keeps access

    # Stopping twice: the second time is a plain answer, not an error.
    first_stop = await worker.stop_app(application_id=app_id)
    assert first_stop["status"] == "stopping"
    again = await worker.stop_app(application_id=app_id)
    assert again["status"] in ("already stopping", "already stopped"), again
    deadline = time.monotonic() + 60
    while (await _status(worker, app_id))["status"] != "NOT_RUNNING" or again["status"] != "already stopped":
        assert time.monotonic() < deadline, again
        await asyncio.sleep(1)
        again = await worker.stop_app(application_id=app_id)
    assert again["message"].startswith(f"app '{app_id}' was stopped at ")
    # An app never deployed here is still an error that names it.
    with pytest.raises(Exception, match="no app 'never-deployed' was deployed by this worker") as refused:
        await worker.stop_app(application_id="never-deployed")
    # The gateway passes apps-svc's error on as the same type with its one line, not apps-svc's
    # traceback inside its own.
    assert "bioengine_common.errors.NotFound: no app 'never-deployed'" in str(refused.value)
    assert "bioengine_apps" not in str(refused.value)
    with pytest.raises(Exception, match="no app 'never-deployed' is deployed"):
        await worker.wait_for_app(application_id="never-deployed", timeout=5)


@pytest.mark.timeout(400)
async def test_waiting_reports_the_failure_reason_and_the_last_state_on_timeout(worker):
    failing = await worker.upload_app(
        files=_app_files("init-raises", "raise ValueError('model weights missing: boom')")
    )
    with pytest.raises(
        Exception, match=r"is (DEPLOY_FAILED|UNHEALTHY): Slow: ValueError: model weights missing: boom"
    ) as failed:
        await worker.deploy_app(artifact_id=failing, application_id="init-raises", wait=True, timeout=240)
    assert "bioengine_common.errors.AppFailed: app 'init-raises' is" in str(failed.value)
    assert "bioengine_apps" not in str(failed.value)  # one line, not apps-svc's traceback too
    status = await _status(worker, "init-raises")
    assert status["status"] in ("DEPLOY_FAILED", "UNHEALTHY")
    assert status["reason"] == "Slow: ValueError: model weights missing: boom"
    assert "Traceback" in status["deployments"]["Slow"]["message"]  # the detail stays where it was
    assert (await worker.stop_app(application_id="init-raises"))["status"] == "stopping"

    slow = await worker.upload_app(files=_app_files("init-sleeps", "time.sleep(3600)"))
    app_id = await worker.deploy_app(artifact_id=slow, application_id="init-sleeps")
    with pytest.raises(
        Exception, match=r"'init-sleeps' is not running after 3 s; last state (DEPLOYING|NOT_STARTED)"
    ):
        await worker.wait_for_app(application_id=app_id, timeout=3)
    await worker.stop_app(application_id=app_id)


async def test_waiting_is_for_admins(hypha_server, stack, worker):
    client = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("plain-user")
    )
    try:
        user_worker = await client.get_service("bioengine-worker")
        with pytest.raises(Exception, match="admin only"):
            await user_worker.wait_for_app(application_id="whatever", timeout=1)
    finally:
        await client.disconnect()
