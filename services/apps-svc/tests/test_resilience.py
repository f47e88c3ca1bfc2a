"""Apps through faults: a crashed Ray head, a restarted Hypha server, an update under load.

One private stack for the module: a Hypha server of its own (restarted by a test), cluster-svc
in single-machine mode (it starts the Ray head and starts a new one when it dies) and apps-svc
deploying the example apps from the repository's ``apps/`` folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from bioengine_apps._service import ARTIFACT_PROBE_TTL_S
from bioengine_common import connect
from bioengine_common.local_stack import EmbeddedHypha, short_temp_dir
from bioengine_common.testing import ADMIN_USER, TEST_WORKSPACE, launch_service, wait_for_service

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parents[3] / "apps"
#: A call that has not returned by then counts as a hang.
HANG_S = 15.0


class _Restarter:
    """What the worker's supervisor does for the services: start one again when it exits.

    Both are Ray drivers, and a driver may not survive its head's death: apps-svc crashed
    (SIGSEGV, in CI and here) at the end of ``ray.shutdown()``, likely because another of its
    threads still waited in Ray (``RayCalls`` now keeps them apart), and a thread still inside
    a GCS call without a timeout when the head dies (cluster-svc's status sample: Ray's node
    table) makes Ray end the whole process about a minute later. In production the supervisor
    starts it again and the new process adopts the head and the apps. The tests check that outcome; each restart is
    reported as a warning with the end of the console (a crash's stack dump is there).
    apps-svc's fixed client id keeps its service id (and the tests' proxies) across a restart.
    """

    def __init__(self, services: dict[str, Any]) -> None:
        self.services = services
        self.restarts: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="restarter", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for name, service in self.services.items():
                if service.alive() or self._stopping.is_set():
                    continue
                code = service.process.poll()
                tail = "\n".join(
                    line
                    for line in service.console_output().splitlines()
                    if "Failed to push error to driver" not in line
                )[-6000:]
                self.restarts.append(f"{name}: exit code {code}; console:\n{tail}")
                warnings.warn(f"{name}-svc exited (code {code}) and was started again:\n{tail}", stacklevel=1)
                service.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    server = EmbeddedHypha(tmp_path_factory.mktemp("hypha-own"), TEST_WORKSPACE, s3=False, log=lambda m: None)
    server.start()
    workspace_dir = tmp_path_factory.mktemp("worker")
    cluster = launch_service(
        "cluster", server, workspace_dir, "--mode", "single-machine", "--status-interval", "1"
    )
    apps = launch_service(
        "apps", server, workspace_dir, "--local-apps-dir", str(APPS), "--reconcile-interval", "1",
        "--client-id", "apps-resilience", "--stall-exit", "30",
    )  # fmt: skip
    restarter = _Restarter({"apps": apps, "cluster": cluster})
    yield {
        "server": server, "cluster": cluster, "apps": apps, "workspace_dir": workspace_dir,
        "restarter": restarter,
    }  # fmt: skip
    restarter.stop()
    apps.stop()
    cluster.stop(timeout=30)
    server.stop()


async def _client(server: EmbeddedHypha) -> Any:
    return await connect(server.url, workspace=server.workspace, token=server.mint(ADMIN_USER, "admin"))


@pytest.fixture
async def client(stack):
    client = await _client(stack["server"])
    yield client
    with contextlib.suppress(Exception):
        await client.disconnect()


async def _ready_apps(client: Any, stack: dict, timeout: float = 180) -> Any:
    """apps-svc, once ready (after a Hypha restart it may take a while to register again)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await wait_for_service(client, "bioengine-apps", timeout=30)
            apps = await client.get_service("bioengine-apps")
            if (await apps.get_status())["ready"]:
                return apps
        except Exception:
            pass
        assert time.monotonic() < deadline, stack["apps"].console_output()[-5000:]
        await asyncio.sleep(0.5)


