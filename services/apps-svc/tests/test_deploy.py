"""Deploying apps on a real Ray Serve and calling them through their own Hypha services."""

import asyncio
import json
import os
import signal
import time

import pytest

from bioengine_common import connect
from bioengine_common.testing import launch_service

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-value-42"


@pytest.fixture
async def other_user(hypha_server):
    client = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("someone-else")
    )
    yield client
    await client.disconnect()


@pytest.fixture(scope="module")
def deployed():
    """App ids deployed by earlier tests of this module (tests build on each other)."""
    return {}


async def test_demo_app_from_local_folder_runs_and_answers(apps, admin_client, wait_app, deployed):
    app_id = await apps.deploy_app(
        artifact_id="demo-app",
        application_id="demo-local",
        application_env_vars={"DemoApp": {"PLAIN_SETTING": "plain", "_API_KEY": SECRET}},
    )
    assert app_id == "demo-local"
    status = await wait_app(apps, app_id)
    assert status["deployments"]["DemoApp"]["status"] == "HEALTHY"
    assert status["deployments"]["DemoApp"]["replica_states"] == {"RUNNING": 1}
    assert set(status["available_methods"]) == {"ping", "ascii_art", "read_env"}
    service_id = status["service_ids"][0]["websocket_service_id"]
    assert service_id.startswith(f"{admin_client.config.workspace}/") and service_id.endswith(":demo-local")
    app = await admin_client.get_service(service_id)
    answer = await app.ping()
    assert answer["status"] == "ok" and answer["uptime"] >= 0 and answer["timestamp"]
    art = await app.ascii_art()
    assert art and all(isinstance(line, str) for line in art)
    # Env vars reach the replica; the secret too, without its underscore.
    assert (await app.read_env("PLAIN_SETTING"))["value"] == "plain"
    assert (await app.read_env("API_KEY"))["value"] == SECRET
    home = (await app.read_env("HOME"))["value"]
    assert home.endswith("/apps/demo-local/home") and (await app.read_env("HOME"))["cwd"] == home
    deployed["demo"] = service_id


async def test_secrets_are_never_shown(apps, deployed):
    status = (await apps.get_app_status(application_ids=["demo-local"], logs_tail=-1))["demo-local"]
    assert status["application_env_vars"] == {"DemoApp": {"PLAIN_SETTING": "plain", "_API_KEY": "*****"}}
    assert SECRET not in json.dumps(status)
    logs = status["deployments"]["DemoApp"]["logs"]
    assert logs and all("stdout" in entry for entry in logs.values())
    assert SECRET not in json.dumps(await apps.get_logs(tail=1000))


async def test_per_method_permissions(admin_client, other_user, deployed):
    as_other = await other_user.get_service(deployed["demo"])
    assert (await as_other.ping())["status"] == "ok"  # '*' rule: everyone
    with pytest.raises(Exception, match="may not call 'read_env'"):
        await as_other.read_env("HOME")
    as_admin = await admin_client.get_service(deployed["demo"])
    assert (await as_admin.read_env("PLAIN_SETTING"))["value"] == "plain"


async def test_composition_app_combines_its_kwargs(apps, admin_client, wait_app, deployed):
    kwargs = {
        "CompositionDeployment": {"demo_input": "Test Hello World!"},
        "Deployment2": {"start_number": 100},
    }
    app_id = await apps.deploy_app(
        artifact_id="composition-app", application_id="composition", application_kwargs=kwargs
    )
    status = await wait_app(apps, app_id)
    assert set(status["deployments"]) == {
        "BioEngineProxy",
        "CompositionDeployment",
        "Deployment1",
        "Deployment2",
    }
    assert all(d["status"] == "HEALTHY" for d in status["deployments"].values())
    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    assert await app.ping() == "pong"
    result = await app.calculate_result(number=42)
    assert "Uptime:" in result and "Result: 142" in result and "Demo string: Test Hello World!" in result
    deployed["composition"] = status


