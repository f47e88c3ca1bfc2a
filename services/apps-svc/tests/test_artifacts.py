"""App artifacts in the artifact manager (real Hypha + SeaweedFS), deploys from them, through the gateway."""

from pathlib import Path

import aiohttp
import pytest

from bioengine_common import connect
from bioengine_common.testing import launch_service, ready_worker, stop_all_apps

pytestmark = pytest.mark.integration

#: The 0.6.0 example apps of bioengine-app-format's tests (one-file, multi-file, broken).
APPS_06 = Path(__file__).resolve().parents[3] / "libs/bioengine-app-format/tests/apps_06"


@pytest.fixture(scope="module")
def stack(hypha_server, cluster_process, tmp_path_factory):
    """apps-svc without a local apps folder (artifacts only) and the gateway."""
    workspace = tmp_path_factory.mktemp("artifacts-worker")
    apps = launch_service("apps", hypha_server, workspace, "--reconcile-interval", "1")
    gateway = launch_service("gateway", hypha_server, workspace, "--status-interval", "1")
    yield {"apps": apps, "gateway": gateway, "workspace": workspace}
    stop_all_apps(hypha_server)
    gateway.stop()
    apps.stop()


@pytest.fixture
async def worker(stack, admin_client):
    return await ready_worker(admin_client, stack["apps"], timeout=90)


@pytest.fixture
async def user_worker(hypha_server, stack):
    client = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("plain-user")
    )
    yield await client.get_service("bioengine-worker")
    await client.disconnect()


def _with_version(files, version, app_id="demo-app"):
    out = []
    for entry in files:
        if entry["name"] == "manifest.yaml":
            text = entry["content"].replace('version: "1.0.0"', f'version: "{version}"')
            text = text.replace("id: demo-app", f"id: {app_id}")
            entry = {**entry, "content": text}
        out.append(entry)
    return out


async def test_upload_versions_list_and_delete(worker, files_of, example_apps):
    files = _with_version(files_of(example_apps / "demo-app"), "1.0.0", "versioned-app")
    artifact_id = await worker.upload_app(files=files)
    assert artifact_id == "bioengine-test/versioned-app"
    assert await worker.upload_app(files=files) == artifact_id  # same version: in place
    listed = (await worker.list_apps())[artifact_id]
    assert sorted(listed["files"]) == ["demo_app.py", "manifest.yaml"]
    assert listed["format_version"] == "0.5.0"
    assert listed["manifest"]["created_by"] == "test-admin" and listed["versions"] == ["1.0.0"]

    assert await worker.upload_app(files=_with_version(files, "1.1.0", "versioned-app")) == artifact_id
    listed = (await worker.list_apps())[artifact_id]
    assert listed["versions"] == ["1.0.0", "1.1.0"]
    assert (await worker.get_app_manifest(artifact_id=artifact_id))["version"] == "1.1.0"
    assert (await worker.get_app_manifest(artifact_id="versioned-app", version="1.0.0"))["version"] == "1.0.0"
    for older in ("1.0.0", "0.9.0"):
        with pytest.raises(Exception, match="older than the latest"):
            await worker.upload_app(files=_with_version(files, older, "versioned-app"))

    await worker.delete_app(artifact_id=artifact_id)
    assert artifact_id not in await worker.list_apps()
    with pytest.raises(Exception, match="no app artifact"):
        await worker.get_app_manifest(artifact_id=artifact_id)


async def test_deploy_from_artifact_through_the_gateway(
    worker, user_worker, admin_client, files_of, wait_app, example_apps
):
    artifact_id = await worker.upload_app(files=files_of(example_apps / "composition-app"))
    with pytest.raises(Exception, match="admin only"):
        await user_worker.deploy_app(artifact_id=artifact_id)
    app_id = await worker.deploy_app(
        artifact_id=artifact_id,
        application_kwargs={
            "CompositionDeployment": {"demo_input": "from the artifact"},
            "Deployment2": {"start_number": 1},
        },
    )
    status = await wait_app(worker, app_id)
    assert (
        status["artifact_id"] == artifact_id
        and status["version"] == "1.0.0"
        and status["source"] == "artifact"
    )
    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    assert "Result: 42, Demo string: from the artifact" in await app.calculate_result(number=41)

    # Anyone may see the status; only admins see kwargs, access rules and logs.
    seen = (await user_worker.get_app_status(application_ids=[app_id]))[app_id]
    assert seen["status"] == "RUNNING" and "application_kwargs" not in seen and "authorized_users" not in seen
    assert all("logs" not in d for d in seen["deployments"].values())

    directories = {d["name"]: d for d in await worker.list_app_directories()}
    assert directories[app_id]["is_running"] and directories[app_id]["size_bytes"] > 0
    with pytest.raises(Exception, match="is running"):
        await worker.clear_app_directory(application_id=app_id)
    with pytest.raises(Exception, match="not an application id"):
        await worker.clear_app_directory(application_id="../etc")

    result = await worker.stop_all_apps(timeout_seconds=60)
    assert app_id in result["stopped"] and result["still_running"] == []
    await worker.clear_app_directory(application_id=app_id)
    assert app_id not in {d["name"] for d in await worker.list_app_directories()}
    with pytest.raises(Exception, match="no app folder"):
        await worker.clear_app_directory(application_id=app_id)