async def _running(apps: Any, app_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    status: dict | str = {}
    while time.monotonic() < deadline:
        try:
            status = (await apps.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]
        except Exception as exc:  # apps-svc restarting (see _Restarter): the same id comes back
            status = f"{type(exc).__name__}: {exc}"
        else:
            if status["status"] == "RUNNING" and status["service_ids"][0]["websocket_service_id"]:
                return status
        await asyncio.sleep(0.5)
    raise AssertionError(f"{app_id} not RUNNING after {timeout:.0f} s: {status}")


async def _answers(client: Any, service_id: str, method: str, timeout: float = 60, **kwargs: Any) -> Any:
    """The first successful call of ``method`` on the app's Hypha service (retried until timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            app = await client.get_service(service_id)
            return await asyncio.wait_for(getattr(app, method)(**kwargs), 10)
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{service_id}.{method} never answered: {exc}") from exc
            await asyncio.sleep(0.5)


async def test_a_missing_artifact_store_shows_in_the_status_and_fails_artifact_calls_at_once(stack, client):
    apps = await _ready_apps(client, stack)  # this server has no S3 store, so no artifact manager
    deadline = time.monotonic() + 30
    while (status := await apps.get_status())["dependencies"]["artifact_store"]["ok"] is None:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.5)
    store = status["dependencies"]["artifact_store"]
    assert store["ok"] is False and "no artifact manager" in store["reason"], store
    assert status["ready"] is True and status["ready_for"]["apps"] is True
    assert status["ready_for"]["artifacts"] is False and status["ready_for"]["deploy_from_artifact"] is False
    with pytest.raises(Exception, match=r"app artifacts are unavailable: .*no artifact manager"):
        await asyncio.wait_for(apps.list_apps(), HANG_S)
    # A deploy from an artifact (not a local app) fails as clearly: at once while the last probe
    # (within its TTL) saw the store down, and once that probe is older, by a probe made after
    # its fetch failed (a deploy no longer probes before fetching).
    apps_before = set(await apps.get_app_status(logs_tail=0))
    for pause in (0, ARTIFACT_PROBE_TTL_S):
        await asyncio.sleep(pause)
        with pytest.raises(Exception, match=r"app artifacts are unavailable: .*no artifact manager"):
            await asyncio.wait_for(apps.deploy_app(artifact_id="not-a-local-app"), HANG_S)
    assert set(await apps.get_app_status(logs_tail=0)) == apps_before  # no app recorded


async def test_apps_are_redeployed_after_the_ray_head_crashes(stack, client):
    apps = await _ready_apps(client, stack)
    await apps.deploy_app(artifact_id="demo-app", application_id="survivor")
    before = await _running(apps, "survivor")
    assert (await _answers(client, before["service_ids"][0]["websocket_service_id"], "ping"))[
        "status"
    ] == "ok"
    head_file = short_temp_dir(stack["workspace_dir"] / "ray") / "bioengine-head.json"
    head = json.loads(head_file.read_text())

    # A crash: the whole head (its process group) killed at once.
    killed = time.monotonic()
    os.killpg(head["pid"], signal.SIGKILL)
    restarted = lambda: bool(stack["restarter"].restarts)  # noqa: E731
    seen_down: dict = {}
    last_error = ""
    while time.monotonic() - killed < 60 and not seen_down and not restarted():
        try:
            statuses = await asyncio.wait_for(apps.get_app_status(logs_tail=0), HANG_S)
        except TimeoutError:
            raise AssertionError(
                f"get_app_status hung for {HANG_S:g} s while the Ray head was down"
            ) from None
        except Exception as exc:  # the process ended (see _Restarter): its turn
            last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.5)
            continue
        if statuses["survivor"]["status"] == "UNAVAILABLE":
            seen_down = statuses["survivor"]
        await asyncio.sleep(0.5)
    if not restarted():
        assert seen_down, f"the head's loss never showed in the app's status (last error: {last_error})"
        # Which is seen first depends on whether the head probe or a Serve call notices first.
        assert seen_down["message"].startswith(("Ray head down since ", "Ray cluster not reachable")), (
            seen_down
        )
        assert "last seen " in seen_down["message"]
        assert seen_down["display_name"] == before["display_name"]  # what apps-svc knows meanwhile
    # apps-svc's own probe of the head says so too (or the head is back already): the probe may
    # run a moment after the Serve call that marked the app.
    deadline = time.monotonic() + 30
    while not restarted():
        try:
            ray_status = (await apps.get_status())["dependencies"]["ray"]
        except Exception as exc:  # the process ended (see _Restarter): its turn
            ray_status = {"error": f"{type(exc).__name__}: {exc}"}
        if ray_status.get("ok") is False or json.loads(head_file.read_text())["pid"] != head["pid"]:
            break
        assert time.monotonic() < deadline, ray_status
        await asyncio.sleep(0.5)

    after = await _running(apps, "survivor", timeout=180)
    service_id = after["service_ids"][0]["websocket_service_id"]
    assert (await _answers(client, service_id, "ping"))["status"] == "ok"
    back_after = time.monotonic() - killed
    new_head = json.loads(head_file.read_text())
    assert new_head["pid"] != head["pid"]
    assert "redeployed after the Ray head restarted at " in after["message"], after
    assert after["recovery_note"] in after["message"]
    decisions = [d for d in (await apps.get_status())["recent_decisions"] if d["action"] == "head_restarted"]
    assert any(
        d["message"].startswith("Ray head restarted at") and "survivor" in d["message"] for d in decisions
    ), decisions
    print(f"\nhead killed -> app answering again through Hypha: {back_after:.1f} s")


async def test_app_services_come_back_after_a_hypha_restart(stack, client):
    apps = await _ready_apps(client, stack)
    await apps.deploy_app(artifact_id="demo-app", application_id="blinker")
    before = await _running(apps, "blinker")
    service_id = before["service_ids"][0]["websocket_service_id"]
    assert (await _answers(client, service_id, "ping"))["status"] == "ok"
    await client.disconnect()

    # Twice: hypha-rpc's workspace-manager proxy used to miss the first restart only.
    replicas = before["deployments"]["DemoApp"]["replica_ids"]
    for outage in (3.0, 15.0):
        stack["server"].stop_server()
        await asyncio.sleep(outage)
        stack["server"].start_server()
        restarted = time.monotonic()
        fresh = await _client(stack["server"])
        try:
            # The same replica registers the same service again, by itself.
            assert (await _answers(fresh, service_id, "ping", timeout=90))["status"] == "ok"
            print(f"\nHypha back after {outage:.0f} s -> app answering: {time.monotonic() - restarted:.1f} s")
            apps = await _ready_apps(fresh, stack)
            after = await _running(apps, "blinker")
            assert after["deployments"]["DemoApp"]["replica_ids"] == replicas
            assert after["service_ids"][0]["websocket_service_id"] == service_id
        finally:
            await fresh.disconnect()


async def _rolled_out(apps: Any, app_id: str, changed: str, before: dict, timeout: float = 120) -> dict:
    """The app's status once ``changed`` has exactly one replica, a new one, and the app runs."""
    deadline = time.monotonic() + timeout
    old = set(before["deployments"][changed]["replica_ids"])
    while True:
        status = await _running(apps, app_id)
        ids = status["deployments"][changed]["replica_ids"]
        if len(ids) == 1 and not old & set(ids):
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.5)