async def test_same_deploy_again_changes_nothing_and_new_kwargs_redeploy(
    apps, admin_client, wait_app, deployed
):
    before = deployed["composition"]["deployments"]
    assert await apps.deploy_app(artifact_id="composition-app", application_id="composition") == "composition"
    await asyncio.sleep(3)
    status = (await apps.get_app_status(application_ids=["composition"], logs_tail=0))["composition"]
    assert status["status"] == "RUNNING"
    assert {n: d["replica_ids"] for n, d in status["deployments"].items()} == {
        n: d["replica_ids"] for n, d in before.items()
    }
    # Omitted parameters keep their values: only Deployment2's kwargs change.
    await apps.deploy_app(
        artifact_id="composition-app",
        application_id="composition",
        application_kwargs={
            "CompositionDeployment": {"demo_input": "Test Hello World!"},
            "Deployment2": {"start_number": 200},
        },
    )
    deadline = time.monotonic() + 90
    while True:
        status = await wait_app(apps, "composition")
        app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
        try:
            if "Result: 242" in await app.calculate_result(number=42):
                break
        except Exception:  # replicas being replaced
            pass
        assert time.monotonic() < deadline, status
        await asyncio.sleep(1)
    assert status["application_kwargs"]["Deployment2"] == {"start_number": 200}


def _app_files(source: str, manifest_extra: str = "", app_id: str = "broken-app") -> list[dict]:
    manifest = (
        f"name: Broken\nid: {app_id}\nid_emoji: x\ndescription: test app\ntype: ray-serve\n"
        f"deployments:\n  - broken:Broken\n{manifest_extra}"
    )
    return [
        {"name": "manifest.yaml", "content": manifest, "type": "text"},
        {"name": "broken.py", "content": source, "type": "text"},
    ]


GOOD_HEADER = "from ray import serve\nfrom hypha_rpc.utils.schema import schema_method\n\n"


async def test_bad_manifest_fields_are_named(apps):
    files = [{"name": "manifest.yaml", "content": "name: x\nid: Bad_Id\ntype: docker\n", "type": "text"}]
    with pytest.raises(Exception) as info:
        await apps.upload_app(files=files)
    message = str(info.value)
    for expected in (
        "id_emoji: required",
        "description: required",
        "deployments: required",
        "id: 'Bad_Id'",
        "type: must be 'ray-serve'",
    ):
        assert expected in message


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("def broken(:\n", "broken.py line 1: syntax error"),
        (GOOD_HEADER + "class Other:\n    pass\n", "'broken.py' defines no class 'Broken'"),
        (
            GOOD_HEADER
            + "class Broken:\n    @schema_method\n    async def f(self) -> int:\n        return 1\n",
            "not decorated with @serve.deployment",
        ),
    ],
)
async def test_broken_code_is_refused_with_the_reason(apps, source, error):
    artifact_id = await apps.upload_app(files=_app_files(source))
    with pytest.raises(Exception, match=error):
        await apps.deploy_app(artifact_id=artifact_id, application_id="broken")


async def test_exception_in_init_shows_its_traceback_and_other_apps_keep_running(
    apps, admin_client, wait_app, deployed
):
    source = GOOD_HEADER + (
        "@serve.deployment(ray_actor_options={'num_cpus': 0.1})\nclass Broken:\n    def __init__(self):\n"
        "        raise ValueError('model weights missing: boom')\n\n"
        "    @schema_method\n    async def f(self) -> int:\n        return 1\n"
    )
    artifact_id = await apps.upload_app(files=_app_files(source, app_id="init-fails"))
    app_id = await apps.deploy_app(artifact_id=artifact_id, application_id="init-fails")
    status = await wait_app(apps, app_id, states=("DEPLOY_FAILED", "UNHEALTHY"), timeout=120)
    assert "model weights missing: boom" in status["deployments"]["Broken"]["message"]
    assert "Traceback" in status["deployments"]["Broken"]["message"]
    demo = await admin_client.get_service(deployed["demo"])
    assert (await demo.ping())["status"] == "ok"
    await apps.stop_app(application_id=app_id)