async def test_deploying_a_missing_artifact_is_a_clear_error(worker):
    with pytest.raises(Exception, match="no app artifact 'bioengine-test/no-such-app'"):
        await worker.deploy_app(artifact_id="no-such-app")


def _set_version(files, version):
    return [
        {**f, "content": f["content"].replace('version: "0.2.0"', f'version: "{version}"')}
        if f["name"] == "manifest.yaml"
        else f
        for f in files
    ]


async def test_a_0_6_0_app_uploads_versions_lists_and_is_checked_at_deploy(worker, files_of):
    files = files_of(APPS_06 / "multi-file")
    artifact_id = await worker.upload_app(files=files)
    assert artifact_id == "bioengine-test/composed-06"
    listed = (await worker.list_apps())[artifact_id]
    assert listed["format_version"] == "0.6.0" and listed["versions"] == ["0.2.0"]
    assert listed["manifest"]["entry"] == "pkg.service:EntryApp"
    assert sorted(listed["files"]) == sorted(f["name"] for f in files)  # the artifact keeps them all

    # Versions of a 0.6.0 app only go up (PEP 440): the same one again is refused, not replaced.
    with pytest.raises(Exception, match="exists already"):
        await worker.upload_app(files=files)
    assert await worker.upload_app(files=_set_version(files, "0.10.0")) == artifact_id
    assert (await worker.list_apps())[artifact_id]["versions"] == ["0.2.0", "0.10.0"]
    with pytest.raises(Exception, match=r"older than the latest \(0\.10\.0\)"):
        await worker.upload_app(files=_set_version(files, "0.9"))
    assert (await worker.get_app_manifest(artifact_id=artifact_id))["version"] == "0.10.0"

    # Problems name the file, the line and the field; nothing is stored.
    broken = [
        {**f, "content": f["content"].replace("pkg.service:EntryApp", "pkg.service:entry")}
        if f["name"] == "manifest.yaml"
        else f
        for f in _set_version(files, "0.11.0")
    ]
    with pytest.raises(Exception, match=r"manifest\.yaml:8: entry 'pkg\.service:entry' must look like"):
        await worker.upload_app(files=broken)
    with pytest.raises(Exception, match=r"main\.py:4: BrokenApp: @bioengine\.app takes gpu_memory_mb"):
        await worker.upload_app(files=files_of(APPS_06 / "broken"))
    assert "bioengine-test/broken-06" not in await worker.list_apps()
    assert (await worker.list_apps())[artifact_id]["versions"] == ["0.2.0", "0.10.0"]

    # Deploying one reads the artifact's code inside Ray (tests/test_deploy_06.py deploys 0.6.0
    # apps): application_kwargs that name no class of the app are refused by name.
    with pytest.raises(Exception, match=r"application_kwargs key 'NoSuchClass' is not a class of this app"):
        await worker.deploy_app(artifact_id=artifact_id, application_kwargs={"NoSuchClass": {}})
    await worker.delete_app(artifact_id=artifact_id)


async def test_an_app_of_many_files_uploads_whole_new_in_place_and_as_a_new_version(
    worker, admin_client, files_of, example_apps
):
    """Every file of a many-file app is staged and committed, each upload, with its own bytes.

    (One URL request per file, made concurrently, raced on the artifact's staging record: the
    CI of 033143a failed on "database is locked" from the embedded server's SQLite.)"""
    app = files_of(example_apps / "demo-app")
    manager = await admin_client.get_service("public/artifact-manager")

    async def read(artifact_id, path, **version):
        url = await manager.get_file(artifact_id, file_path=path, **version)
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.text()

    for upload, version in enumerate(("1.0.0", "1.0.0", "1.1.0")):  # new, in place, new version
        data = [
            {"name": f"data/part-{i:02d}.txt", "content": f"part {i} of upload {upload}\n"} for i in range(40)
        ]
        files = _with_version(app, version, "many-files-app") + data
        artifact_id = await worker.upload_app(files=files)
        assert sorted((await worker.list_apps())[artifact_id]["files"]) == sorted(f["name"] for f in files)
        for part in (0, 17, 39):
            path = f"data/part-{part:02d}.txt"
            assert await read(artifact_id, path) == (200, f"part {part} of upload {upload}\n")
    assert (await worker.list_apps())[artifact_id]["versions"] == ["1.0.0", "1.1.0"]
    # The version 1.1.0 was added beside keeps the bytes of its in-place update.
    assert await read(artifact_id, "data/part-05.txt", version="1.0.0") == (200, "part 5 of upload 1\n")
    await worker.delete_app(artifact_id=artifact_id)
