"""Deploying manifest-0.6.0 apps (the ``bioengine`` SDK) on a real Ray Serve and calling them
through their own Hypha services: the example apps, composition, lifecycle, pip, capacity.

One stack for the module: apps-svc deploys from a local apps folder holding copies of
``apps/demo-app-0.6`` and ``apps/composition-app-0.6`` and a few broken apps made here.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from bioengine_common.testing import launch_service, stop_all_apps

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]

CYCLE_APP = """
import bioengine


@bioengine.app(num_cpus=0)
class Egg:
    def __init__(self, chicken: "Chicken"):
        self.chicken = chicken

    @bioengine.method
    async def hatch(self) -> str:
        return "egg"


@bioengine.app(num_cpus=0)
class Chicken:
    def __init__(self, egg: Egg):
        self.egg = egg

    @bioengine.method
    async def lay(self) -> str:
        return "chicken"
"""

IMPORT_ERROR_APP = """
import bioengine
import numpy_that_is_not_installed  # a pip package imported at module level


@bioengine.app(num_cpus=0)
class Needy:
    @bioengine.method
    async def ping(self) -> str:
        return "pong"
"""

BAD_PIP_APP = """
import bioengine


@bioengine.app(num_cpus=0.1, pip=["bioengine-no-such-package-xyz==0.0.1"])
class Unbuildable:
    @bioengine.method
    async def ping(self) -> str:
        return "pong"
"""

GPU_APP = """
import bioengine


@bioengine.app(num_cpus=0, gpu_memory_mb=2048)
class Segmenter:
    @bioengine.method
    async def device(self) -> str:
        import os

        return "gpu" if os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, "") else "cpu"
"""


RELATIVE_READ_APP = """
import bioengine

with open("requirements-deployment.txt") as handle:  # a relative path: the app's folder
    PIP = [line.strip() for line in handle if line.strip()]


@bioengine.app(num_cpus=0.1, pip=PIP)
class Reader:
    @bioengine.method
    async def requirements(self) -> list:
        import humanize  # installed from the file read at import

        return PIP + [humanize.__version__]
