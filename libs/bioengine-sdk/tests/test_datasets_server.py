"""bioengine.datasets against a real dataset server (datasets-svc on an embedded Hypha)."""

import numpy as np
import pytest
import zarr

import bioengine
from bioengine_common import connect
from bioengine_common.testing import ADMIN_USER, launch_service, wait_for_service

pytestmark = pytest.mark.integration


async def test_listing_files_and_zarr_through_the_sdk(hypha_server_factory, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "open").mkdir(parents=True)
    (data / "open" / "manifest.yaml").write_text("name: Open\npublic: true\n")
    (data / "open" / "notes").mkdir()
    (data / "open" / "notes" / "hello.txt").write_text("hello")
    zarr.create_array(store=data / "open" / "image.zarr", shape=(4, 4), dtype="uint8", chunks=(2, 2))[:] = (
        np.arange(16, dtype="uint8").reshape(4, 4)
    )
    (data / "private").mkdir()
    (data / "private" / "manifest.yaml").write_text("name: Private\nauthorized_users: [ann@example.org]\n")
    (data / "private" / "secret.txt").write_text("secret")

    server = hypha_server_factory()
    service = launch_service(
        "datasets", server, tmp_path / "svc", "--data-dir", str(data), "--client-id", "sdk-datasets"
    )
    try:
        admin = await connect(server.url, workspace=server.workspace, token=server.mint(ADMIN_USER, "admin"))
        try:
            info = await wait_for_service(admin, "sdk-datasets:bioengine-datasets", timeout=60)
            http_url = (await (await admin.get_service(info["id"])).get_status())["http_url"]
        finally:
            await admin.disconnect()
        monkeypatch.setenv("BIOENGINE_DATA_SERVER_URL", http_url)
        monkeypatch.delenv("HYPHA_TOKEN", raising=False)
        datasets = bioengine.datasets

        assert await datasets.ping_data_server() is True
        assert set(await datasets.list_datasets()) == {"open"}
        files = await datasets.list_files("open")
        assert "notes/hello.txt" in files and "image.zarr/zarr.json" in files
        assert await datasets.list_files("open", recursive=False) == [
            "image.zarr/",
            "manifest.yaml",
            "notes/",
        ]
        assert await datasets.list_files("open", dir_path="notes") == ["hello.txt"]
        assert await datasets.get_file("open", "notes/hello.txt") == b"hello"
        with pytest.raises(FileNotFoundError):
            await datasets.get_file("open", "notes/missing.txt")
        store = await datasets.get_file("open", "image.zarr")
        async with store:
            array = await zarr.api.asynchronous.open_array(store=store, mode="r")
            assert (await array.getitem(slice(None))).tolist() == np.arange(16).reshape(4, 4).tolist()

        with pytest.raises(PermissionError, match=r"not found or not readable without a token"):
            await datasets.get_file("private", "secret.txt")
        ann = server.mint("ann", "read", email="ann@example.org")
        assert await datasets.get_file("private", "secret.txt", token=ann) == b"secret"
        monkeypatch.setenv("HYPHA_TOKEN", ann)
        assert set(await datasets.list_datasets()) == {"open", "private"}
    finally:
        service.stop()
