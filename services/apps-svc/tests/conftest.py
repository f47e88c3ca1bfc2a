"""Fixtures of apps-svc's tests: cluster-svc (external-cluster on the session Ray head) and apps-svc."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bioengine_common.testing import launch_service, stop_all_apps, wait_for_service
from bioengine_worker import read_app_folder

REPO = Path(__file__).resolve().parents[3]
APPS = REPO / "apps"


def read_example_app(name: str) -> dict[str, bytes]:
    """An example app's files as apps-svc holds them: {relative name: bytes}."""
    folder = APPS / name
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture
def read_app() -> Any:
    """``read_app(name)``: the files of the example app ``apps/<name>`` (pure tests)."""
    return read_example_app


async def wait_for_app(
    apps: Any, app_id: str, states: tuple[str, ...] = ("RUNNING",), timeout: float = 90
) -> dict:
    """Poll get_app_status until the app is in one of ``states``; return its status."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = (await apps.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]
        if status["status"] in states and (
            status["status"] != "RUNNING" or status["service_ids"][0]["websocket_service_id"]
        ):
            return status
        await asyncio.sleep(0.5)
    raise AssertionError(f"{app_id} not in {states} after {timeout:.0f} s: {status}")


@pytest.fixture(scope="module")
def apps_workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("apps-worker")


@pytest.fixture(scope="module")
def apps_process(hypha_server, cluster_process, apps_workspace):
    holder = {
        "apps_root": APPS,
        "process": launch_service(
            "apps", hypha_server, apps_workspace, "--local-apps-dir", str(APPS), "--reconcile-interval", "1"
        ),
    }
    yield holder
    stop_all_apps(hypha_server)
    holder["process"].stop()


@pytest.fixture
async def apps(apps_process, admin_client):
    await wait_for_service(admin_client, "bioengine-apps", timeout=60)
    proxy = await admin_client.get_service("bioengine-apps")
    deadline = time.monotonic() + 90
    while not (await proxy.get_status())["ready"]:
        assert time.monotonic() < deadline, apps_process["process"].console_output()
        await asyncio.sleep(0.5)
    return proxy


@pytest.fixture
def wait_app():
    """``await wait_app(apps, app_id, states=("RUNNING",), timeout=90)``."""
    return wait_for_app


@pytest.fixture
def files_of():
    """``files_of(folder)``: an app folder as upload_app's files (what ``bioengine apps upload`` sends)."""
    return read_app_folder


@pytest.fixture
def example_apps() -> Path:
    """The repository's example apps folder (apps/demo-app, apps/composition-app)."""
    return APPS