"""


def _manifest(alias: str, entry: str) -> str:
    return (
        f"format_version: 0.6.0\nname: {alias}\nid: {alias}\nid_emoji: x\ndescription: test app\n"
        f"type: ray-serve\nversion: '1.0.0'\nentry: {entry}\n"
    )


@pytest.fixture(scope="module")
def apps_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("apps-06")
    for name in ("demo-app-0.6", "composition-app-0.6"):
        shutil.copytree(REPO / "apps" / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for alias, module, source, cls in (
        ("cycle-06", "farm", CYCLE_APP, "Chicken"),
        ("import-error-06", "needy", IMPORT_ERROR_APP, "Needy"),
        ("bad-pip-06", "unbuildable", BAD_PIP_APP, "Unbuildable"),
        ("gpu-06", "segmenter", GPU_APP, "Segmenter"),
        ("relative-06", "reader", RELATIVE_READ_APP, "Reader"),
    ):
        (root / alias).mkdir()
        (root / alias / f"{module}.py").write_text(source)
        (root / alias / "manifest.yaml").write_text(_manifest(alias, f"{module}:{cls}"))
    (root / "relative-06" / "requirements-deployment.txt").write_text("humanize==4.16.0\n")
    return root


def _pip_envs(ray_head) -> set[str]:
    pip = Path(ray_head.temp_dir) / "session_latest" / "runtime_resources" / "pip"
    return {p.name for p in pip.iterdir() if p.is_dir()} if pip.is_dir() else set()


@pytest.fixture(scope="module")
def pip_envs_before(ray_head) -> set[str]:
    """The pip environments on the shared session head before this module (other modules' apps
    leave theirs)."""
    return _pip_envs(ray_head)


@pytest.fixture(scope="module")
def apps_process(hypha_server, cluster_process, apps_workspace, apps_root, pip_envs_before):
    # pip_envs_before: taken before this module's apps-svc deploys anything.
    process = launch_service(
        "apps", hypha_server, apps_workspace, "--local-apps-dir", str(apps_root), "--reconcile-interval", "1"
    )
    yield {"process": process, "apps_root": apps_root}
    stop_all_apps(hypha_server)
    process.stop()


@pytest.fixture(scope="module")
def deployed():
    """Service ids of apps deployed by earlier tests of this module (tests build on each other)."""
    return {}


async def _status(apps, app_id: str) -> dict:
    return (await apps.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]


async def test_demo_app_deploys_with_its_pip_package_and_answers(
    apps, admin_client, wait_app, deployed, apps_workspace
):
    app_id = await apps.deploy_app(
        artifact_id="demo-app-0.6",
        application_id="demo-06",
        application_kwargs={"DemoApp": {"greeting": "Hello"}},
        max_ongoing_requests=2,
    )
    # The first deploy installs humanize into a new environment: Ray's pip runs meanwhile.
    status = await wait_app(apps, app_id, ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"), timeout=300)
    assert status["status"] == "RUNNING", status
    assert status["deployments"]["DemoApp"]["status"] == "HEALTHY"
    assert set(status["available_methods"]) == {
        "ping", "greet", "natural_size", "whoami", "wait", "set_fail_health_check", "list_datasets",
    }  # fmt: skip
    service_id = status["service_ids"][0]["websocket_service_id"]
    app = await admin_client.get_service(service_id)
    assert await app.greet(name="world") == "Hello, world!"
    size = await app.natural_size(size=3_000_000)
    assert size == {"text": "3.0 MB", "humanize_version": "4.16.0"}  # the pip package, in the replica
    assert await app.list_datasets() == {}  # no datasets server in this stack
    ping = await app.ping()
    assert ping["initialised"] and ping["style"] == "friendly"
    deadline = time.monotonic() + 30
    while not (await app.ping())["smoke_test_passed"]:
        assert time.monotonic() < deadline, "the smoke test did not pass"
        await asyncio.sleep(0.5)
    # Only the code reaches the replicas: not the frontend, README or manifest.
    code_dirs = list((apps_workspace / "apps" / "demo-06").glob("code-*"))
    assert [sorted(p.name for p in d.iterdir()) for d in code_dirs] == [["demo_app.py"]]
    deployed["demo"] = service_id


async def test_context_methods_get_the_callers_context(admin_client, deployed):
    app = await admin_client.get_service(deployed["demo"])
    who = await app.whoami()
    assert who["workspace"] == admin_client.config.workspace and who["id"]


async def test_calls_over_capacity_are_refused_at_once(admin_client, deployed):
    app = await admin_client.get_service(deployed["demo"])
    busy = [asyncio.ensure_future(app.wait(seconds=4)) for _ in range(2)]
    await asyncio.sleep(1.5)
    assert await app.get_load() == 1.0
    with pytest.raises(Exception, match=r"maximum of 2 concurrent requests"):
        await app.greet(name="late")
    assert await asyncio.gather(*busy) == [4, 4]
    assert await app.get_load() == 0.0
    assert await app.greet(name="on time") == "Hello, on time!"


async def test_a_failing_health_check_replaces_the_replica(apps, admin_client, deployed):
    app = await admin_client.get_service(deployed["demo"])
    pid = (await app.ping())["pid"]
    assert await app.set_fail_health_check(fail=True) is True
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, await _status(apps, "demo-06")
        try:
            ping = await app.ping()
            if ping["pid"] != pid:
                break
        except Exception:  # the replica is being replaced
            pass
        await asyncio.sleep(1)
    assert ping["initialised"]  # the new replica ran its own async_init


async def test_a_changed_kwarg_redeploys(apps, admin_client, wait_app, deployed):
    await apps.deploy_app(
        artifact_id="demo-app-0.6",
        application_id="demo-06",
        application_kwargs={"DemoApp": {"greeting": "Hi"}},
    )
    deadline = time.monotonic() + 180
    app = await admin_client.get_service(deployed["demo"])
    while True:
        assert time.monotonic() < deadline, await _status(apps, "demo-06")
        try:
            if await app.greet(name="again") == "Hi, again!":
                break
        except Exception:
            app = await admin_client.get_service(
                (await wait_app(apps, "demo-06"))["service_ids"][0]["websocket_service_id"]
            )
        await asyncio.sleep(1)
    # Unknown kwargs are refused by name, before anything changes.
    with pytest.raises(Exception, match=r"'DemoApp.__init__' has no parameter 'colour'"):
        await apps.deploy_app(
            artifact_id="demo-app-0.6",
            application_id="demo-06",
            application_kwargs={"DemoApp": {"colour": 1}},
        )
    assert await app.greet(name="still") == "Hi, still!"
    await apps.stop_app(application_id="demo-06")


async def test_a_failed_smoke_test_is_reported(apps, ray_head, pip_envs_before):
    app_id = await apps.deploy_app(
        artifact_id="demo-app-0.6",
        application_id="smoke-06",
        application_kwargs={"DemoApp": {"fail_smoke_test": True}},
    )
    deadline = time.monotonic() + 120
    while True:
        status = await _status(apps, app_id)
        message = status["deployments"].get("DemoApp", {}).get("message", "")
        if "Smoke test failed" in message:
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(1)
    assert "fail_smoke_test=True" in status["deployments"]["DemoApp"]["lifecycle_error"]
    # Three deployments of the demo so far (two versions of demo-06, then this app), at most one
    # new pip environment (none if an earlier module made the same one): the same requirements
    # give the same runtime env, which Ray reuses.
    pip_envs = _pip_envs(ray_head)
    assert len(pip_envs - pip_envs_before) <= 1, (pip_envs, pip_envs_before)
    await apps.stop_app(application_id=app_id)


async def test_the_composition_app_answers_through_three_levels(apps, admin_client, wait_app):
    app_id = await apps.deploy_app(
        artifact_id="composition-app-0.6",
        application_id="compose-06",
        application_kwargs={"Analyzer": {"top": 2}, "Pipeline": {"label": "docs"}},
        scaling={"Tokenizer": {"num_replicas": 2}},
    )
    status = await wait_app(apps, app_id, ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"), timeout=180)
    assert status["status"] == "RUNNING", status
    assert set(status["deployments"]) == {"Pipeline", "Analyzer", "Tokenizer", "BioEngineProxy"}
    assert set(status["available_methods"]) == {"run", "describe"}  # only the entry's methods
    assert status["deployments"]["Tokenizer"]["replica_states"] == {"RUNNING": 2}  # deploy-time scaling
    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    result = await app.run(text="The cat and the hat, the end")
    assert result["label"] == "docs"
    assert result["words"] == ["the", "cat", "and", "the", "hat", "the", "end"]
    assert result["analysis"] == {"words": 7, "most_common": [["the", 3], ["cat", 1]]}
    assert (await app.describe())["raw_handle"] == "DeploymentHandle"
    # scaling names the classes found in the code.
    with pytest.raises(Exception, match=r"scaling\['Model'\]: the app has no deployment class 'Model'"):
        await apps.deploy_app(
            artifact_id="composition-app-0.6", application_id=app_id, scaling={"Model": {"num_replicas": 1}}
        )
    await apps.stop_app(application_id=app_id)


async def test_a_cycle_and_an_import_error_are_refused_by_name(apps):
    with pytest.raises(Exception, match=r"cycle: farm:Chicken -> farm:Egg -> farm:Chicken"):
        await apps.deploy_app(artifact_id="cycle-06", application_id="cycle-06")
    with pytest.raises(Exception, match=r"Cannot import 'needy'.*numpy_that_is_not_installed"):
        await apps.deploy_app(artifact_id="import-error-06", application_id="import-error-06")
    assert (await _status(apps, "cycle-06"))["status"] == "NOT_RUNNING"


async def test_an_uninstallable_requirement_fails_with_the_installers_message(apps):
    app_id = await apps.deploy_app(artifact_id="bad-pip-06", application_id="bad-pip-06")
    deadline = time.monotonic() + 240
    while True:
        status = await _status(apps, app_id)
        if status["status"] == "DEPLOY_FAILED":
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(2)
    # The reason is the installer's own error, naming the requirement.
    assert status["reason"].startswith("Unbuildable: installing the app's packages failed: ERROR:"), status
    assert "bioengine-no-such-package-xyz" in status["reason"], status
    await apps.stop_app(application_id=app_id)


async def test_gpu_memory_needs_a_gpu_or_disable_gpu(apps, admin_client, wait_app):
    # This machine has no GPU: an app asking for GPU memory is refused unless told to use CPUs.
    with pytest.raises(Exception, match=r"'Segmenter' needs a GPU \(gpu_memory_mb=2048\).*disable_gpu=True"):
        await apps.deploy_app(artifact_id="gpu-06", application_id="gpu-06")
    app_id = await apps.deploy_app(artifact_id="gpu-06", application_id="gpu-06", disable_gpu=True)
    status = await wait_app(apps, app_id, ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"), timeout=120)
    assert status["status"] == "RUNNING", status
    assert status["application_resources"] == {"num_cpus": 0, "num_gpus": 0, "memory": 0}
    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    assert await app.device() == "cpu"
    await apps.stop_app(application_id=app_id)


async def test_a_module_reading_its_own_file_at_import_by_a_relative_path(apps, admin_client, wait_app):
    # Imported in the discovery task, the builder and the replica, each time from the app's folder.
    app_id = await apps.deploy_app(artifact_id="relative-06", application_id="relative-06")
    status = await wait_app(apps, app_id, ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"), timeout=180)
    assert status["status"] == "RUNNING", status
    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    assert await app.requirements() == ["humanize==4.16.0", "4.16.0"]
    await apps.stop_app(application_id=app_id)
