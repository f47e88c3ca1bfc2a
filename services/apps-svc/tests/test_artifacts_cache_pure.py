"""``ArtifactStore.fetch`` downloads an artifact version's files once: deploying the same version
again (a redeploy, another application id) reads only the artifact's record. A fake artifact
manager and a local HTTP server stand in for Hypha and S3."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web

from bioengine_apps._artifacts import ArtifactStore


class FakeManager:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self.last_modified = 100
        self.versions = [{"version": "1.0.0"}]
        self.calls: list[str] = []

    async def read(self, artifact_id: str, **kwargs: Any) -> dict:
        self.calls.append("read")
        return {"id": artifact_id, "last_modified": self.last_modified, "versions": list(self.versions)}

    async def list_files(self, artifact_id: str, **kwargs: Any) -> list[dict]:
        self.calls.append("list_files")
        return [{"name": "app.py", "type": "file"}]

    async def get_file(self, artifact_id: str, file_path: str, **kwargs: Any) -> str:
        self.calls.append("get_file")
        return f"{self.base_url}/{file_path}"

    async def delete(self, artifact_id: str, **kwargs: Any) -> None:
        self.calls.append("delete")


@pytest.fixture
async def files_server():
    content = {"app.py": b"print('v1')"}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=content[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", content
    await runner.cleanup()


async def test_a_version_is_downloaded_once_until_the_artifact_changes(files_server):
    base_url, content = files_server
    manager = FakeManager(base_url)
    store = ArtifactStore(server=None, workspace="ws")
    store._manager = manager

    assert (await store.fetch("ws/app"))[1] == {"app.py": b"print('v1')"}
    manager.calls.clear()
    assert (await store.fetch("ws/app"))[1] == {"app.py": b"print('v1')"}
    assert manager.calls == ["read"]  # only the record: the files came from memory

    # An upload elsewhere changes the record: the files are downloaded again.
    content["app.py"] = b"print('v2')"
    manager.last_modified, manager.versions = 101, [{"version": "1.0.0"}, {"version": "1.1.0"}]
    assert (await store.fetch("ws/app"))[1] == {"app.py": b"print('v2')"}
    assert "get_file" in manager.calls

    # Just changed (last_modified within the last seconds): not kept, as a change within the
    # same second would leave the key as it was.
    manager.last_modified = int(time.time())
    await store.fetch("ws/app")
    manager.calls.clear()
    await store.fetch("ws/app")
    assert "get_file" in manager.calls
    manager.last_modified = 102
    assert (await store.fetch("ws/app"))[1] == {"app.py": b"print('v2')"}  # kept again

    # A change made through this store, even one its record would not show: files forgotten.
    content["app.py"] = b"print('v3')"
    await store.delete("ws/app")
    manager.calls.clear()
    assert (await store.fetch("ws/app"))[1] == {"app.py": b"print('v3')"}
    assert "get_file" in manager.calls