async def test_an_update_keeps_the_app_answering_and_restarts_only_what_changed(stack, client):
    apps = await _ready_apps(client, stack)
    kwargs = {"CompositionDeployment": {"demo_input": "v1"}, "Deployment2": {"start_number": 100}}
    await apps.deploy_app(artifact_id="composition-app", application_id="rolling", application_kwargs=kwargs)
    first = await _running(apps, "rolling")
    service_id = first["service_ids"][0]["websocket_service_id"]
    assert "Result: 101" in await _answers(client, service_id, "calculate_result", number=1)
    app = await client.get_service(service_id)
    answers: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def prober() -> None:
        while not stop.is_set():
            try:
                answers.append(await asyncio.wait_for(app.calculate_result(number=1), HANG_S))
            except Exception as exc:
                failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.2)

    probing = asyncio.create_task(prober())
    try:
        # One sub-deployment's kwargs: only its replica is replaced.
        kwargs["Deployment2"] = {"start_number": 200}
        await apps.deploy_app(
            artifact_id="composition-app", application_id="rolling", application_kwargs=kwargs
        )
        second = await _rolled_out(apps, "rolling", "Deployment2", first)
        # The entry deployment's kwargs: only the entry's replica is replaced.
        kwargs["CompositionDeployment"] = {"demo_input": "v2"}
        await apps.deploy_app(
            artifact_id="composition-app", application_id="rolling", application_kwargs=kwargs
        )
        third = await _rolled_out(apps, "rolling", "CompositionDeployment", second)
        await asyncio.sleep(2)
    finally:
        stop.set()
        await probing
    print(f"\n{len(answers)} calls answered during two updates, {len(failures)} failed: {failures[:5]}")
    replicas = [{n: d["replica_ids"] for n, d in s["deployments"].items()} for s in (first, second, third)]
    unchanged = ("BioEngineProxy", "Deployment1")
    assert all(replicas[0][n] == replicas[1][n] == replicas[2][n] for n in unchanged), replicas
    assert replicas[1]["CompositionDeployment"] == replicas[0]["CompositionDeployment"], replicas
    assert replicas[2]["Deployment2"] == replicas[1]["Deployment2"], replicas
    assert third["service_ids"][0]["websocket_service_id"] == service_id
    assert failures == []
    assert "Result: 101" in answers[0] and "Result: 201, Demo string: v2" in answers[-1]