async def test_an_error_while_importing_the_app_is_returned_and_nothing_is_kept(apps):
    source = GOOD_HEADER + (
        "raise RuntimeError('weights file not found at import')\n\n"
        "@serve.deployment(ray_actor_options={'num_cpus': 0.1})\nclass Broken:\n"
        "    @schema_method\n    async def f(self) -> int:\n        return 1\n"
    )
    artifact_id = await apps.upload_app(files=_app_files(source, app_id="import-fails"))
    with pytest.raises(
        Exception, match=r"building app 'import-fails' failed: .*weights file not found at import"
    ):
        await apps.deploy_app(artifact_id=artifact_id, application_id="import-fails")
    assert "import-fails" not in (await apps.get_status())["apps"]
    status = (await apps.get_app_status(application_ids=["import-fails"], logs_tail=0))["import-fails"]
    assert status["status"] == "NOT_RUNNING"


async def test_an_app_that_cannot_fit_is_refused(apps):
    source = GOOD_HEADER + (
        "@serve.deployment(ray_actor_options={'num_cpus': 64})\nclass Broken:\n"
        "    @schema_method\n    async def f(self) -> int:\n        return 1\n"
    )
    artifact_id = await apps.upload_app(files=_app_files(source, app_id="too-big"))
    with pytest.raises(Exception, match=r"cannot be deployed: .*64"):
        await apps.deploy_app(artifact_id=artifact_id, application_id="too-big")
    assert "too-big" not in (await apps.get_status())["apps"]


async def test_apps_survive_a_killed_apps_service(
    apps_process, apps, admin_client, hypha_server, apps_workspace, wait_app, deployed
):
    old = apps_process["process"]
    os.kill(old.pid, signal.SIGKILL)
    old.process.wait(10)
    # The app answers through its own Hypha service while apps-svc is gone.
    demo = await admin_client.get_service(deployed["demo"])
    assert (await demo.ping())["status"] == "ok"
    apps_process["process"] = launch_service(
        "apps",
        hypha_server,
        apps_workspace,
        "--local-apps-dir",
        str(apps_process["apps_root"]),
        "--reconcile-interval",
        "1",
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            fresh = await admin_client.get_service("bioengine-apps", {"mode": "last"})
            if (await fresh.get_status())["ready"]:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, apps_process["process"].console_output()
        await asyncio.sleep(0.5)
    statuses = await fresh.get_app_status(logs_tail=0)
    assert {"demo-local", "composition"} <= set(statuses)
    demo_status = statuses["demo-local"]
    assert (
        demo_status["status"] == "RUNNING"
        and demo_status["service_ids"][0]["websocket_service_id"] == deployed["demo"]
    )
    assert demo_status["application_env_vars"]["DemoApp"]["_API_KEY"] == "*****"
    assert statuses["composition"]["application_kwargs"]["Deployment2"] == {"start_number": 200}
    # ... and it can still control them.
    await fresh.stop_app(application_id="demo-local")
    status = await wait_app(fresh, "demo-local", states=("NOT_RUNNING",))
    assert "No app 'demo-local'" in status["message"]
    # Serve removes the replicas in the background; the app's Hypha service goes with them.
    deadline = time.monotonic() + 60
    while True:
        try:
            await admin_client.get_service(deployed["demo"])
        except Exception as exc:
            assert "not found" in str(exc).lower() or "not exist" in str(exc).lower(), exc
            break
        assert time.monotonic() < deadline, "the stopped app's Hypha service is still registered"
        await asyncio.sleep(1)


async def test_stop_all_apps_removes_every_app(apps_process, admin_client):
    fresh = await admin_client.get_service("bioengine-apps", {"mode": "last"})
    result = await fresh.stop_all_apps(timeout_seconds=60)
    assert "composition" in result["stopped"] and result["still_running"] == []
    assert (await fresh.get_app_status(logs_tail=0)) == {}
    assert (await fresh.get_status())["apps"] == []
