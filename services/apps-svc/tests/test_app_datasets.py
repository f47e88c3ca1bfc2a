"""Apps read the worker's datasets: a client ready in every replica, the server looked up at run time."""

import asyncio
import time

import numpy as np
import pytest
import zarr

from bioengine_common.testing import launch_service, wait_for_service

pytestmark = pytest.mark.integration

READER = "dataset-reader"
SOURCE = """
from hypha_rpc.utils.schema import schema_method
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Reader:
    @schema_method
    async def total(self, dataset: str, path: str) -> float:
        array = await self.bioengine_datasets.open(dataset, path)
        return float(array[:].sum())

    @schema_method
    async def ping(self) -> str:
        return "pong"
"""
MANIFEST = "name: Reader\nid: dataset-reader-app\nid_emoji: x\ndescription: reads datasets\ntype: ray-serve\ndeployments: [reader:Reader]\n"
FILES = [
    {"name": "manifest.yaml", "content": MANIFEST, "type": "text"},
    {"name": "reader.py", "content": SOURCE, "type": "text"},
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-data")
    for name, manifest in (
        ("cells", f"name: Cells\nauthorized_users: [{READER}]\n"),
        ("open", "name: Open\npublic: true\n"),
    ):
        (root / name).mkdir()
        (root / name / "manifest.yaml").write_text(manifest)
        array = zarr.create_array(
            store=root / name / "image.zarr", shape=(8, 32, 32), dtype="uint16", chunks=(1, 32, 32)
        )
        array[:] = np.arange(8 * 32 * 32, dtype="uint16").reshape(8, 32, 32)
    return root


@pytest.fixture(scope="module")
def datasets_holder(hypha_server, data_dir, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("app-datasets-svc")
    args = ("--data-dir", str(data_dir), "--client-id", "app-datasets")
    holder = {"start": lambda: launch_service("datasets", hypha_server, workspace, *args)}
    holder["process"] = holder["start"]()
    yield holder
    holder["process"].stop()


EXPECTED = float(np.arange(8 * 32 * 32, dtype="uint16").sum())


async def _app(apps, admin_client, wait_app, app_id, **kwargs):
    artifact_id = await apps.upload_app(files=FILES)
    await apps.deploy_app(artifact_id=artifact_id, application_id=app_id, **kwargs)
    status = await wait_app(apps, app_id)
    return await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])


async def test_an_app_reads_the_datasets_its_token_may_read(
    apps, admin_client, wait_app, hypha_server, datasets_holder
):
    await wait_for_service(admin_client, "app-datasets:bioengine-datasets", timeout=60)
    with_token = await _app(
        apps, admin_client, wait_app, "reader-token", hypha_token=hypha_server.mint(READER)
    )
    assert await with_token.total("cells", "image.zarr") == EXPECTED
    assert await with_token.total("open", "image.zarr") == EXPECTED
    anonymous = await _app(apps, admin_client, wait_app, "reader-anonymous")
    assert await anonymous.total("open", "image.zarr") == EXPECTED
    with pytest.raises(Exception, match=r"401 for http"):
        await anonymous.total("cells", "image.zarr")


SOURCE_06 = """
import bioengine


@bioengine.app(num_cpus=0.1)
class Lister:
    @bioengine.method
    async def datasets(self) -> list:
        return sorted(await bioengine.datasets.list_datasets())

    @bioengine.method
    async def files(self, dataset: str) -> list:
        return await bioengine.datasets.list_files(dataset, recursive=False)
"""
MANIFEST_06 = (
    "format_version: 0.6.0\nname: Lister\nid: dataset-lister-06\nid_emoji: x\ndescription: lists datasets\n"
    "type: ray-serve\nversion: '1.0.0'\nentry: lister:Lister\n"
)


async def test_a_0_6_0_app_reads_datasets_through_the_sdk(
    apps, admin_client, wait_app, hypha_server, datasets_holder
):
    """The replica's BIOENGINE_DATA_SERVER_URL is the worker's datasets server: bioengine.datasets
    works, with the deploy-time hypha_token."""
    await wait_for_service(admin_client, "app-datasets:bioengine-datasets", timeout=60)
    files = [
        {"name": "manifest.yaml", "content": MANIFEST_06, "type": "text"},
        {"name": "lister.py", "content": SOURCE_06, "type": "text"},
    ]
    artifact_id = await apps.upload_app(files=files)
    await apps.deploy_app(
        artifact_id=artifact_id, application_id="lister-06", hypha_token=hypha_server.mint(READER)
    )
    status = await wait_app(apps, "lister-06", ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"), timeout=120)
    assert status["status"] == "RUNNING", status
    app = await admin_client.get_service(status["service_ids"][0]["websocket_service_id"])
    assert await app.datasets() == ["cells", "open"]
    assert "image.zarr/" in await app.files(dataset="cells")
    await apps.stop_app(application_id="lister-06")


async def test_a_datasets_outage_does_not_make_apps_unhealthy(apps, admin_client, datasets_holder):
    app = await admin_client.get_service("reader-token")
    datasets_holder["process"].stop()
    started = time.monotonic()
    with pytest.raises(Exception, match="not reachable"):
        await app.total("cells", "image.zarr")
    await asyncio.sleep(max(0.0, 15 - (time.monotonic() - started)))  # longer than a health-check period
    status = (await apps.get_app_status(application_ids=["reader-token"], logs_tail=0))["reader-token"]
    assert status["status"] == "RUNNING" and status["deployments"]["Reader"]["status"] == "HEALTHY"
    assert await app.ping() == "pong"
    # Back on another port: the replica looks the server up again.
    datasets_holder["process"] = datasets_holder["start"]()
    await wait_for_service(admin_client, "app-datasets:bioengine-datasets", timeout=60)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert await app.total("cells", "image.zarr") == EXPECTED
            break
        except Exception:
            assert time.monotonic() < deadline
            await asyncio.sleep(1)
    await apps.stop_all_apps(timeout_seconds=60)
